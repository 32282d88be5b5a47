"""Conformance with Backend.AI 23.09, using Backend.AI's own code as the other side.

peer/rpc_ops.py runs in .venv-backendai: the 23.09 manager's PeerInvoker and
ManagerAuthHandler over callosum, ai.backend.common.msgpack for the wire, and
ai.backend.common.events to decode the Redis `events` stream. It calls every one of 23.09's
27 RPC functions with the argument shapes the 23.09 manager sends (plus `health` and an
unknown name), with CURVE on and off. The agent runs stand-alone (no manager that could
touch its kernels), Redis given directly.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pytest
from fixtures.backendai import (
    ARCHITECTURE,
    IMAGE_CANONICAL,
    REGISTRY,
    REGISTRY_URL,
    SCALING_GROUP,
    GpufleetAgentProcess,
    make_rpc_keypair,
    run_peer,
)

FUNCTIONS_2309 = {
    "ping", "gather_hwinfo", "get_local_config", "update_scaling_group", "ping_kernel",
    "sync_kernel_registry", "create_kernels", "destroy_kernel", "restart_kernel", "interrupt_kernel",
    "execute", "get_completions", "get_logs", "start_service", "shutdown_service", "get_commit_status",
    "commit", "upload_file", "download_file", "download_single", "list_files", "shutdown_agent",
    "create_local_network", "destroy_local_network", "reset_agent", "assign_port", "release_port",
}
IMAGE_LABELS = {
    "ai.backend.kernelspec": "1",
    "ai.backend.features": "batch query uid-match user-input",
    "ai.backend.runtime-type": "python",
    "ai.backend.runtime-path": "/usr/bin/python3",
    "ai.backend.service-ports": "",
}
# What the 23.09 manager's _finalize_running reads from KernelStartedEvent.creation_info.
CREATION_INFO_KEYS = {"agent_addr", "resource_spec", "scaling_group", "container_id", "repl_in_port",
                      "repl_out_port", "stdin_port", "stdout_port"}
HEARTBEAT_KEYS = {"resource_slots", "region", "addr", "public_host", "public_key", "architecture", "version",
                  "compute_plugins", "images", "scaling_group", "auto_terminate_abusing_kernel"}


@pytest.fixture(scope="module")
def rpc_keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rpc-keys")
    return {name: make_rpc_keypair(directory, name) for name in ("manager", "agent", "intruder")}


def start_agent(tmp_path_factory, rpc_keys, redis_server, curve: bool) -> GpufleetAgentProcess:
    workdir = tmp_path_factory.mktemp("agent-curve" if curve else "agent-plain")
    agent = GpufleetAgentProcess(
        workdir=workdir, agent_public_key=rpc_keys["agent"][0], agent_secret_key=rpc_keys["agent"][1],
        manager_public_key=rpc_keys["manager"][0], manager_secret_key=rpc_keys["manager"][1],
        redis=redis_server, curve=curve, heartbeat_interval=1.0)
    agent.write_config()
    agent.start()
    return agent


def scenario(agent: GpufleetAgentProcess, redis_server) -> dict:
    return run_peer(
        "rpc_ops.py", "scenario", *agent.rpc_args(),
        "--redis", f"127.0.0.1:{redis_server.port}", "--redis-password", redis_server.password,
        "--agent-id", agent.agent_id, "--image", IMAGE_CANONICAL, "--architecture", ARCHITECTURE,
        "--registry", REGISTRY, "--registry-url", REGISTRY_URL, "--scaling-group", SCALING_GROUP,
        "--image-labels", json.dumps(IMAGE_LABELS), "--batch-command", "exit 3", timeout=600)


def events_after_stop(agent: GpufleetAgentProcess, redis_server) -> list[dict]:
    agent.stop()
    return run_peer("rpc_ops.py", "events", "--redis", f"127.0.0.1:{redis_server.port}",
                    "--redis-password", redis_server.password, "--source", agent.agent_id)["events"]


@pytest.fixture(scope="module", params=[True, False], ids=["curve-on", "curve-off"])
def conformance(request, tmp_path_factory, rpc_keys, redis_server):
    """The whole 23.09 call sequence against one agent, and every event it produced."""
    agent = start_agent(tmp_path_factory, rpc_keys, redis_server, curve=request.param)
    try:
        result = scenario(agent, redis_server)
        result["events"] = events_after_stop(agent, redis_server)
        result["agent"] = agent
        yield result
    finally:
        agent.kill_everything()


@pytest.fixture(scope="module")
def curve_agent(tmp_path_factory, rpc_keys, redis_server):
    agent = start_agent(tmp_path_factory, rpc_keys, redis_server, curve=True)
    yield agent
    agent.kill_everything()


# Functions the agent may decline with a named error (a callosum RPCUserError, like 23.09's
# agent raises), where it has nothing to do: local networks exist for multi-container
# sessions only (the manager calls them for cluster_size > 1), and shutdown_agent is a
# no-op in 23.09's agent too (the manager never calls it). A decline must still be an
# answer, never a timeout or a broken connection.
MAY_DECLINE = {"create_local_network", "destroy_local_network", "shutdown_agent"}


def ok(entry: dict):
    assert entry["ok"], f"{entry['name']} failed: {entry.get('error')}"
    return entry["result"]


def ok_or_declined(entry: dict):
    assert entry["name"] in MAY_DECLINE
    if not entry["ok"]:
        assert not entry.get("refused"), entry
        assert entry["error"]["name"] not in ("timeout", "AuthenticationError"), entry
        assert entry["error"]["repr"], entry


def unbytes(value) -> bytes:
    assert isinstance(value, dict) and "__bytes__" in value, f"expected bytes on the wire, got {value!r}"
    return base64.b64decode(value["__bytes__"])


# -- RPC functions -----------------------------------------------------------------------

def test_every_2309_function_was_called(conformance):
    assert FUNCTIONS_2309 <= set(conformance["called"]), FUNCTIONS_2309 - set(conformance["called"])


def test_agent_level_functions(conformance):
    assert ok(conformance["ping"]) == "are you there"
    hwinfo = ok(conformance["gather_hwinfo"])
    assert hwinfo, "gather_hwinfo answered nothing"
    for plugin, info in hwinfo.items():  # the manager checks each against HardwareMetadata
        assert set(info) >= {"status", "status_info", "metadata"}, plugin
        assert info["status"] in ("healthy", "degraded", "offline", "unavailable"), info
    local_config = ok(conformance["get_local_config"])
    assert "agent" in local_config
    ok(conformance["update_scaling_group"])
    ok_or_declined(conformance["create_local_network"])
    ok_or_declined(conformance["destroy_local_network"])
    port = ok(conformance["assign_port"])
    assert isinstance(port, int) and 1 <= port <= 65535
    ok(conformance["release_port"])


def test_create_kernels_then_kernel_started_carries_what_the_manager_finalizes(conformance):
    ok(conformance["create_kernels"])
    started = conformance["kernel_started_event"]
    assert started is not None, "no kernel_started event for the created kernel"
    assert started["class"] == "KernelStartedEvent"
    assert started["event"]["session_id"] == conformance["session_id"]
    info = started["event"]["creation_info"]
    assert CREATION_INFO_KEYS <= set(info), CREATION_INFO_KEYS - set(info)
    assert info["agent_addr"] == conformance["agent"].rpc_addr
    assert info["scaling_group"] == SCALING_GROUP
    assert "allocations" in info["resource_spec"]


def test_execute_query_and_batch(conformance):
    query = conformance["execute_query"]
    assert ok(query["last"])["status"] == "finished"
    stdout = "".join(data for kind, data in query["console"] if kind == "stdout")
    assert stdout.strip() == "42"
    result = ok(query["calls"][0])
    assert {"runId", "status", "exitCode", "options", "console", "files"} <= set(result)
    batch = conformance["execute_batch"]
    assert ok(batch["last"])["status"] == "finished"
    assert ok(batch["last"])["exitCode"] == 3


def test_kernel_level_functions(conformance):
    ping = ok(conformance["ping_kernel"])
    assert ping is None or isinstance(ping, dict)
    ok(conformance["sync_kernel_registry"])
    ok(conformance["get_completions"])
    ok(conformance["interrupt_kernel"])
    logs = ok(conformance["get_logs"])
    assert isinstance(logs["logs"], str) and logs["logs"]
    # 23.09 answers an app it cannot start with {"status": "failed", "error": ...}, which the
    # manager's API turns into a clear error for the user.
    service = ok(conformance["start_service"])
    assert service["status"] in ("started", "running", "failed"), service
    ok(conformance["shutdown_service"])
    status = ok(conformance["get_commit_status"])
    assert status["kernel"] == conformance["kernel_id"] and status["status"] in ("ready", "ongoing")
    ok(conformance["commit"])


def test_file_functions(conformance):
    ok(conformance["upload_file"])
    listing = ok(conformance["list_files"])
    files = json.loads(listing["files"]) if isinstance(listing["files"], str) else listing["files"]
    assert "hello.txt" in {entry["filename"] for entry in files}
    assert unbytes(ok(conformance["download_single"])) == b"gpufleet says hi\n"
    archive = tarfile.open(fileobj=io.BytesIO(unbytes(ok(conformance["download_file"]))))
    member = next(m for m in archive.getmembers() if m.name.endswith("hello.txt"))
    assert archive.extractfile(member).read() == b"gpufleet says hi\n"


def test_restart_kernel_keeps_it_usable(conformance):
    info = ok(conformance["restart_kernel"])
    # The manager updates its kernel row from exactly these keys.
    assert {"container_id", "repl_in_port", "repl_out_port", "stdin_port", "stdout_port"} <= set(info)
    after = conformance["execute_after_restart"]
    assert "".join(d for k, d in after["console"] if k == "stdout").strip() == "42"


def test_destroy_kernel_with_an_enum_reason_ends_in_kernel_terminated(conformance):
    ok(conformance["destroy_kernel"])
    terminated = conformance["kernel_terminated_event"]
    assert terminated is not None, "no kernel_terminated event for the destroyed kernel"
    assert terminated["class"] == "KernelTerminatedEvent"
    assert terminated["event"]["reason"]["__enum__"] == "KernelLifecycleEventReason.USER_REQUESTED"
    assert isinstance(terminated["event"]["exit_code"], int)


def test_reset_agent_destroys_every_kernel(conformance):
    assert conformance["second_kernel_started_event"] is not None
    ok(conformance["reset_agent"])
    assert conformance["second_kernel_terminated_event"] is not None


def test_health_and_an_unknown_function_answer_and_the_agent_carries_on(conformance):
    assert ok(conformance["health"])
    unknown = conformance["unknown_function"]
    assert not unknown["ok"] and not unknown.get("refused"), unknown
    assert ok(conformance["ping_after_unknown"]) == "still there"
    ok_or_declined(conformance["shutdown_agent"])


# -- events --------------------------------------------------------------------------------

def test_every_event_decodes_with_backendai_classes(conformance):
    events = conformance["events"]
    broken = [e for e in events if "error" in e]
    assert not broken, broken
    names = {e["name"] for e in events}
    assert {"agent_started", "agent_heartbeat", "kernel_preparing", "kernel_creating", "kernel_started",
            "kernel_terminating", "kernel_terminated", "agent_terminated"} <= names, names
    for name in ("kernel_preparing", "kernel_creating", "kernel_started", "kernel_terminated"):
        kernels = {e["event"]["kernel_id"] for e in events if e["name"] == name}
        assert conformance["kernel_id"] in kernels, name


def test_heartbeat_agent_info_is_what_the_2309_manager_reads(conformance):
    heartbeats = [e["event"]["agent_info"] for e in conformance["events"] if e["name"] == "agent_heartbeat"]
    assert heartbeats
    info = heartbeats[-1]
    assert HEARTBEAT_KEYS <= set(info), HEARTBEAT_KEYS - set(info)
    assert info["scaling_group"] == SCALING_GROUP
    assert info["architecture"] == ARCHITECTURE
    assert info["addr"] == conformance["agent"].rpc_addr
    for slot, (slot_type, amount) in info["resource_slots"].items():
        assert slot_type in ("count", "bytes", "unique"), slot
        float(amount)
    assert info["resource_slots"]["cuda.device"][1] in ("2", "2.0")
    images = [e["images"] for e in conformance["events"] if e["name"] == "agent_heartbeat"][-1]
    assert IMAGE_CANONICAL in [name for name, _digest in images], images
    if conformance["agent"].curve:
        expected = conformance["agent"].agent_public_key.read_text()
        assert unbytes(info["public_key"]).decode() in expected
    else:
        assert info["public_key"] is None


# -- CURVE ---------------------------------------------------------------------------------

def call(agent, *extra, name="ping", args='["hi"]'):
    return run_peer("rpc_ops.py", "call", name, "--args", args, "--timeout", "10", *extra)


def test_curve_the_right_manager_key_is_answered(curve_agent):
    assert ok(call(curve_agent, *curve_agent.rpc_args())) == "hi"


def test_curve_a_wrong_manager_key_is_refused(curve_agent, rpc_keys):
    result = call(curve_agent, *curve_agent.rpc_args(manager_keypair=rpc_keys["intruder"][1]))
    assert result.get("refused"), result
    # and the agent still answers its manager afterwards
    assert ok(call(curve_agent, *curve_agent.rpc_args())) == "hi"


def test_curve_a_plaintext_client_is_refused(curve_agent):
    result = call(curve_agent, "--addr", curve_agent.rpc_addr)
    assert result.get("refused"), result


def test_curve_a_client_expecting_another_agent_key_is_refused(curve_agent, rpc_keys):
    result = call(curve_agent, "--addr", curve_agent.rpc_addr,
                  "--agent-public-key", str(rpc_keys["intruder"][0]),
                  "--manager-keypair", str(rpc_keys["manager"][1]))
    assert result.get("refused"), result
