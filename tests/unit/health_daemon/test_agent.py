"""The agent without Kubernetes: the loop, Xid wake-ups, carried results, HTTP, state, status, logs."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from gpufleet.gpu.simulated import inject
from gpufleet.health.cli import health
from gpufleet.health.config import config_from_dict
from gpufleet.health.daemon import PERIODIC, HealthAgent
from gpufleet.health.severity import Severity
from gpufleet.service import StatusHttpServer, StructuredFormatter, notify, watchdog_interval


@pytest.fixture
def make_agent(tmp_path):
    faults = tmp_path / "faults.json"

    def make(**settings):
        backend = {"type": "simulated", "node": "sim-node-0", "faults": str(faults)}
        backend.update(settings.pop("backend", {}))
        data = {
            "interval": 60,
            "state_file": str(tmp_path / "health.json"),
            "backend": backend,
            "kubernetes": {"enabled": "false"},
            "http": {"address": "127.0.0.1", "port": 0},
        }
        data.update(settings)
        return HealthAgent(config_from_dict(data, source="test"))

    make.faults = faults
    make.state = tmp_path / "health.json"
    return make


def test_an_xid_wakes_the_loop_at_once(make_agent):
    agent = make_agent()
    loop = threading.Thread(target=agent.run_loop)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while not agent.ready and time.monotonic() < deadline:
            time.sleep(0.02)
        assert agent.last_report.verdict == Severity.PASS
        injected = time.monotonic()
        inject(make_agent.faults, "sim-node-0", gpu=1, xid=48)
        while agent.last_report.verdict == Severity.PASS and time.monotonic() < injected + 5:
            time.sleep(0.005)
        latency = time.monotonic() - injected
    finally:
        agent.request_stop()
        loop.join(10)
    assert agent.last_report.verdict == Severity.RESET
    assert latency < 1.0, f"an interval of 60 s, yet the Xid was judged after {latency:.2f} s"
    assert agent.xid_counts == {"48": 1}
    assert agent.metrics.registry.get_sample_value("gpufleet_health_xid_events_total", {"xid": "48"}) == 1
    assert not loop.is_alive()


def test_an_idle_loop_sleeps(make_agent):
    """Between cycles the loop waits; it must not spin (e.g. retrying a publication with no sink)."""
    agent = make_agent()
    iterations = []
    original = agent._take_events

    def counting():
        iterations.append(1)
        return original()

    agent._take_events = counting
    loop = threading.Thread(target=agent.run_loop)
    loop.start()
    time.sleep(1.0)
    agent.request_stop()
    loop.join(10)
    assert agent.ready and agent.pending is None
    assert len(iterations) <= 3, f"{len(iterations)} loop iterations in 1 s with a 60 s interval"


def test_state_file_and_status_command(make_agent):
    agent = make_agent()
    inject(make_agent.faults, "sim-node-0", gpu=2, settings={"ecc.volatile_uncorrected": 1})
    agent.cycle()
    state = json.loads(make_agent.state.read_text())
    assert state["schema"] == "gpufleet.io/health-agent-state/v1"
    assert state["report"]["verdict"] == "RESET" and state["engine"]["boot_id"] == "sim-boot-1"
    assert oct(make_agent.state.stat().st_mode & 0o777) == "0o640"

    result = CliRunner().invoke(health, ["status", "--state", str(make_agent.state)])
    assert result.exit_code == 3, result.output
    assert "status:      fail (verdict RESET)" in result.output
    assert "ecc" in result.output and "disabled by config" in result.output
    as_json = CliRunner().invoke(health, ["status", "--state", str(make_agent.state), "--json"])
    assert json.loads(as_json.output)["report"]["status"] == "fail"
    missing = CliRunner().invoke(health, ["status", "--state", str(make_agent.state) + ".none"])
    assert missing.exit_code == 5


def test_a_new_agent_resumes_from_the_state_file(make_agent):
    first = make_agent()
    inject(make_agent.faults, "sim-node-0", gpu=2, settings={"remapped_rows.pending": True})
    first.cycle()
    inject(make_agent.faults, "sim-node-0", clear=True)
    second = make_agent()  # the keeper (1 h window) came back from the state file
    assert second.cycle().report.verdict == Severity.RESET


def test_results_of_checks_that_did_not_run_are_carried(make_agent):
    agent = make_agent()
    inject(make_agent.faults, "sim-node-0", settings={"fabric_manager_active": False})
    assert agent.cycle(PERIODIC).report.verdict == Severity.RESET  # fabric_manager is periodic
    agent.engine_state.keeper.clear()  # even once the keeper let go...
    lightweight = agent.cycle()
    assert "fabric_manager" not in lightweight.report.checks
    assert lightweight.report.verdict == Severity.RESET  # ...the periodic result stands until it runs again
    inject(make_agent.faults, "sim-node-0", clear=True)
    agent.engine_state.keeper.clear()
    assert agent.cycle(PERIODIC).report.verdict == Severity.PASS


def test_thresholds_from_the_config_reach_the_checks(make_agent):
    inject(make_agent.faults, "sim-node-0", gpu=0, settings={"power_w": 720, "power_limit_w": 700})
    assert make_agent().cycle().report.verdict == Severity.PASS  # 2.9 % over: within the default 5 %
    strict = make_agent(thresholds={"power_over_limit_ratio": 1.01})
    findings = strict.cycle().report.findings
    assert [(f.check, f.severity) for f in findings if f.severity > Severity.PASS] == [
        ("power", Severity.MONITOR)
    ]


def test_http_endpoints(make_agent):
    agent = make_agent()
    server = StatusHttpServer(agent, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert not_ready.value.code == 503
        agent.cycle()
        assert json.loads(urllib.request.urlopen(base + "/readyz", timeout=5).read())["status"] == "pass"
        assert json.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read())["alive"] is True
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert 'gpufleet_health_node_status{status="pass"} 1.0' in metrics
        assert 'gpufleet_health_check_status{check="ecc"} 0.0' in metrics
        assert 'gpufleet_health_cycle_duration_seconds_count{schedule="interval"} 1.0' in metrics
        agent._heartbeat -= 10_000  # a hung loop
        with pytest.raises(urllib.error.HTTPError) as hung:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert hung.value.code == 503
    finally:
        server.stop()


def test_sd_notify_sends_a_datagram(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1") is True
        assert receiver.recv(100) == b"READY=1"
    finally:
        receiver.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify("READY=1") is False
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None  # meant for another process


def test_log_lines_are_structured():
    record = logging.LogRecord(
        "gpufleet.health.agent", logging.WARNING, __file__, 1, "fenced node", None, None
    )
    record.fields = {"node": "gpu-1", "taint": "RESET", "reason": "a b", "skipped": None}
    journald = StructuredFormatter("logfmt", journald=True).format(record)
    assert journald == (
        '<4>level=warning logger=gpufleet.health.agent msg="fenced node" node=gpu-1 taint=RESET reason="a b"'
    )
    as_json = json.loads(StructuredFormatter("json").format(record))
    assert as_json["msg"] == "fenced node" and as_json["node"] == "gpu-1" and "time" in as_json
