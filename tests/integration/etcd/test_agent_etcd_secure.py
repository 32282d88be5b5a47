"""The kernel agent's etcd registration against a TLS + auth etcd (client certificate, user `agent`)."""

from __future__ import annotations

import asyncio

import pytest
from gpufleet.agent.config import parse_config
from gpufleet.agent.etcd import AgentEtcd, EtcdUnavailable
from gpufleet.etcd import EtcdClient

pytestmark = pytest.mark.integration


def agent_config(server, **overrides):
    etcd = {"addr": f"127.0.0.1:{server.port}", "namespace": server.namespace,
            "ca-file": server.ca, "cert-file": server.client_cert, "key-file": server.client_key,
            "user": "agent", "password": server.users["agent"], "timeout": 5, **overrides}
    return parse_config({"etcd": etcd, "agent": {"id": "secure-agent"}})


def root(server) -> EtcdClient:
    return EtcdClient(endpoint=server.url, ca_cert=server.ca, client_cert=server.client_cert,
                      client_key=server.client_key, user="root", password=server.root_password)


def test_agent_registers_and_reads_redis_over_tls_with_auth(secure_etcd_server):
    prefix = f"/sorna/{secure_etcd_server.namespace}/"
    admin = root(secure_etcd_server)
    admin.put(prefix + "config/redis/addr", "10.0.0.2:6479")
    admin.put(prefix + "config/redis/password", "redis-secret")
    admin.put(prefix + "nodes/manager/mgr1", "up")
    config = agent_config(secure_etcd_server)
    assert config.etcd.timeout == 5 and config.etcd.ca_file == secure_etcd_server.ca

    async def scenario():
        etcd = AgentEtcd(config.etcd, config.agent.id)
        assert etcd.client.endpoint.startswith("https://")
        await etcd.register("running", "10.1.2.3")
        addr, password = await etcd.redis_config()
        managers = await etcd.managers()
        with pytest.raises(EtcdUnavailable, match="permission denied"):
            await etcd.put("config/redis/addr", "evil:1")
        return addr, password, managers

    addr, password, managers = asyncio.run(scenario())
    assert (str(addr), password) == ("10.0.0.2:6479", "redis-secret")
    assert managers == {prefix + "nodes/manager/mgr1": "up"}
    key = prefix + "nodes/agents/secure-agent"
    assert admin.get(key) == {key: "running"}
    assert admin.get(prefix + "nodes/agents/secure-agent/ip")[prefix + "nodes/agents/secure-agent/ip"] \
        == "10.1.2.3"
    assert admin.get(prefix + "config/redis/addr")[prefix + "config/redis/addr"] == "10.0.0.2:6479"


def test_agent_without_tls_settings_cannot_reach_a_tls_etcd(secure_etcd_server):
    config = parse_config({"etcd": {"addr": f"127.0.0.1:{secure_etcd_server.port}", "timeout": 2,
                                    "namespace": secure_etcd_server.namespace}})

    async def scenario():
        await AgentEtcd(config.etcd, "plain-agent").register("starting", "10.1.2.3")

    with pytest.raises(EtcdUnavailable, match="cannot reach etcd"):
        asyncio.run(scenario())
