"""Registration in a real etcd and events in a real Redis, including their restarts."""

import asyncio
import time
import uuid
import zlib

import etcd3gw
import pytest
import redis
from agent_helpers import capacity, make_config
from gpufleet.agent.core import Agent
from gpufleet.agent.protocol.codec import KernelLifecycleEventReason, unpackb

pytestmark = pytest.mark.integration


@pytest.fixture
def namespace():
    return "ns" + uuid.uuid4().hex[:8]


@pytest.fixture
def etcd(etcd_server):
    return etcd3gw.client(host="127.0.0.1", port=etcd_server.port, timeout=5)


@pytest.fixture
def rds(redis_server):
    """Backend.AI 23.09's stream database (4); its stat database (0) is `rds_stat`."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, password=redis_server.password, db=4)
    yield client
    client.close()


@pytest.fixture
def rds_stat(redis_server):
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, password=redis_server.password, db=0)
    yield client
    client.close()


def etcd_get(client, key):
    values = client.get(key)
    return values[0].decode() if values else None


def stream_events(rds, source):
    try:
        entries = rds.xrange("events")
    except redis.ConnectionError:
        return []
    events = []
    for entry_id, fields in entries:
        # As 23.09's EventDispatcher reads them: name and source as text, args msgpack.
        if fields[b"source"].decode() == source:
            stamp = int(entry_id.split(b"-")[0]) / 1000  # the stream id's milliseconds
            events.append((fields[b"name"].decode(), unpackb(fields[b"args"]), stamp))
    return events


async def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


async def test_registration_waits_for_a_manager_and_takes_redis_from_etcd(
        tmp_path, etcd_server, redis_server, etcd, rds, namespace):
    prefix = f"/sorna/{namespace}/"
    etcd.put(prefix + "config/redis/addr", f"127.0.0.1:{redis_server.port}")
    etcd.put(prefix + "config/redis/password", redis_server.password)
    config = make_config(tmp_path, etcd=etcd_server, namespace=namespace, wait_for_manager=True,
                         id="agent-reg", advertised_host="10.1.2.3", heartbeat=0.5)
    agent = Agent(config, capacity=capacity(2))
    await agent.start()
    try:
        await wait_for(lambda: etcd_get(etcd, prefix + "nodes/agents/agent-reg") == "starting",
                       what="agent registered as starting")
        assert etcd_get(etcd, prefix + "nodes/agents/agent-reg/ip") == "10.1.2.3"
        await asyncio.sleep(1.0)
        assert etcd_get(etcd, prefix + "nodes/agents/agent-reg") == "starting"  # no manager yet
        etcd.put(prefix + "nodes/manager/mgr1", "up")
        await wait_for(lambda: etcd_get(etcd, prefix + "nodes/agents/agent-reg") == "running",
                       what="agent running once a manager is up")
        # Redis address and password came from etcd's global config
        await wait_for(lambda: any(n == "agent_started" for n, _, _ in stream_events(rds, "agent-reg")),
                       what="agent_started in the stream")
    finally:
        await agent.stop(destroy_kernels=True)
    assert etcd_get(etcd, prefix + "nodes/agents/agent-reg") == "terminated"


async def test_heartbeats_at_the_interval_and_kernel_events_in_order(tmp_path, redis_server, rds, rds_stat):
    config = make_config(tmp_path, redis=redis_server, id="agent-hb", heartbeat=0.4)
    agent = Agent(config, capacity=capacity(2))
    await agent.start()
    try:
        record = await agent.create_kernel(gpus=1)
        await agent.destroy_kernel(record.kernel_id)
        await asyncio.sleep(2.1)
        events = stream_events(rds, "agent-hb")
        stats = unpackb(rds_stat.get("agent-hb"))
        ttl_ms = rds_stat.pttl("agent-hb")
    finally:
        await agent.stop(destroy_kernels=True)
    heartbeats = [(args, t) for name, args, t in events if name == "agent_heartbeat"]
    assert 4 <= len(heartbeats) <= 7, len(heartbeats)
    gaps = [b[1] - a[1] for a, b in zip(heartbeats, heartbeats[1:], strict=False)]
    assert all(0.3 <= gap <= 0.8 for gap in gaps), gaps
    (beat,) = heartbeats[-1][0]  # AgentHeartbeatEvent.serialize() == (agent_info,)
    assert beat["region"] == "local" and beat["scaling_group"] == "default"
    assert beat["resource_slots"]["cuda.device"] == ("count", "2")
    assert beat["resource_slots"]["mem"] == ("bytes", str(64 << 30))
    assert beat["version"] and beat["architecture"] == "x86_64" and beat["addr"].startswith("tcp://")
    assert beat["public_key"] is None and beat["public_host"] == agent.host_ip  # no RPC server in this test
    assert set(beat["compute_plugins"]) == {"cpu", "mem", "cuda"}
    assert unpackb(zlib.decompress(beat["images"])) == ((config.agent.kernel_image, ""),)
    assert beat["auto_terminate_abusing_kernel"] is False
    kernel_events = [(n, a) for n, a, _ in events if n.startswith("kernel_") and a[0] == record.kernel_id]
    assert [n for n, _ in kernel_events] == [
        "kernel_preparing", "kernel_creating", "kernel_started", "kernel_terminating", "kernel_terminated"]
    assert kernel_events[-1][1][2:] == (KernelLifecycleEventReason.USER_REQUESTED, 0)
    assert kernel_events[2][1][3]["resource_spec"]["allocations"]["cuda"] == {"cuda.device": {"0": "1"}}
    assert stats["node"]["mem"]["capacity"] == str(64 << 30)
    assert 0 < ttl_ms <= 1200  # stats expire after 3 heartbeat intervals


async def test_redis_restart_buffers_events_and_delivers_them(tmp_path, redis_server, rds):
    config = make_config(tmp_path, redis=redis_server, id="agent-redis", heartbeat=0.3)
    agent = Agent(config, capacity=capacity(2))
    await agent.start()
    try:
        await wait_for(lambda: agent.events.connected, what="connected to Redis")
        redis_server.stop()
        record = await agent.create_kernel(gpus=1)  # the agent keeps serving
        assert (await agent.execute(record.kernel_id, "query", "1+1"))["stdout"] == "2\n"
        await agent.destroy_kernel(record.kernel_id)
        await wait_for(lambda: not agent.events.connected, what="disconnect noticed")
        buffered = [n for n, _, _ in agent.events.buffer]
        assert "kernel_started" in buffered and buffered.count("agent_heartbeat") <= 1
        assert agent.health()["status"] == "ok" and agent.health()["redis"] == "disconnected"
        redis_server.start()
        await wait_for(lambda: not agent.events.buffer, timeout=15, what="buffer drained")
        names = [n for n, a, _ in stream_events(rds, "agent-redis")
                 if n.startswith("kernel_") and a[0] == record.kernel_id]
        assert names == ["kernel_preparing", "kernel_creating", "kernel_started", "kernel_terminating",
                         "kernel_terminated"]
    finally:
        if redis_server.process is None:
            redis_server.start()
        await agent.stop(destroy_kernels=True)


async def test_etcd_restart_the_agent_keeps_serving_and_re_registers(
        tmp_path, etcd_server, redis_server, etcd, rds, namespace):
    prefix = f"/sorna/{namespace}/"
    config = make_config(tmp_path, etcd=etcd_server, redis=redis_server, namespace=namespace,
                         id="agent-etcd", heartbeat=0.3)
    agent = Agent(config, capacity=capacity(2))
    await agent.start()
    key = prefix + "nodes/agents/agent-etcd"
    try:
        await wait_for(lambda: etcd_get(etcd, key) == "running", what="registered")
        etcd_server.stop()
        await wait_for(lambda: agent.etcd_status == "unreachable", timeout=15, what="etcd loss noticed")
        record = await agent.create_kernel()
        assert (await agent.execute(record.kernel_id, "query", "40+2"))["stdout"] == "42\n"
        etcd_server.start()
        # A key lost meanwhile is put back on the next round.
        etcd.delete(key)
        await wait_for(lambda: etcd_get(etcd, key) == "running", timeout=20, what="re-registered")
        assert agent.etcd_status == "running"
        await wait_for(lambda: any(n == "agent_error" and a[0].startswith("etcd unavailable")
                                   for n, a, _ in stream_events(rds, "agent-etcd")), what="agent_error sent")
    finally:
        if etcd_server.process is None:
            etcd_server.start()
        await agent.stop(destroy_kernels=True)
