"""The Xid check: kernel-log cursor per boot, windows, de-duplication (the anchors' faults)."""

import time

from gpufleet.gpu.kernel_log import KernelLine, KernelLogSource
from gpufleet.gpu.simulated import SimulatedBackend
from gpufleet.health.checks import read_kernel_xids
from gpufleet.health.severity import Severity
from gpufleet.health.state import HealthState


class FakeKernelLog(KernelLogSource):
    def __init__(self, boot="boot-1"):
        self.boot = boot
        self.lines: list[tuple[int, KernelLine]] = []

    def add(self, text, ts):
        self.lines.append((len(self.lines) + 1, KernelLine(text, ts)))

    def boot_id(self):
        return self.boot

    def read_after(self, cursor):
        last = int(cursor) if cursor else 0
        new = [(seq, line) for seq, line in self.lines if seq > last]
        return [line for _, line in new], (str(new[-1][0]) if new else cursor)


def run_xid(sim, log, now, state=None):
    probe = type("Probe", (), {"kernel_log": lambda self: log, "boot_id": lambda self: log.boot})()
    sim.backend.host_probe = lambda: probe
    if state is not None:
        sim.state = state
    return sim.engine(["xid"], clock=lambda: now).run(("lightweight",))


def test_old_xid_not_rereported_after_its_cursor(sim):
    log = FakeKernelLog()
    log.add("NVRM: Xid (PCI:0000:18:00): 13, pid=1, name=x, Graphics SM Warp Exception", 1000.0)
    report = run_xid(sim, log, now=1010.0)
    assert report.verdict is Severity.MONITOR
    assert sim.state.kernel_log == {"boot_id": "boot-1", "cursor": "1"}
    # Next cycles read nothing new; once the window passes the old Xid is gone for good.
    assert run_xid(sim, log, now=1020.0).verdict is Severity.MONITOR
    # past the Xid window (1 h) and the verdict keeper's hold (1 h after the last report)
    assert run_xid(sim, log, now=1020.0 + 3600 + 1).verdict is Severity.PASS
    # A restarted agent with persisted state does not read it again either.
    restored = HealthState.from_dict(sim.state.to_dict())
    assert run_xid(sim, log, now=6000.0, state=restored).verdict is Severity.PASS


def test_xid_from_earlier_in_boot_outside_window_is_not_reported(sim):
    log = FakeKernelLog()
    log.add("NVRM: Xid (PCI:0000:18:00): 31, pid=1, name=x, MMU Fault", 1000.0)
    assert run_xid(sim, log, now=1000.0 + 7200).verdict is Severity.PASS


def test_reboot_forgets_previous_boot(sim):
    log = FakeKernelLog()
    log.add("NVRM: Xid (PCI:0000:38:00): 79, pid=1, name=x, GPU has fallen off the bus.", 1000.0)
    report = run_xid(sim, log, now=1001.0)
    assert report.verdict is Severity.REBOOT
    assert report.findings[0].gpu.startswith("2:GPU-")  # bus 0x38 is the simulated GPU 2
    assert run_xid(sim, log, now=99999.0).verdict is Severity.REBOOT  # until the reboot
    rebooted = FakeKernelLog(boot="boot-2")
    assert run_xid(sim, rebooted, now=100000.0).verdict is Severity.PASS
    assert sim.state.xids == {} and sim.state.keeper.held() == []


def test_repeats_are_deduplicated_per_gpu(sim):
    log = FakeKernelLog()
    for i in range(5):
        log.add("NVRM: Xid (PCI:0000:18:00): 13, pid=1, name=x, Graphics Exception", 1000.0 + i)
    log.add("NVRM: Xid (PCI:0000:28:00): 13, pid=1, name=x, Graphics Exception", 1003.0)
    report = run_xid(sim, log, now=1010.0)
    xids = [f for f in report.findings if f.check == "xid"]
    assert len(xids) == 2
    assert sorted(f.evidence["count"] for f in xids) == [1, 5]


def test_same_xid_from_nvml_and_kernel_log_counted_once(tmp_path):
    from health_sim import SimNode

    node = SimNode(tmp_path)
    now = time.time()
    node.inject(gpu=1, xid=48, message="DBE", now=now - 2)  # before the backend: kernel log only
    fresh = SimulatedBackend(node=node.node, faults=node.faults)
    node.backend = fresh
    node.inject(gpu=1, xid=48, message="DBE", now=now - 1)  # after: an NVML event and a kernel line
    engine = node.engine(["xid"])
    report = engine.run(("lightweight",))
    (finding,) = [f for f in report.findings if f.check == "xid"]
    assert finding.severity is Severity.RESET
    assert finding.evidence["count"] == 2
    assert set(finding.evidence["sources"]) == {"kernel-log", "simulated"}


def test_xid154_recovery_action_from_simulated_injection(sim):
    sim.inject(
        gpu=0, xid=154, message="GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)"
    )
    assert sim.run("xid").verdict is Severity.REBOOT


def test_injected_xid_delivered_promptly(sim):
    import threading

    result = {}

    def waiter():
        started = time.monotonic()
        result["events"] = sim.backend.wait_xid_events(2.0)
        result["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    injected = time.monotonic()
    sim.inject(gpu=7, xid=79, message="GPU has fallen off the bus.")
    thread.join(3)
    latency = time.monotonic() - injected
    assert [e.xid for e in result["events"]] == [79]
    assert result["events"][0].gpu_index == 7
    assert latency < 0.5  # polled every 25 ms; generous bound for a loaded CI machine


def test_boot_change_drops_cursor_and_old_xids():
    # read_kernel_xids with a state whose boot changed drops its cursor and old records.
    state = HealthState(
        kernel_log={"boot_id": "old", "cursor": "99"}, xids={"0:x|13": {"boot_id": "old", "xid": 13}}
    )
    log = FakeKernelLog(boot="new")
    log.add("NVRM: Xid (PCI:0000:18:00): 13, pid=1, name=x, x", 1.0)

    class Ctx:
        host = type("P", (), {"kernel_log": lambda self: log})()

    Ctx.state = state
    events = read_kernel_xids(Ctx)
    assert [e.xid for e in events] == [13]
    assert state.kernel_log == {"boot_id": "new", "cursor": "1"} and state.xids == {}
