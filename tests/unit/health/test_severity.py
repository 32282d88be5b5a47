from gpufleet.health.severity import (
    NODE,
    Finding,
    HealthStatus,
    Severity,
    VerdictKeeper,
    health_status,
    node_verdict,
)


def finding(severity, check="ecc", gpu="0:GPU-a", at=1000.0):
    return Finding(check, gpu, severity, severity.name, time=at)


def test_severity_order():
    assert Severity.PASS < Severity.MONITOR < Severity.RESET < Severity.REBOOT < Severity.ISOLATE
    assert Severity.parse("reset") is Severity.RESET
    assert Severity.parse(3) is Severity.REBOOT


def test_node_verdict_is_the_maximum():
    findings = [
        finding(Severity.MONITOR),
        finding(Severity.REBOOT, gpu="1"),
        finding(Severity.PASS, gpu=NODE),
    ]
    assert node_verdict(findings) is Severity.REBOOT
    assert node_verdict([]) is Severity.PASS


def test_health_status_mapping():
    assert health_status(Severity.PASS, monitor_broken=False) is HealthStatus.PASS
    assert health_status(Severity.MONITOR, monitor_broken=False) is HealthStatus.WARN
    for severity in (Severity.RESET, Severity.REBOOT, Severity.ISOLATE):
        assert health_status(severity, monitor_broken=False) is HealthStatus.FAIL
    # A broken monitor is unknown, never a fault; a real finding still wins.
    assert health_status(Severity.PASS, monitor_broken=True) is HealthStatus.UNKNOWN
    assert health_status(Severity.REBOOT, monitor_broken=True) is HealthStatus.FAIL


def test_keeper_reset_then_monitor_leaves_reset():
    keeper = VerdictKeeper(window=3600)
    first = keeper.observe([finding(Severity.RESET, at=1000)], now=1000)
    assert node_verdict(first) is Severity.RESET
    later = keeper.observe([finding(Severity.MONITOR, at=1060)], now=1060)
    assert node_verdict(later) is Severity.RESET
    assert [f.message for f in later] == ["RESET"]


def test_keeper_pass_does_not_hide_held_finding_and_drops_own_pass():
    keeper = VerdictKeeper(window=3600)
    keeper.observe([finding(Severity.RESET, gpu="3:GPU-x", at=1000)], now=1000)
    result = keeper.observe([finding(Severity.PASS, gpu=NODE, at=1100)], now=1100)
    assert [(f.gpu, f.severity) for f in result] == [("3:GPU-x", Severity.RESET)]


def test_keeper_worse_replaces_and_window_expires():
    keeper = VerdictKeeper(window=100)
    keeper.observe([finding(Severity.MONITOR, at=0)], now=0)
    assert node_verdict(keeper.observe([finding(Severity.ISOLATE, at=10)], now=10)) is Severity.ISOLATE
    # Past the window a milder finding is the truth again.
    assert node_verdict(keeper.observe([finding(Severity.MONITOR, at=200)], now=200)) is Severity.MONITOR
    assert node_verdict(keeper.observe([finding(Severity.PASS, at=400)], now=400)) is Severity.PASS


def test_keeper_round_trips_through_dict():
    keeper = VerdictKeeper(window=50)
    keeper.observe([finding(Severity.REBOOT, at=5)], now=5)
    again = VerdictKeeper.from_dict(keeper.to_dict())
    assert node_verdict(again.observe([finding(Severity.PASS, at=10)], now=10)) is Severity.REBOOT
    assert again.clear(check="ecc") == 1
