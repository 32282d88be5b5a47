"""The lab node: systemd is PID 1 and working, and the gpufleet venv is usable."""

import json
import time


def test_systemd_is_pid1_and_booted(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"
    state = host.run("systemctl is-system-running").stdout.strip()
    # "degraded" would need a reason; the lab image masks the units that fail in containers.
    failed = host.run("systemctl --failed --no-legend --plain").stdout.strip()
    assert state == "running", f"systemd is {state}; failed units: {failed}"


def test_journald_records_a_message(host):
    """journald is a real service on the node: a message logged is read back."""
    journald = host.service("systemd-journald")
    assert journald.is_running
    tag = f"gpufleet-lab-{time.time_ns()}"
    host.run_test("logger -t %s hello-from-molecule", tag)
    for _ in range(50):
        out = host.run("journalctl -t %s -o json --no-pager", tag).stdout
        if out.strip():
            break
        time.sleep(0.1)
    entry = json.loads(out.strip().splitlines()[0])
    assert entry["MESSAGE"] == "hello-from-molecule"


def test_gpufleet_installed_in_venv(host):
    out = host.run_test("/opt/gpufleet/bin/gpufleet --version").stdout
    assert "0.1.0" in out
    assert host.file("/usr/local/bin/gpufleet").linked_to == "/opt/gpufleet/bin/gpufleet"
    # The package imports its runtime dependencies from the venv, not the system.
    probe = host.run_test("/opt/gpufleet/bin/python -c 'import kubernetes, redis, click; print(\"ok\")'")
    assert probe.stdout.strip() == "ok"


def test_service_directories_are_private(host):
    for path in ("/etc/gpufleet", "/var/lib/gpufleet"):
        directory = host.file(path)
        assert directory.is_directory
        assert directory.user == "root"
        assert directory.mode == 0o750


def test_scheduler_without_an_api_is_alive_not_ready_and_stops_cleanly(host):
    """gpufleet-scheduler runs sandboxed (DynamicUser, the kubeconfig as a credential)."""
    service = host.service("gpufleet-scheduler")
    assert service.is_running and service.is_enabled
    healthz = json.loads(host.run_test("curl -s -w '' http://127.0.0.1:9402/healthz").stdout)
    assert "loop_idle_seconds" in healthz
    ready = host.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9402/readyz").stdout
    assert ready == "503"
    detail = json.loads(host.run("curl -s http://127.0.0.1:9402/readyz").stdout)
    assert detail["api_reachable"] is False and detail["leader"] is False
    metrics = host.run_test("curl -s http://127.0.0.1:9402/metrics").stdout
    assert "gpufleet_scheduler_leader 0.0" in metrics
    pid = host.run_test("systemctl show -p MainPID --value gpufleet-scheduler").stdout.strip()
    status = host.file(f"/proc/{pid}/status").content_string
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    host.run_test("systemctl stop gpufleet-scheduler")
    result = host.run_test("systemctl show -p Result -p ExecMainStatus gpufleet-scheduler").stdout
    assert "Result=success" in result and "ExecMainStatus=0" in result
    log = host.run_test("journalctl -u gpufleet-scheduler --no-pager -o cat").stdout
    assert "Traceback" not in log
    host.run_test("systemctl start gpufleet-scheduler")
