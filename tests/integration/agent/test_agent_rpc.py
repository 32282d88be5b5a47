"""The agent's Backend.AI RPC over real callosum/ZeroMQ with CURVE: functions, auth, bad input, CLI."""

import asyncio
import io
import json
import logging
import tarfile
import uuid

import aiohttp
import msgpack
import pytest
import zmq
import zmq.asyncio
from agent_helpers import capacity, client_auth_for, make_config, rpc_address, rpc_keys
from click.testing import CliRunner
from gpufleet.agent.backends.base import BackendError
from gpufleet.agent.cli import agent as agent_cli
from gpufleet.agent.client import AgentRPCClient, AgentUnreachable, RpcCallError, client_auth
from gpufleet.agent.core import Agent
from gpufleet.agent.protocol.codec import ClusterMode, KernelLifecycleEventReason, packb
from gpufleet.agent.protocol.functions import FUNCTIONS
from gpufleet.agent.protocol.keys import create_keypair
from gpufleet.agent.rpc import rpc_authenticator, serve

pytestmark = pytest.mark.integration

SINGLE_NODE = {"mode": ClusterMode.SINGLE_NODE, "size": 1, "replicas": {"main": 1}, "network_name": None,
               "ssh_keypair": None, "cluster_ssh_port_mapping": None}


async def start_agent(tmp_path, **config_keys):
    config = make_config(tmp_path, **config_keys)
    instance = Agent(config, capacity=capacity())
    auth = rpc_authenticator(config)
    instance.public_key = auth.agent_public_key if auth else None
    await instance.start()
    listeners = await serve(instance, auth)
    return instance, listeners


@pytest.fixture
async def served(tmp_path):
    instance, listeners = await start_agent(tmp_path)
    async with AgentRPCClient(rpc_address(instance.config), client_auth_for(tmp_path), timeout=60) as client:
        yield instance, client
    await listeners.close()
    await instance.stop(destroy_kernels=True)


def kernel_config(cpu="1", mem="268435456", gpus="0", environ=None, service_ports=""):
    """A config shaped like the one 23.09's manager sends (registry._create_kernels_in_one_agent)."""
    return {
        "image": {"registry": {"name": "cr.backend.ai", "url": "https://cr.backend.ai"},
                  "digest": "sha256:" + "0" * 64, "repo_digest": None,
                  "canonical": "cr.backend.ai/stable/python:3.11-ubuntu22.04", "architecture": "x86_64",
                  "labels": {"ai.backend.service-ports": service_ports}, "is_local": False},
        "session_type": "interactive", "cluster_role": "main", "cluster_idx": 1, "local_rank": 0,
        "cluster_hostname": "main1", "idle_timeout": 600, "mounts": [],
        "environ": {"BACKENDAI_KERNEL_ID": "x", **(environ or {})},
        "resource_slots": {"cpu": cpu, "mem": mem, "cuda.device": gpus}, "resource_opts": {},
        "bootstrap_script": None, "startup_command": None, "internal_data": None, "auto_pull": "digest",
        "preopen_ports": [], "allocated_host_ports": [], "agent_addr": "tcp://127.0.0.1:6001",
        "scaling_group": "default",
    }


async def create(client, **config):
    sid, kid = str(uuid.uuid4()), str(uuid.uuid4())
    [info] = await client.call("create_kernels", sid, [kid], [kernel_config(**config)], SINGLE_NODE)
    return sid, kid, info


def events(agent, name):
    return [args for event, args, _ in agent.events.buffer if event == name]


async def test_lifecycle_with_the_managers_argument_shapes(served):
    agent, client = served
    assert await client.call("ping", "hello") == "hello"
    sid, kid, info = await create(client, cpu="2", mem="536870912", gpus="2",
                                  service_ports="jupyter:http:8081")
    # What the 23.09 manager's finalize step reads.
    assert info["id"] == kid and info["container_id"] == agent.registry.get(kid).container_id
    assert info["resource_spec"]["allocations"]["cuda"]["cuda.device"] == {"0": "1", "1": "1"}
    assert info["resource_spec"]["allocations"]["mem"]["mem"] == {"root": "536870912"}
    assert info["repl_in_port"] == agent.registry.get(kid).runner_port
    assert len(info["service_ports"]) == 1 and info["agent_addr"] == agent.agent_addr
    assert [d["device_id"] for d in info["attached_devices"]["cuda"]] == ["0", "1"]
    [started] = events(agent, "kernel_started")
    assert started[:2] == (kid, sid) and started[3]["container_id"] == info["container_id"]
    assert [n for n, _, _ in agent.events.buffer if n.startswith("kernel_")] == [
        "kernel_preparing", "kernel_creating", "kernel_started"]

    result = await client.call("execute", sid, kid, 2, "run-1", "query", "v = 6\nprint(v * 7)", {}, 2.0)
    assert result == {"runId": "run-1", "status": "finished", "exitCode": 0, "options": None,
                      "console": (("stdout", "42\n"),), "files": ()}
    batch = await client.call("execute", sid, kid, 2, "run-2", "batch", "", {"exec": "echo out; exit 3"}, 2.0)
    assert batch["status"] == "finished" and batch["exitCode"] == 3
    assert batch["console"] == (("stdout", "out\n"),)
    # The client's defaults: build "*" (the image's own procedure; none here) is skipped.
    batch = await client.call("execute", sid, kid, 2, "run-2b", "batch", "",
                              {"clean": "*", "build": "*", "exec": "exit 4"}, 2.0)
    assert batch["exitCode"] == 4
    with pytest.raises(RpcCallError, match="NotSupported"):
        await client.call("execute", sid, kid, 2, "run-2c", "batch", "", {"exec": "*"}, 2.0)
    # A run longer than flush_timeout answers "continued" and is followed with mode "continue".
    slow = await client.call("execute", sid, kid, 2, "run-3", "query", "import time\ntime.sleep(1)\nprint(1)",
                             {}, 0.2)
    assert slow["status"] == "continued"
    while slow["status"] == "continued":
        slow = await client.call("execute", sid, kid, 2, "run-3", "continue", "", {}, 0.5)
    assert slow["status"] == "finished" and slow["console"] == (("stdout", "1\n"),)
    assert [args for args in events(agent, "execution_finished")] == [(sid,)] * 4

    await client.call("upload_file", kid, "data/in.txt", b"hello")
    listing = await client.call("list_files", kid, "data")
    assert [f["filename"] for f in json.loads(listing["files"])] == ["in.txt"]
    assert await client.call("download_single", kid, "data/in.txt") == b"hello"
    with tarfile.open(fileobj=io.BytesIO(await client.call("download_file", kid, "data/in.txt"))) as tar:
        assert tar.extractfile("in.txt").read() == b"hello"
    with pytest.raises(RpcCallError) as refused:
        await client.call("download_single", kid, "../config/runner.token")
    assert refused.value.name in ("Forbidden", "InvalidArgument")
    assert "runner ready" in (await client.call("get_logs", kid))["logs"]
    assert (await client.call("ping_kernel", kid))["rtt"] >= 0
    assert await client.call("get_commit_status", kid, "") == {"kernel": kid, "status": "ready"}
    # Service apps and commits are declined the way 23.09 declines them (docs: compatibility table).
    service = await client.call("start_service", kid, "jupyter", {})
    assert service["status"] == "failed" and "not supported" in service["error"]
    assert await client.call("shutdown_service", kid, "jupyter") is None
    commit = await client.call("commit", kid, "user@example.com", "snapshot.tar")
    assert commit["kernel"] == kid and uuid.UUID(commit["bgtask_id"])
    assert events(agent, "bgtask_failed") == [(commit["bgtask_id"], events(agent, "bgtask_failed")[0][1])]
    assert "not supported" in events(agent, "bgtask_failed")[0][1]

    port = await client.call("assign_port")
    assert agent.ports.owners()[port] == "agent:assigned"
    assert await client.call("release_port", port) is None
    assert port not in agent.ports.owners()

    await client.call("destroy_kernel", kid, sid, KernelLifecycleEventReason.USER_REQUESTED)
    assert agent.registry.get(kid) is None
    [terminated] = events(agent, "kernel_terminated")
    assert terminated[:3] == (kid, sid, KernelLifecycleEventReason.USER_REQUESTED)
    assert isinstance(terminated[3], int)
    # As 23.09: destroying an unknown kernel reports it terminated so the manager can finish.
    assert await client.call("destroy_kernel", kid, sid, KernelLifecycleEventReason.FAILED_TO_START) is None
    assert events(agent, "kernel_terminated")[-1][2] == KernelLifecycleEventReason.ALREADY_TERMINATED


async def test_every_function_answers_and_unknown_ones_do_not_stop_the_server(served, caplog):
    agent, client = served
    assert len(FUNCTIONS) == 28  # 23.09's 27 plus health
    hw = await client.call("gather_hwinfo")
    assert hw["cuda"]["status"] == "healthy" and hw["cpu"]["metadata"]["capacity"] == "16"
    assert (await client.call("get_local_config"))["agent"]["abuse-report-path"] == ""
    assert (await client.call("health"))["id"] == agent.id
    await client.call("update_scaling_group", "gpu-a100")
    assert agent.heartbeat_info()["scaling_group"] == "gpu-a100"
    for method, args in [("start_service", (str(uuid.uuid4()), "jupyter", {})),
                         ("create_local_network", ("net",)), ("destroy_local_network", ("net",)),
                         ("shutdown_agent", (False,))]:
        with pytest.raises(RpcCallError) as answer:
            await client.call(method, *args)
        assert answer.value.name in ("NotSupported", "KernelNotFound"), method
    for _ in range(3):
        with pytest.raises(RpcCallError, match="UnknownMethod"):
            await client.call("clean_all_kernels", "manager-freeze-force-kill")
    assert await client.call("ping", "still here") == "still here"
    sid, kid, _ = await create(client)
    await client.call("reset_agent")
    assert len(agent.registry) == 0
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(("method", "args", "error"), [
    ("ping", (1,), "InvalidArgument"),
    ("ping", ("a", "b"), "InvalidRequest"),
    ("destroy_kernel", ("nl\n", str(uuid.uuid4())), "InvalidArgument"),
    ("destroy_kernel", (str(uuid.uuid4()) + "\n", str(uuid.uuid4())), "InvalidArgument"),
    ("destroy_kernel", (str(uuid.uuid4()), str(uuid.uuid4()), "some-reason"), "InvalidArgument"),
    ("execute", (str(uuid.uuid4()), str(uuid.uuid4()), 2, "r", "query", "1", {}, 1.0), "KernelNotFound"),
    ("create_kernels", (str(uuid.uuid4()), [], [], {}), "InvalidArgument"),
    ("create_kernels", (str(uuid.uuid4()), [str(uuid.uuid4())], [{"resource_slots": {"cpu": "-1"}}], {}),
     "InvalidArgument"),
    ("create_kernels", (str(uuid.uuid4()), [str(uuid.uuid4())], [{"resource_slots": {"tpu.device": "1"}}],
                        {}), "NotSupported"),
    ("create_kernels", (str(uuid.uuid4()), [str(uuid.uuid4())], [{"resource_slots": {"cuda.device": "0.5"}}],
                        {}), "NotSupported"),
    ("create_kernels", (str(uuid.uuid4()), [str(uuid.uuid4())], [{"resource_slots": {"cuda.device": "9"}}],
                        {}), "Conflict"),
    ("release_port", (True,), "InvalidArgument"),
    ("sync_kernel_registry", ([("x", "y")],), "InvalidArgument"),
])
async def test_bad_arguments_get_a_named_error(served, method, args, error):
    agent, client = served
    with pytest.raises(RpcCallError) as answer:
        await client.call(method, *args)
    assert answer.value.name == error, answer.value
    assert len(agent.registry) == 0
    assert await client.call("ping", "ok") == "ok"


async def test_malformed_frames_bodies_and_pickles_are_answered_not_crashed(served, tmp_path, caplog):
    agent, client = served
    caplog.set_level(logging.INFO)
    keys = rpc_keys(tmp_path)
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    public, secret = zmq.auth.load_certificate(str(keys["manager_secret"]))
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_serverkey = zmq.auth.load_certificate(str(keys["agent_public"]))[0]
    sock.connect(rpc_address(agent.config))
    seq = 0

    async def request(body: bytes | None, header_extra=None, raw_data=None):
        nonlocal seq
        seq += 1
        header = {"type": 1, "meth": "ping", "okey": b"", "seq": seq, "zip": False, **(header_extra or {})}
        data = raw_data if raw_data is not None else msgpack.packb({"meta": b"", "body": body})
        await sock.send_multipart([b"UPPER", msgpack.packb(header), data])
        frames = await asyncio.wait_for(sock.recv_multipart(), 10)
        assert frames[0] == b"UPPER"
        return msgpack.unpackb(frames[1]), msgpack.unpackb(frames[2])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import pickle
    bodies = {
        "garbage": b"\xc1\xff\x00",
        "deep": b"\x91" * 100_000 + b"\xc0",
        "huge array header": b"\xdd\xff\xff\xff\xff",
        "evil pickle": msgpack.packb({"args": [msgpack.ExtType(6, pickle.dumps(Evil()))], "kwargs": {}}),
        "unknown ext": msgpack.packb({"args": [msgpack.ExtType(99, b"x")], "kwargs": {}}),
        "not a map": msgpack.packb([1, 2]),
        "args not array": msgpack.packb({"args": 5, "kwargs": {}}),
    }
    for name, body in bodies.items():
        header, data = await request(body)
        assert header["type"] == 3, name  # FAILURE
        assert msgpack.unpackb(data["meta"])[0] == "InvalidRequest", name
    header, data = await request(None, raw_data=b"\x00garbage")
    assert header["type"] == 3
    header, data = await request(packb({"args": ["x"], "kwargs": {}}), {"meth": "no_such_function"})
    assert msgpack.unpackb(data["meta"])[0] == "UnknownMethod"
    # A garbage header cannot be answered (no request id) but must not stop the server.
    await sock.send_multipart([b"UPPER", b"\xff\xfe", b""])
    header, data = await request(packb({"args": ["alive"], "kwargs": {}}))
    assert header["type"] == 2 and msgpack.unpackb(data["body"]) == "alive"
    sock.close(0)
    ctx.term()
    assert "pwned" not in caplog.text and "Traceback" not in caplog.text
    assert await client.call("ping", "ok") == "ok"


async def test_curve_refuses_wrong_and_missing_keys(served, tmp_path):
    agent, client = served
    create_keypair(tmp_path / "intruder", "intruder")
    address = rpc_address(agent.config)
    wrong = client_auth(tmp_path / "intruder" / "intruder.key_secret", rpc_keys(tmp_path)["agent_public"])
    for auth in (wrong, None):
        with pytest.raises(AgentUnreachable):
            async with AgentRPCClient(address, auth, timeout=5, handshake_timeout=2) as intruder:
                await intruder.call("ping", "x")
    assert await client.call("ping", "manager") == "manager"


async def test_curve_can_be_switched_off_explicitly(tmp_path):
    instance, listeners = await start_agent(tmp_path, curve_auth=False)
    try:
        assert instance.heartbeat_info()["public_key"] is None
        async with AgentRPCClient(rpc_address(instance.config), None, timeout=10) as client:
            assert await client.call("ping", "plain") == "plain"
    finally:
        await listeners.close()
        await instance.stop()


async def test_metrics_and_health_on_the_http_port(served):
    agent, client = served
    await client.call("ping", "x")
    with pytest.raises(RpcCallError):
        await client.call("get_logs", str(uuid.uuid4()))
    http = f"http://127.0.0.1:{agent.config.http.addr.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{http}/health") as resp:
            assert resp.status == 200 and (await resp.json())["id"] == agent.id
        async with session.get(f"{http}/metrics") as resp:
            text = await resp.text()
    assert 'backendai_rpc_requests_total{method="ping"} 1.0' in text
    assert 'backendai_rpc_failure_requests_total{method="get_logs",status="KernelNotFound"} 1.0' in text


async def test_cli_is_a_callosum_client(served, tmp_path):
    agent, _ = served
    keys = rpc_keys(tmp_path)
    listen = agent.config.agent.rpc_listen_addr
    base = ["call", "--address", f"127.0.0.1:{listen.port}", "--manager-keypair", str(keys["manager_secret"]),
            "--agent-public-key", str(keys["agent_public"])]
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(agent_cli, [*base, *args])

    result = await asyncio.to_thread(invoke, "--json", "lifecycle", "--gpus", "1")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["state_kept"] and report["gpu_indices"] == [0]
    result = await asyncio.to_thread(invoke, "create", "--gpus", "2", "--mem", "1g")
    assert result.exit_code == 0, result.output
    kid = result.output.strip()
    assert agent.registry.get(kid).allocation["mem"] == 1 << 30
    code = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
    result = await asyncio.to_thread(invoke, "exec", kid, code)
    assert result.output == "0,1\n"
    result = await asyncio.to_thread(invoke, "exec", "--mode", "batch", kid, "exit 5")
    assert result.exit_code == 5
    result = await asyncio.to_thread(invoke, "health")
    assert "kernels: 1" in result.output
    result = await asyncio.to_thread(invoke, "destroy", kid)
    assert result.exit_code == 0 and f"destroyed {kid}" in result.output
    create_keypair(tmp_path / "other", "other")
    result = await asyncio.to_thread(lambda: runner.invoke(agent_cli, [
        "call", "--address", f"127.0.0.1:{listen.port}", "--timeout", "5",
        "--manager-keypair", str(tmp_path / "other" / "other.key_secret"),
        "--agent-public-key", str(keys["agent_public"]), "ping"]))
    assert result.exit_code == 1 and "CURVE key refused" in result.output


async def test_sync_kernel_registry_leaves_kernels_being_created_alone(served):
    """Issue 14 item 6: a sync that overlaps a create must not terminate the kernel being created."""
    agent, client = served
    gate = asyncio.Event()
    real_create = agent.backend.create

    async def slow_create(spec):
        await gate.wait()
        return await real_create(spec)

    agent.backend.create = slow_create
    sid, kid = str(uuid.uuid4()), str(uuid.uuid4())
    creating = asyncio.ensure_future(
        client.call("create_kernels", sid, [kid], [kernel_config()], SINGLE_NODE))
    for _ in range(200):
        if agent.registry.get(kid) is not None:
            break
        await asyncio.sleep(0.02)
    assert agent.registry.get(kid).status == "creating"
    # The manager does not list it yet (and a restart-style reconcile runs too): both leave it alone.
    await client.call("sync_kernel_registry", [])
    await client.call("sync_kernel_registry", [(kid, sid)])
    await agent.reconcile()
    assert agent.registry.get(kid) is not None and not events(agent, "kernel_terminated")
    gate.set()
    [info] = await asyncio.wait_for(creating, 30)
    assert info["id"] == kid and agent.registry.get(kid).status == "running"
    # Once running, a sync from a manager that does not know it destroys it without events,
    # and a kernel the manager knows but we do not is reported terminated.
    ghost = str(uuid.uuid4())
    await client.call("sync_kernel_registry", [(ghost, sid)])
    assert agent.registry.get(kid) is None
    assert [args[:3] for args in events(agent, "kernel_terminated")] == [
        (ghost, sid, KernelLifecycleEventReason.ALREADY_TERMINATED)]


async def test_a_kernel_that_fails_to_start_is_a_named_error_and_a_terminated_event(served, caplog):
    agent, client = served

    async def broken_create(spec):
        raise BackendError("kernel exited before its runner came up: ImportError: no module named x")

    agent.backend.create = broken_create
    sid, kid = str(uuid.uuid4()), str(uuid.uuid4())
    with pytest.raises(RpcCallError) as answer:
        await client.call("create_kernels", sid, [kid], [kernel_config()], SINGLE_NODE)
    assert answer.value.name == "KernelStartFailed" and "ImportError" in answer.value.message
    reason = KernelLifecycleEventReason.FAILED_TO_START
    assert events(agent, "kernel_terminated")[-1][:3] == (kid, sid, reason)
    assert len(agent.registry) == 0 and agent.allocator.used()["cpu"] == 0
    assert "Traceback" not in caplog.text


async def test_restart_kernel_is_silent_to_the_manager_and_gives_a_fresh_kernel(served):
    agent, client = served
    sid, kid, info = await create(client)
    await client.call("execute", sid, kid, 2, "a", "query", "x = 1", {}, 5.0)
    restarted = await client.call("restart_kernel", sid, kid, {})
    # The keys 23.09's manager updates its kernel row from.
    assert {"container_id", "repl_in_port", "repl_out_port", "stdin_port", "stdout_port"} <= set(restarted)
    assert restarted["container_id"] != info["container_id"]
    # As 23.09: no terminating/terminated/started events for a restart (the session stays RUNNING).
    assert [n for n, _, _ in agent.events.buffer if n.startswith("kernel_")] == [
        "kernel_preparing", "kernel_creating", "kernel_started"]
    result = await client.call("execute", sid, kid, 2, "b", "query", "print('x' in dir())", {}, 5.0)
    assert result["console"] == (("stdout", "False\n"),)


async def test_calls_past_the_concurrency_bound_are_busy_and_past_the_deadline_are_answered(tmp_path):
    instance, listeners = await start_agent(tmp_path, rpc={"max-concurrency": 2, "call-timeout": 1.5})
    try:
        auth = client_auth_for(tmp_path)
        async with AgentRPCClient(rpc_address(instance.config), auth, timeout=30) as client:
            sid, kid, _ = await create(client)
            slow = "import time\ntime.sleep(1)"
            calls = [client.call("execute", sid, kid, 2, f"r{i}", "query", slow, {}, 10.0) for i in range(2)]
            outcomes = await asyncio.gather(*calls, client.call("ping", "third"), return_exceptions=True)
            busy = [o for o in outcomes if isinstance(o, RpcCallError) and o.name == "AgentBusy"]
            assert len(busy) == 1, outcomes
            # A call that outlives call-timeout is answered DeadlineExceeded; the server carries on.
            with pytest.raises(RpcCallError, match="DeadlineExceeded"):
                await client.call("execute", sid, kid, 2, "long", "query", "time.sleep(5)", {}, 10.0)
            assert await client.call("ping", "after") == "after"
    finally:
        await listeners.close()
        await instance.stop(destroy_kernels=True)
