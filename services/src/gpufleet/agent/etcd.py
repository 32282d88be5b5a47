"""etcd: registration under `/sorna/<namespace>/nodes/agents/<id>` and the global config.

etcd3gw talks to etcd's grpc-gateway over HTTP; it discovers the gateway path
from `/version` (`/v3/` on etcd >= 3.4; 3.3 only had `/v3beta/`). It is a
blocking client, so every call runs in a worker thread with a timeout.
"""

from __future__ import annotations

import asyncio
import logging

import etcd3gw
from etcd3gw.exceptions import Etcd3Exception
from requests.exceptions import RequestException

from gpufleet.agent.config import EtcdConfig, HostPort

log = logging.getLogger(__name__)

ETCD_ERRORS = (Etcd3Exception, RequestException, OSError)


class EtcdUnavailable(Exception):
    pass


class AgentEtcd:
    def __init__(self, config: EtcdConfig, agent_id: str, timeout: float = 3.0) -> None:
        self.config = config
        self.agent_id = agent_id
        self.prefix = f"/sorna/{config.namespace}/"
        self.client = etcd3gw.client(host=config.addr.host, port=config.addr.port, timeout=timeout)
        if config.user:
            # etcd3gw has no auth helper for the gateway; etcd's HTTP auth is a token header.
            self._authenticate(config.user, config.password or "")

    def _authenticate(self, user: str, password: str) -> None:
        response = self.client.post(self.client.get_url("/auth/authenticate"),
                                    json={"name": user, "password": password})
        self.client.session.headers["Authorization"] = response["token"]

    def key(self, suffix: str) -> str:
        return self.prefix + suffix

    async def _call(self, fn, *args):
        try:
            return await asyncio.to_thread(fn, *args)
        except ETCD_ERRORS as exc:
            raise EtcdUnavailable(str(exc)) from exc

    async def put(self, suffix: str, value: str) -> None:
        await self._call(self.client.put, self.key(suffix), value)

    async def get(self, suffix: str) -> str | None:
        values = await self._call(self.client.get, self.key(suffix))
        if not values:
            return None
        value = values[0]
        return value.decode() if isinstance(value, bytes) else value

    async def get_prefix(self, suffix: str) -> dict[str, str]:
        items = await self._call(self.client.get_prefix, self.key(suffix))
        result = {}
        for value, meta in items:
            key = meta["key"]
            key = key.decode() if isinstance(key, bytes) else key
            result[key] = value.decode() if isinstance(value, bytes) else value
        return result

    async def register(self, status: str, ip: str) -> None:
        await self.put(f"nodes/agents/{self.agent_id}", status)
        await self.put(f"nodes/agents/{self.agent_id}/ip", ip)

    async def managers(self) -> dict[str, str]:
        return await self.get_prefix("nodes/manager/")

    async def redis_config(self) -> tuple[HostPort | None, str | None]:
        addr = await self.get("config/redis/addr")
        password = await self.get("config/redis/password")
        if not addr:
            return None, password
        host, _, port = addr.rpartition(":")
        return HostPort(host or "127.0.0.1", int(port)), password
