"""etcd: registration under `/sorna/<namespace>/nodes/agents/<id>` and the global config.

A thin asyncio face over gpufleet's one etcd client (`gpufleet.etcd`: TLS client
certificates, auth with token refresh, a deadline on every request). That client
blocks, so each call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging

from gpufleet.agent.config import EtcdConfig, HostPort
from gpufleet.etcd import EtcdClient, EtcdError

log = logging.getLogger(__name__)


class EtcdUnavailable(Exception):
    pass


class AgentEtcd:
    def __init__(self, config: EtcdConfig, agent_id: str, timeout: float | None = None) -> None:
        self.config = config
        self.agent_id = agent_id
        self.prefix = f"/sorna/{config.namespace}/"
        tls = bool(config.ca_file or config.cert_file)
        self.client = EtcdClient(
            endpoint=f"{'https' if tls else 'http'}://{config.addr}",
            ca_cert=config.ca_file, client_cert=config.cert_file, client_key=config.key_file,
            user=config.user, password=config.password,
            timeout=timeout if timeout is not None else config.timeout,
        )

    def key(self, suffix: str) -> str:
        return self.prefix + suffix

    async def _call(self, fn, *args, **kwargs):
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except EtcdError as exc:
            raise EtcdUnavailable(str(exc)) from exc

    async def put(self, suffix: str, value: str) -> None:
        await self._call(self.client.put, self.key(suffix), value)

    async def get(self, suffix: str) -> str | None:
        key = self.key(suffix)
        values = await self._call(self.client.get, key)
        return values.get(key)

    async def get_prefix(self, suffix: str) -> dict[str, str]:
        return await self._call(self.client.get, self.key(suffix), prefix=True)

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
        if not port.isdigit():
            raise EtcdUnavailable(f"config/redis/addr is not host:port: {addr!r}")
        return HostPort(host or "127.0.0.1", int(port)), password
