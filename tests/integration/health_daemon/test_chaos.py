"""Chaos tests of the health agent (issue 14): a black-hole API, broken files on SIGHUP, lost state,
a Redis restart, harmless Xids, and fences that lift once their condition is met.

Each test is bounded (every wait has a deadline) and stops what it starts.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import redis
from fixtures.api_switch import ApiSwitch
from fixtures.infra_services import make_redis
from fixtures.kube_api import write_kubeconfig
from gpufleet.health.daemon import URGENT_RETRY_MAX, HealthAgent
from gpufleet.health.fencing import ANNOTATION_FENCE
from gpufleet.health.severity import Severity
from gpufleet.health.xid import XidCatalog

pytestmark = pytest.mark.integration

UNHEALTHY = "gpufleet.io/unhealthy"


def fence_of(node: dict) -> list[dict]:
    return [
        {k: t[k] for k in ("key", "value", "effect") if k in t}
        for t in node["spec"].get("taints") or []
        if t["key"] == UNHEALTHY
    ]


def metric(agent, name: str, **labels) -> float | None:
    return agent.metrics.registry.get_sample_value(name, labels or None)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Running:
    """An agent's run_loop on a thread, stopped on exit."""

    def __init__(self, agent: HealthAgent):
        self.agent = agent
        self.thread = threading.Thread(target=agent.run_loop, name="agent-loop", daemon=True)

    def __enter__(self) -> HealthAgent:
        self.thread.start()
        wait_for(lambda: self.agent.ready, 30, "the first cycle")
        return self.agent

    def __exit__(self, *exc) -> None:
        self.agent.request_stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the agent loop did not stop"


# ---------------------------------------------------------------- a black-hole API


def test_black_hole_api_never_blocks_the_checks_and_the_fence_lands_when_it_answers(
    fleet, kube_api, tmp_path
):
    request_timeout = 3.0
    fleet.add("gpu-1")
    switch = ApiSwitch(kube_api.url).start()
    try:
        kubeconfig = write_kubeconfig(tmp_path / "switch.kubeconfig", switch.url)
        agent = fleet.agent(
            "gpu-1",
            interval=2,
            kubernetes={"kubeconfig": str(kubeconfig), "request_timeout": request_timeout},
        )
        with Running(agent):
            wait_for(
                lambda: kube_api.get_node("gpu-1")["metadata"]["labels"].get("gpufleet.io/health"),
                20,
                "the first publication",
            )
            assert agent.readiness()[0]
            switch.black_hole()

            fleet.inject("gpu-1", gpu=3, xid=79, message="GPU has fallen off the bus.")
            # The check loop judged the Xid while every API request hangs ...
            wait_for(lambda: agent.last_report.verdict == Severity.REBOOT, 10, "the Xid verdict")
            # ... and kept cycling on schedule behind the hung publisher.
            cycles = metric(agent, "gpufleet_health_cycle_duration_seconds_count", schedule="interval") or 0
            wait_for(
                lambda: (
                    (metric(agent, "gpufleet_health_cycle_duration_seconds_count", schedule="interval") or 0)
                    >= cycles + 2
                ),
                20,
                "two scheduled cycles during the outage",
            )
            assert fence_of(kube_api.get_node("gpu-1")) == []  # nothing got through
            wait_for(
                lambda: metric(agent, "gpufleet_health_cycle_overruns_total", stage="publish"),
                30,
                "the publication overrun to be reported",
            )
            assert agent.readiness()[0] is False  # /readyz says so

            switch.forward()
            answered = time.monotonic()
            # budget: the request hanging when the API came back times out, then one quick retry
            budget = request_timeout * 4 + URGENT_RETRY_MAX + 5
            wait_for(lambda: fence_of(kube_api.get_node("gpu-1")), budget, "the fence after the API answers")
            took = time.monotonic() - answered
            assert fence_of(kube_api.get_node("gpu-1"))[0]["value"] == "REBOOT"
            wait_for(lambda: agent.readiness()[0], 30, "a cycle completing in time")
        assert metric(agent, "gpufleet_health_cycle_overruns_total", stage="checks") == 0
        print(f"fence {took:.2f} s after the API answered again (budget {budget:.0f} s)")
    finally:
        switch.stop()


def test_the_intensive_gate_does_not_wait_for_a_hung_pod_list(fleet, kube_api, tmp_path):
    fleet.add("gpu-1")
    switch = ApiSwitch(kube_api.url).start()
    try:
        kubeconfig = write_kubeconfig(tmp_path / "switch.kubeconfig", switch.url)
        agent = fleet.agent("gpu-1", kubernetes={"kubeconfig": str(kubeconfig), "request_timeout": 30})
        agent._pod_list_guard.timeout = 0.5
        switch.black_hole()
        started = time.monotonic()
        assert agent._intensive_allowed() is False  # unknown = busy: no DCGM diagnostics
        assert time.monotonic() - started < 10  # not the 30 s request timeout
    finally:
        switch.stop()


# ---------------------------------------------------------------- SIGHUP with broken files

GOOD_CONFIG = """
interval = 7
state_file = "{state}"
[backend]
type = "simulated"
node = "sim-node-0"
faults = "{faults}"
xid_overrides = "{overrides}"
profiles_files = [{profiles}]
[kubernetes]
enabled = "false"
[http]
address = "127.0.0.1"
port = 0
"""

BROKEN = {
    # kind: (file to break, content, what the error names)
    "health.toml not UTF-8": ("config", b"interval = 3\n# caf\xe9\n\xff\xfe\n", r"health\.toml:2: not UTF-8"),
    "health.toml not TOML": ("config", b"interval = = 3\n", r"health\.toml: not valid TOML.*line 1"),
    "health.toml unknown key": ("config", b"intervall = 3\n", r"unknown key 'intervall'"),
    "xid overrides not YAML": (
        "overrides",
        b"xids:\n  13: {severity: RESET\n  14: x\n",
        r"xid-overrides\.yaml:\d+: not valid YAML",
    ),
    "xid overrides bad severity": (
        "overrides",
        b"xids:\n  13: {severity: SEVERE}\n",
        r"xid-overrides\.yaml: Xid 13: unknown severity",
    ),
    "xid overrides not UTF-8": (
        "overrides",
        b'xids:\n  13: {action: "\xff"}\n',
        r"xid-overrides\.yaml:2: not UTF-8",
    ),
    "profiles file missing": ("profiles", None, r"profiles\.yaml: no such file"),
    "profiles file not YAML": ("profiles", b"profiles:\n  x: [\n", r"profiles\.yaml:\d+: not valid YAML"),
    "profiles file bad profile": (
        "profiles",
        b"profiles:\n  x: {gpu_count: 8, colour: red}\n",
        r"unknown keys \['colour'\]",
    ),
}


@pytest.fixture
def configured(tmp_path):
    files = {
        "config": tmp_path / "health.toml",
        "overrides": tmp_path / "xid-overrides.yaml",
        "profiles": tmp_path / "profiles.yaml",
    }
    files["overrides"].write_text("xids:\n  13: {severity: RESET}\n")
    files["profiles"].write_text("profiles:\n  my-box: {gpu_count: 8}\n")
    files["config"].write_text(
        GOOD_CONFIG.format(
            state=tmp_path / "health.json",
            faults=tmp_path / "faults.json",
            overrides=files["overrides"],
            profiles=json.dumps(str(files["profiles"])),
        )
    )
    return files


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_reload_with_a_broken_file_keeps_the_running_config(configured, kind, caplog):
    from gpufleet.health.config import load_config

    agent = HealthAgent(load_config(configured["config"]))
    engine, config = agent.engine, agent.config
    assert engine.catalog.lookup(13).severity is Severity.RESET and "my-box" in engine.profiles
    which, content, expected = BROKEN[kind]
    if content is None:
        configured[which].unlink()
    else:
        configured[which].write_bytes(content)

    with caplog.at_level("ERROR", logger="gpufleet.health.agent"):
        assert agent.reload(configured["config"]) is False

    assert agent.config is config and agent.engine is engine  # all or nothing
    assert agent.config.interval == 7
    assert metric(agent, "gpufleet_health_config_stale") == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1  # one line, not a traceback per file
    import re

    assert re.search(expected, errors[0].fields["error"]), errors[0].fields["error"]
    assert agent.cycle().report.verdict == Severity.PASS  # and it keeps working
    assert agent.readiness()[1]["config_stale"] is True


def test_a_fixed_file_reloads_and_clears_the_stale_flag(configured):
    from gpufleet.health.config import load_config

    agent = HealthAgent(load_config(configured["config"]))
    configured["overrides"].write_text("xids: [")
    assert agent.reload(configured["config"]) is False
    configured["overrides"].write_text("xids:\n  13: {severity: REBOOT}\n")
    assert agent.reload(configured["config"]) is True
    assert metric(agent, "gpufleet_health_config_stale") == 0
    assert agent.engine.catalog.lookup(13).severity is Severity.REBOOT


def test_sighup_with_a_broken_file_keeps_the_service_running(configured, tmp_path):
    """The real process: SIGHUP after breaking health.toml; the agent stays up and says it is stale."""
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    text = configured["config"].read_text().replace("port = 0", f"port = {port}")
    configured["config"].write_text(text)
    gpufleet = Path(sys.executable).with_name("gpufleet")
    process = subprocess.Popen(
        [str(gpufleet), "health", "run", "--config", str(configured["config"])],
        stderr=subprocess.PIPE,
    )
    try:

        def metrics() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    return response.read().decode()
            except OSError:
                return None

        wait_for(lambda: metrics() and "gpufleet_health_config_stale 0.0" in metrics(), 30, "the agent")
        configured["config"].write_bytes(b"interval = 3\n\xff\n")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "gpufleet_health_config_stale 1.0" in (metrics() or ""), 20, "the stale flag")
        assert process.poll() is None  # still running, on the old config
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0
    assert stderr.decode().count("config reload failed") == 1
    assert "Traceback" not in stderr.decode()


# ---------------------------------------------------------------- lost or broken state files

STATE_DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: os.urandom(len(data)),
    "valid JSON, not a state": lambda data: b'{"hello": 1}',
}


@pytest.mark.parametrize("damage", sorted(STATE_DAMAGE))
def test_a_damaged_state_file_never_lifts_a_reboot_fence(fleet, kube_api, tmp_path, damage):
    fleet.add("gpu-1")
    state = tmp_path / "gpu-1.state.json"
    fleet.inject("gpu-1", gpu=3, xid=79, message="GPU has fallen off the bus.")
    agent = fleet.agent("gpu-1", state=state, kubernetes={"lift_after": 1})
    assert agent.cycle().fence_action == "fence"
    record = json.loads(kube_api.get_node("gpu-1")["metadata"]["annotations"][ANNOTATION_FENCE])
    assert record["value"] == "REBOOT" and record["boot_id"]
    fleet.inject("gpu-1", clear=True)  # the Xid is gone from the kernel log's view; no reboot happened
    state.write_bytes(STATE_DAMAGE[damage](state.read_bytes()))

    restarted = fleet.agent("gpu-1", state=state, kubernetes={"lift_after": 1})

    assert metric(restarted, "gpufleet_health_state_file_corrupt_total") == 1
    kept = list(tmp_path.glob("gpu-1.state.json.corrupt-*"))
    assert len(kept) == 1
    for _ in range(4):
        result = restarted.cycle()
        assert result.report.verdict == Severity.PASS  # it forgot the Xid ...
        assert result.fence_action == "reboot_held"  # ... but the node remembers
    assert fence_of(kube_api.get_node("gpu-1")) == [
        {"key": UNHEALTHY, "value": "REBOOT", "effect": "NoSchedule"}
    ]
    # A PASS-then-RESET finding in the same boot does not lower the fence either.
    fleet.inject("gpu-1", gpu=1, settings={"remapped_rows.pending": True})
    assert restarted.cycle().fence_action == "hold"
    assert fence_of(kube_api.get_node("gpu-1"))[0]["value"] == "REBOOT"
    fleet.inject("gpu-1", clear=True)

    fleet.inject("gpu-1", reboot=True)  # the documented lift condition: a new boot ...
    actions = [restarted.cycle().fence_action for _ in range(2)]  # ... and lift_after healthy cycles
    assert "lift" in actions
    node = kube_api.get_node("gpu-1")
    assert fence_of(node) == [] and ANNOTATION_FENCE not in node["metadata"]["annotations"]


def test_a_missing_state_file_takes_the_fence_from_the_node(fleet, kube_api, tmp_path):
    fleet.add("gpu-1")
    state = tmp_path / "gpu-1.state.json"
    fleet.inject("gpu-1", gpu=5, settings={"remapped_rows.failure": True})
    agent = fleet.agent("gpu-1", state=state, kubernetes={"lift_after": 1})
    agent.cycle()
    assert fence_of(kube_api.get_node("gpu-1"))[0]["value"] == "ISOLATE"
    fleet.inject("gpu-1", clear=True)
    state.unlink()
    fleet.inject("gpu-1", reboot=True)  # not even a reboot lifts ISOLATE: an operator does

    restarted = fleet.agent("gpu-1", state=state, kubernetes={"lift_after": 1})
    actions = [restarted.cycle().fence_action for _ in range(3)]

    assert set(actions) == {"isolate_held"}
    assert fence_of(kube_api.get_node("gpu-1"))[0]["value"] == "ISOLATE"


def test_state_writes_are_durable_and_atomic(tmp_path, monkeypatch):
    from gpufleet.health.sinks import state_file

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(state_file.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "health.json"
    state_file.write_state(path, {"fence": {"fence_value": "REBOOT"}})
    assert len(synced) == 2  # the file, then its directory
    assert state_file.load_state(path) == (
        {"fence": {"fence_value": "REBOOT"}, "schema": state_file.STATE_SCHEMA},
        state_file.STATE_OK,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["health.json"]  # no temp file left


# ---------------------------------------------------------------- Redis restart mid-run


def test_a_redis_restart_mid_run_loses_no_events(fleet, tmp_path):
    server = make_redis(tmp_path)
    server.start()
    try:
        fleet.add("gpu-1")
        agent = fleet.agent("gpu-1", redis={"url": server.url}, kubernetes={"enabled": "false"})
        client = redis.Redis.from_url(server.url)

        def statuses() -> list[str]:
            try:
                return [json.loads(f[b"args"])["verdict"] for _, f in client.xrange("events")]
            except redis.RedisError:
                return []

        with Running(agent):
            wait_for(lambda: statuses() == ["PASS"], 20, "the first event")
            server.stop()
            for xid, verdict in ((13, "MONITOR"), (46, "RESET"), (79, "REBOOT")):
                fleet.inject("gpu-1", gpu=2, xid=xid)
                wait_for(lambda v=verdict: agent.last_report.verdict.name == v, 10, f"verdict {verdict}")
            # the publisher thread buffers an event just after the cycle reports its verdict
            wait_for(
                lambda: len(agent.redis_sink.buffer) == 3, 10, "three events buffered while Redis is down"
            )
            server.start()  # the same port; Redis lost its memory (no persistence in this test)
            wait_for(lambda: statuses() == ["MONITOR", "RESET", "REBOOT"], 20, "the buffered events in order")
        assert metric(agent, "gpufleet_health_redis_events_dropped_total") == 0
        assert metric(agent, "gpufleet_health_redis_events_pending") == 0
    finally:
        server.stop()


def test_the_drop_rule_drops_the_oldest_beyond_the_buffer(tmp_path):
    from types import SimpleNamespace

    from gpufleet.health.severity import HealthStatus
    from gpufleet.health.sinks.redis_events import MAX_BUFFERED, RedisEventSink

    dropped = []
    sink = RedisEventSink("redis://127.0.0.1:1/0", "gpu-1", on_drop=lambda: dropped.append(1))
    for i in range(MAX_BUFFERED + 5):
        report = SimpleNamespace(
            status=HealthStatus.WARN, verdict=Severity.MONITOR, findings=[], time=float(i)
        )
        sink.queue(report, "fence")  # every fence movement is an event
    assert len(sink.buffer) == MAX_BUFFERED and len(dropped) == 5
    assert sink.buffer[0]["time"] == 5.0  # the oldest five went
    assert sink.flush() is False  # nothing listens on port 1: kept, not lost


# ---------------------------------------------------------------- harmless Xids and lifts

HARMLESS = sorted(
    code for code in range(1, 173) if XidCatalog.load().lookup(code).bucket in ("RESTART_APP", "IGNORE")
)


def test_restart_app_and_ignore_xids_never_fence(fleet, kube_api):
    assert len(HARMLESS) > 50
    fleet.add("gpu-1")
    agent = fleet.agent("gpu-1")
    agent.cycle()
    for code in HARMLESS:
        fleet.inject("gpu-1", gpu=code % 8, xid=code)
        result = agent.cycle("xid", agent.backend.wait_xid_events(0))
        assert result.report.verdict == Severity.MONITOR, code
        assert result.fence_action in ("none", None), code
    assert fence_of(kube_api.get_node("gpu-1")) == []
    assert sorted({int(x["xid"]) for x in agent.engine_state.xids.values()}) == HARMLESS


def test_no_fence_stays_after_the_fault_clears_and_the_lift_condition_is_met(fleet, kube_api):
    fleet.add("gpu-1", "gpu-2")
    fleet.inject("gpu-1", gpu=1, settings={"remapped_rows.pending": True})  # RESET
    fleet.inject("gpu-2", gpu=3, xid=79)  # REBOOT
    agents = {
        n: fleet.agent(n, kubernetes={"lift_after": 2, "max_fenced": "2"}, backend={"keeper_window": 0})
        for n in ("gpu-1", "gpu-2")
    }
    for agent in agents.values():
        agent.cycle()
    assert all(fence_of(kube_api.get_node(n)) for n in agents)

    fleet.inject("gpu-1", clear=True)  # the GPU was reset: the remap is applied
    fleet.inject("gpu-2", clear=True)
    fleet.inject("gpu-2", reboot=True)  # the node was rebooted
    for _ in range(3):
        for agent in agents.values():
            agent.cycle()

    for name in agents:
        node = kube_api.get_node(name)
        assert fence_of(node) == [], name
        assert ANNOTATION_FENCE not in node["metadata"]["annotations"], name


def test_an_xid_after_an_operator_release_fences_again_in_the_running_agent(fleet, kube_api):
    """The release is found by the publication of the new Xid's cycle: that Xid is judged again."""
    fleet.add("gpu-1")
    agent = fleet.agent("gpu-1", interval=300)
    with Running(agent):
        fleet.inject("gpu-1", gpu=3, xid=79)
        wait_for(lambda: fence_of(kube_api.get_node("gpu-1")), 20, "the first fence")
        kube_api.update_object(  # the operator returns the node to service after a reboot
            "nodes",
            "gpu-1",
            {
                "spec": {"taints": None},
                "metadata": {"annotations": {"gpufleet.io/owned-taints": None, ANNOTATION_FENCE: None}},
            },
        )
        fleet.inject("gpu-1", reboot=True)
        time.sleep(0.3)
        fleet.inject("gpu-1", gpu=3, xid=79)
        wait_for(lambda: fence_of(kube_api.get_node("gpu-1")), 20, "the fence after the release")
    assert metric(agent, "gpufleet_health_fence_actions_total", action="released") == 1
