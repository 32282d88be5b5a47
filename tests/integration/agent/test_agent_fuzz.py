"""The RPC under hostile input, against a real `gpufleet agent run` process.

The agent runs as root and gives every kernel a uid of its own from `[container]
kernel-uid-range`, as in production (a test checks the kernels really run as those uids):

- a hypothesis fuzz over the msgpack RPC (>= 500 examples, bounded): every request is
  answered with a result or a named error, the log holds no traceback, the agent keeps
  serving afterwards;
- a bounded connection flood (1,500 loopback connections that never finish a handshake,
  released by the test): an authenticated create still succeeds meanwhile.
"""

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.auth
from agent_helpers import (
    client_auth_for,
    free_port,
    free_port_range,
    pids_of_uids,
    python_for_uid,
    real_uids,
    rpc_keys,
)
from gpufleet.agent.client import AgentRPCClient
from gpufleet.agent.protocol.codec import packb
from gpufleet.agent.protocol.functions import FUNCTIONS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Kernel uids of this module only (test_kernel_isolation.py uses 60100-60199): teardown kills
# whatever still runs as one of them.
KERNEL_UIDS = (60400, 60499)
KERNEL_PYTHON = python_for_uid(KERNEL_UIDS[1])

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or KERNEL_PYTHON is None,
                       reason="kernels as other uids need a root agent and a Python those uids may run"),
]

FLOOD_CONNECTIONS = 1500


@pytest.fixture(scope="module")
def agent_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    # pytest's tmp dirs are root's alone (0700): the kernels' scratch lives where their uids
    # can traverse to it, as under /var/lib.
    parent = Path(tempfile.mkdtemp(prefix="gpufleet-fuzz-"))
    parent.chmod(0o711)
    keys = rpc_keys(tmp)
    low, high = free_port_range(20)
    rpc_port, http_port = free_port(), free_port()
    config = tmp / "agent.toml"
    config.write_text(f"""
[etcd]
enabled = false
[agent]
id = "fuzz-agent"
rpc-listen-addr = "127.0.0.1:{rpc_port}"
advertised-host = "127.0.0.1"
state-dir = "{tmp / 'state'}"
rpc-auth-agent-keypair = "{keys['agent_secret']}"
rpc-auth-manager-public-key = "{keys['manager_public']}"
kernel-ready-timeout = 20
[container]
port-range = "{low}-{high}"
scratch-root = "{parent / 'scratch'}"
kernel-uid-range = "{KERNEL_UIDS[0]}-{KERNEL_UIDS[1]}"
kernel-python = "{KERNEL_PYTHON}"
[resource]
gpus = 2
reserved-cpu = 0
[rpc]
require-root-owner = false
max-request-bytes = 1048576
max-concurrency = 32
call-timeout = 30
[http]
addr = "127.0.0.1:{http_port}"
[redis]
addr = "127.0.0.1:1"
""")
    log = (tmp / "agent.log").open("w")
    process = subprocess.Popen([sys.executable, "-c", "from gpufleet.cli import main; main()", "agent", "run",
                                "--config", str(config)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"tcp://127.0.0.1:{rpc_port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "up: rpc" in (tmp / "agent.log").read_text():
            break
        assert process.poll() is None, (tmp / "agent.log").read_text()
        time.sleep(0.1)
    yield {"process": process, "address": address, "tmp": tmp, "log": tmp / "agent.log", "keys": keys}
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    log.close()
    # Even after a failure half-way: nothing of this module's kernel uids outlives it.
    for pid in pids_of_uids(*KERNEL_UIDS):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(parent, ignore_errors=True)


def ping(agent, message="alive"):
    async def once():
        async with AgentRPCClient(agent["address"], client_auth_for(agent["tmp"]), timeout=30) as client:
            return await client.call("ping", message)

    return asyncio.run(once())


def test_kernels_run_as_uids_of_their_own_not_the_agents(agent_process):
    """Guards the fuzz below: it must meet kernels as production runs them, not as root."""
    agent_uid = real_uids(agent_process["process"].pid)[0]
    assert agent_uid == 0
    code = "import os; print(os.getuid(), os.getgid(), os.getpid())"
    config = {"image": {"canonical": "python"}, "resource_slots": {"cpu": "0.25", "mem": "268435456"}}

    async def two_kernels():
        async with AgentRPCClient(agent_process["address"], client_auth_for(agent_process["tmp"]),
                                  timeout=60) as client:
            seen = []
            for _ in range(2):
                sid = kid = str(uuid.uuid4())
                await client.call("create_kernels", sid, [kid], [config], {"mode": "single-node"})
                result = await client.call("execute", sid, kid, 2, "r1", "query", code, {}, 10.0)
                uid, gid, pid = (int(x) for x in result["console"][0][1].split())
                # What the kernel says of itself, and what the host's process table says of it.
                seen.append((kid, sid, uid, gid, real_uids(pid)))
            for kid, sid, *_ in seen:
                await client.call("destroy_kernel", kid, sid)
            return seen

    seen = asyncio.run(two_kernels())
    uids = {uid for _, _, uid, _, _ in seen}
    assert len(uids) == 2 and agent_uid not in uids
    for _, _, uid, gid, process_uids in seen:
        assert KERNEL_UIDS[0] <= uid <= KERNEL_UIDS[1] and gid == uid and process_uids == (uid,) * 4
    assert pids_of_uids(*KERNEL_UIDS) == []  # destroyed with everything they ran


class RawClient:
    """A CURVE-authenticated DEALER sending callosum frames we build ourselves."""

    def __init__(self, agent):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        public, secret = zmq.auth.load_certificate(str(agent["keys"]["manager_secret"]))
        self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
        self.sock.curve_serverkey = zmq.auth.load_certificate(str(agent["keys"]["agent_public"]))[0]
        self.sock.linger = 0
        self.sock.rcvtimeo = 35_000
        self.sock.connect(agent["address"])
        self.seq = 0

    def request(self, method, raw_body):
        self.seq += 1
        header = msgpack.packb({"type": 1, "meth": method, "okey": b"", "seq": self.seq, "zip": False})
        self.sock.send_multipart([b"UPPER", header, msgpack.packb({"meta": b"", "body": raw_body})])
        frames = self.sock.recv_multipart()
        reply = msgpack.unpackb(frames[1])
        assert reply["seq"] == self.seq
        return reply["type"], msgpack.unpackb(frames[2])

    def close(self):
        self.sock.close(0)
        self.ctx.term()


# Values the way a confused or hostile manager could send them.
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
           | st.text(max_size=40) | st.binary(max_size=40) | st.uuids().map(str)
           | st.sampled_from(["query", "batch", "continue", "input", "../etc/passwd", "nl\n", "0" * 36]))
ext_values = st.builds(msgpack.ExtType, st.sampled_from([1, 2, 3, 4, 5, 6, 16, 17, 99]),
                       st.binary(max_size=48))
values = st.recursive(scalars | ext_values,
                      lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                                 max_size=5),
                      max_leaves=20)
methods = st.sampled_from(FUNCTIONS) | st.text(max_size=20)
bodies = (st.builds(lambda a, k: msgpack.packb({"args": a, "kwargs": k}), st.lists(values, max_size=8),
                    st.dictionaries(st.text(max_size=12), values, max_size=3))
          | st.binary(max_size=200)
          | st.builds(lambda v: msgpack.packb(v), values))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(method=methods, body=bodies)
def test_fuzzed_requests_are_answered_and_the_agent_survives(agent_process, method, body):
    client = getattr(test_fuzzed_requests_are_answered_and_the_agent_survives, "client", None)
    if client is None:
        client = RawClient(agent_process)
        test_fuzzed_requests_are_answered_and_the_agent_survives.client = client
    if method in ("reset_agent",):
        method = "ping"  # would only destroy kernels; nothing else here
    msgtype, data = client.request(method, body)
    assert msgtype in (2, 3), msgtype  # RESULT or FAILURE, never a callosum ERROR or silence
    if msgtype == 3:
        name = msgpack.unpackb(data["meta"])[0]
        assert name in ("InvalidRequest", "InvalidArgument", "UnknownMethod", "KernelNotFound",
                        "NotSupported", "Conflict", "Forbidden", "AgentBusy", "KernelStartFailed"), name
    assert agent_process["process"].poll() is None


def test_after_the_fuzz_the_agent_answers_and_logged_no_traceback(agent_process):
    client = getattr(test_fuzzed_requests_are_answered_and_the_agent_survives, "client", None)
    if client is not None:
        client.close()
    assert ping(agent_process) == "alive"
    log = agent_process["log"].read_text()
    assert "Traceback" not in log and "pwned" not in log


def test_connection_flood_then_an_authenticated_create_succeeds(agent_process):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FLOOD_CONNECTIONS + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, FLOOD_CONNECTIONS * 2), hard))
    port = int(agent_process["address"].rsplit(":", 1)[1])
    flood = []
    try:
        for index in range(FLOOD_CONNECTIONS):
            sock = socket.socket()
            sock.settimeout(5)
            try:
                sock.connect(("127.0.0.1", port))
                if index % 2:
                    # half a ZMTP greeting, then silence
                    sock.send(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f")
            except OSError:
                sock.close()
                continue
            flood.append(sock)
        assert len(flood) >= FLOOD_CONNECTIONS * 0.9

        async def create_and_run():
            async with AgentRPCClient(agent_process["address"], client_auth_for(agent_process["tmp"]),
                                      timeout=60) as client:
                sid = kid = str(uuid.uuid4())
                config = {"image": {"canonical": "python"},
                          "resource_slots": {"cpu": "0.25", "mem": "268435456"}}
                await client.call("create_kernels", sid, [kid], [config], {"mode": "single-node"})
                result = await client.call("execute", sid, kid, 2, "r1", "query",
                                           "import os; print(6*7, os.getuid() != 0)", {}, 10.0)
                await client.call("destroy_kernel", kid, sid)
                return result

        started = time.monotonic()
        result = asyncio.run(create_and_run())
        assert result["console"] == (("stdout", "42 True\n"),)
        assert time.monotonic() - started < 60
    finally:
        for sock in flood:
            sock.close()
    assert agent_process["process"].poll() is None
    assert ping(agent_process, "after flood") == "after flood"


def test_oversized_message_is_refused_and_the_agent_survives(agent_process):
    client = RawClient(agent_process)
    try:
        client.sock.rcvtimeo = 3000
        header = msgpack.packb({"type": 1, "meth": "ping", "okey": b"", "seq": 1, "zip": False})
        client.sock.send_multipart([b"UPPER", header, packb({"meta": b"", "body": b"x" * (3 << 20)})])
        with pytest.raises(zmq.Again):  # ZeroMQ drops the connection (ZMQ_MAXMSGSIZE): no reply
            client.sock.recv_multipart()
    finally:
        client.close()
    assert ping(agent_process) == "alive"
