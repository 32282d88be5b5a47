"""Host-side sources: journalctl and /dev/kmsg readers, RDMA counting, dcgmi, hardware profiles."""

import os
import subprocess

import pytest
from gpufleet.gpu import kernel_log
from gpufleet.gpu.base import GpuSnapshot, NodeReading
from gpufleet.gpu.host import SystemHostProbe
from gpufleet.gpu.kernel_log import JournalKernelLog, KmsgKernelLog
from gpufleet.gpu.profiles import ProfileError, load_profiles, select_profile
from gpufleet.health.checks import REGISTRY
from gpufleet.health.severity import Severity


def test_journal_reader_passes_cursor(tmp_path, fixtures_dir):
    argv_log = tmp_path / "argv"
    fake = tmp_path / "journalctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {argv_log}\ncat {fixtures_dir / "journal_kernel.jsonl"}\n')
    fake.chmod(0o755)
    reader = JournalKernelLog(str(fake))
    lines, cursor = reader.read_after(None)
    assert len(lines) == 4 and cursor == "s=aa;i=4;b=b1"
    reader.read_after(cursor)
    calls = argv_log.read_text().splitlines()
    assert calls[0] == "-k -o json --no-pager -q"
    assert calls[1] == "-k -o json --no-pager -q --after-cursor s=aa;i=4;b=b1"


def test_kmsg_reader_skips_records_up_to_cursor(monkeypatch):
    records = [
        b"6,101,5000000,-;nvidia-nvlink: Nvlink Core is being initialized\n",
        b"4,102,6000000,-;NVRM: Xid (PCI:0000:18:00): 13, pid=7, name=x, Graphics Exception\n"
        b" SUBSYSTEM=pci\n",
        b"4,103,7000000,-;NVRM: Xid (PCI:0000:38:00): 79, pid=0, name=x, GPU has fallen off the bus.\n",
    ]
    queue = []

    def fake_open(path, flags):
        queue[:] = list(records)
        return 99

    def fake_read(fd, size):
        if not queue:
            raise BlockingIOError
        return queue.pop(0)

    monkeypatch.setattr(kernel_log.os, "open", fake_open)
    monkeypatch.setattr(kernel_log.os, "read", fake_read)
    monkeypatch.setattr(kernel_log.os, "close", lambda fd: None)
    monkeypatch.setattr(kernel_log, "_boot_time", lambda: 1_700_000_000.0)
    reader = KmsgKernelLog()
    lines, cursor = reader.read_after(None)
    assert cursor == "103" and len(lines) == 3
    assert lines[1].text.endswith("Graphics Exception") and lines[1].timestamp == 1_700_000_006.0
    lines, cursor = reader.read_after("102")
    assert [kernel_log.parse_xid_line(line.text).xid for line in lines] == [79] and cursor == "103"


def test_rdma_device_counts(tmp_path):
    ib = tmp_path / "infiniband"
    drivers = tmp_path / "drivers"
    for name, driver in (("mlx5_0", "mlx5_core"), ("mlx5_1", "mlx5_core"), ("rdmap0s6", "efa")):
        (drivers / driver).mkdir(parents=True, exist_ok=True)
        (ib / name / "device").mkdir(parents=True)
        os.symlink(drivers / driver, ib / name / "device" / "driver")
    probe = SystemHostProbe(ib)
    assert probe.infiniband_device_count() == 2 and probe.efa_device_count() == 1
    assert SystemHostProbe(tmp_path / "absent").efa_device_count() == 0


def test_dcgmi_runner(tmp_path, fixtures_dir, monkeypatch):
    fake = tmp_path / "dcgmi"
    fake.write_text(
        f'#!/bin/sh\n[ "$*" = "diag -r 2 -j" ] || exit 9\ncat {fixtures_dir / "dcgm4_diag_r2_fail.json"}\n'
        "exit 226\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    output = SystemHostProbe().dcgm_diag(2, timeout=10)
    assert '"DCGM Diagnostic"' in output  # non-zero exit with JSON is still an answer
    fake.write_text("#!/bin/sh\nsleep 5\n")
    with pytest.raises(subprocess.TimeoutExpired):
        SystemHostProbe().dcgm_diag(1, timeout=0.2)


def test_dcgm_timeout_is_monitor_finding(sim):
    class SlowProbe(type(sim.backend.host_probe())):
        def dcgm_diag(self, level, timeout):
            raise subprocess.TimeoutExpired(["dcgmi"], timeout)

    sim.backend.host_probe = lambda: SlowProbe(sim.backend)
    report = sim.run("dcgm_diag")
    assert report.verdict is Severity.MONITOR and "timed out" in report.findings[0].message


def test_dcgm_garbage_output_is_unknown(sim, tmp_path):
    junk = tmp_path / "junk.txt"
    junk.write_text("Error: unable to connect to host engine")
    sim.inject(settings={"dcgm_output": str(junk)})
    report = sim.run("dcgm_diag")
    assert report.verdict is Severity.PASS and report.status.value == "unknown"
    assert report.unknown[0]["check"] == "dcgm_diag"


def reading(model, count):
    gpus = [GpuSnapshot(index=i, uuid=f"u{i}", pci_bus_id="", model=model) for i in range(count)]
    return NodeReading(device_count=count, gpus=gpus)


@pytest.mark.parametrize(
    ("model", "count", "profile"),
    [
        ("NVIDIA H100 80GB HBM3", 8, "h100-sxm-8"),
        ("NVIDIA H200", 8, "h200-sxm-8"),
        ("NVIDIA A100-SXM4-80GB", 8, "a100-sxm-8"),
        ("NVIDIA B200", 8, "b200-8"),
        ("NVIDIA GeForce RTX 4090", 1, "workstation-1"),
        ("NVIDIA H100 PCIe", 2, "generic"),
    ],
)
def test_profile_matching(model, count, profile):
    assert select_profile(reading(model, count)).name == profile


def test_named_profile_extends_and_errors(tmp_path):
    profiles = load_profiles()
    p5 = profiles["p5.48xlarge"]
    assert p5.efa_devices == 32 and p5.gpu_count == 8 and p5.nvlinks_per_gpu == 18 and not p5.match_models
    with pytest.raises(ProfileError, match="unknown profile"):
        select_profile(reading("x", 1), "nope", profiles)
    extra = tmp_path / "mine.yaml"
    extra.write_text(
        "profiles:\n  lab-4:\n    extends: a100-sxm-8\n    gpu_count: 4\n    match: {models: [A100]}\n"
    )
    assert (
        select_profile(reading("NVIDIA A100-SXM4-80GB", 4), profiles=load_profiles([extra])).name == "lab-4"
    )
    extra.write_text("profiles:\n  broken:\n    gpu_count: 1\n    colour: red\n")
    with pytest.raises(ProfileError, match="unknown keys"):
        load_profiles([extra])


def test_profile_remembered_after_first_match(sim):
    engine = sim.engine(["gpu_count"], profile=None)
    assert engine.run(("lightweight",)).profile == "h100-sxm-8" and sim.state.profile == "h100-sxm-8"
    sim.inject(gpu=0, settings={"missing": True})
    # 7 GPUs would match no profile; the remembered one still says 8 are expected.
    assert engine.run(("lightweight",)).verdict is Severity.REBOOT


def test_every_check_has_a_cost_class_and_description():
    assert {c.cost for c in REGISTRY.values()} == {"lightweight", "periodic", "intensive"}
    assert all(c.description for c in REGISTRY.values())
