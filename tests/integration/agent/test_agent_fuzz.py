"""The RPC under hostile input, against a real `gpufleet agent run` process.

- a hypothesis fuzz over the msgpack RPC (>= 500 examples, bounded): every request is
  answered with a result or a named error, the log holds no traceback, the agent keeps
  serving afterwards;
- a bounded connection flood (1,500 loopback connections that never finish a handshake,
  released by the test): an authenticated create still succeeds meanwhile.
"""

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid

import msgpack
import pytest
import zmq
import zmq.auth
from agent_helpers import client_auth_for, free_port, free_port_range, rpc_keys
from gpufleet.agent.client import AgentRPCClient
from gpufleet.agent.protocol.codec import packb
from gpufleet.agent.protocol.functions import FUNCTIONS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

FLOOD_CONNECTIONS = 1500


@pytest.fixture(scope="module")
def agent_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
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
scratch-root = "{tmp / 'scratch'}"
kernel-uid = "agent"
[resource]
gpus = 2
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


def ping(agent, message="alive"):
    async def once():
        async with AgentRPCClient(agent["address"], client_auth_for(agent["tmp"]), timeout=30) as client:
            return await client.call("ping", message)

    return asyncio.run(once())


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
                          "resource_slots": {"cpu": "1", "mem": "268435456"}}
                await client.call("create_kernels", sid, [kid], [config], {"mode": "single-node"})
                result = await client.call("execute", sid, kid, 2, "r1", "query", "print(6*7)", {}, 10.0)
                await client.call("destroy_kernel", kid, sid)
                return result

        started = time.monotonic()
        result = asyncio.run(create_and_run())
        assert result["console"] == (("stdout", "42\n"),)
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
