"""Every check on the simulated backend: pass, each failure mode, boundaries."""

import pytest
from gpufleet.health.checks import CheckConfig, select_checks
from gpufleet.health.severity import HealthStatus, Severity


def worst(report, check):
    return max((f.severity for f in report.findings if f.check == check), default=None)


def test_healthy_node_passes_every_check(sim):
    report = sim.run()
    assert report.status is HealthStatus.PASS and report.verdict is Severity.PASS
    assert report.unknown == []
    assert set(report.checks) == {c.id for c in select_checks()}


def test_gpu_missing_is_reboot(sim):
    sim.inject(gpu=5, settings={"missing": True})
    report = sim.run("gpu_count")
    assert worst(report, "gpu_count") is Severity.REBOOT
    assert report.findings[0].evidence == {"seen": 7, "expected": 8, "profile": "h100-sxm-8"}


def test_gpu_count_without_profile_passes(tmp_path):
    from health_sim import SimNode

    spec = tmp_path / "fleet.yaml"
    spec.write_text("nodes:\n  odd:\n    model: Some GPU\n    count: 3\n")
    node = SimNode(tmp_path, spec, node="odd")
    report = node.run("gpu_count")
    assert report.profile == "generic" and report.verdict is Severity.PASS


@pytest.mark.parametrize(
    ("code", "severity"),
    [
        ("GpuIsLost", Severity.REBOOT),
        ("ResetRequired", Severity.RESET),
        ("CorruptedInforom", Severity.ISOLATE),
        ("Timeout", Severity.MONITOR),
    ],
)
def test_nvml_error_on_one_gpu(sim, code, severity):
    sim.inject(gpu=2, settings={"nvml_error": code})
    report = sim.run("nvml_responsive")
    assert report.verdict is severity
    assert report.findings[0].gpu.startswith("2:GPU-")


def test_nvml_unavailable_is_unknown_not_a_fault(sim):
    sim.inject(settings={"nvml_error": "DriverNotLoaded"})
    report = sim.run(cost=("lightweight",))
    assert report.status is HealthStatus.UNKNOWN
    assert report.verdict is Severity.PASS
    assert {u["check"] for u in report.unknown} >= {"backend", "gpu_count", "ecc"}


def test_ecc_uncorrectable_and_sram_threshold(sim):
    sim.inject(gpu=1, settings={"ecc.volatile_uncorrected": 1})
    assert worst(sim.run("ecc"), "ecc") is Severity.RESET
    sim.inject(gpu=1, settings={"ecc.aggregate_uncorrected_sram": 3})
    assert worst(sim.run("ecc"), "ecc") is Severity.RESET  # below the threshold of 4
    sim.inject(gpu=1, settings={"ecc.aggregate_uncorrected_sram": 4})
    assert worst(sim.run("ecc"), "ecc") is Severity.ISOLATE


def test_ecc_corrected_counter_rate_not_total(sim):
    sim.inject(gpu=0, settings={"ecc.volatile_corrected": 5000})
    engine = sim.engine(["ecc"])
    assert engine.run(("lightweight",)).verdict is Severity.PASS  # first sight: a baseline, not news
    assert engine.run(("lightweight",)).verdict is Severity.PASS  # steady
    sim.inject(gpu=0, settings={"ecc.volatile_corrected": 9000})
    assert engine.run(("lightweight",)).verdict is Severity.MONITOR


def test_remapped_rows_pending_and_failure(sim):
    sim.inject(gpu=4, settings={"remapped_rows.pending": True})
    assert worst(sim.run("memory_remap"), "memory_remap") is Severity.RESET
    sim.inject(gpu=4, settings={"remapped_rows.failure": True})
    assert worst(sim.run("memory_remap"), "memory_remap") is Severity.ISOLATE


def test_retired_pages_on_volta(tmp_path):
    from health_sim import SimNode

    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        "nodes:\n  v100:\n    model: Tesla V100-SXM2-32GB\n    count: 1\n    architecture: volta\n"
    )
    node = SimNode(tmp_path, spec, node="v100")
    assert node.run("memory_remap").verdict is Severity.PASS
    node.inject(gpu=0, settings={"retired_pages.pending": True})
    assert node.run("memory_remap").verdict is Severity.RESET
    node.inject(gpu=0, settings={"retired_pages.pending": False, "retired_pages.double_bit": 59})
    assert node.run("memory_remap").verdict is Severity.PASS
    node.inject(gpu=0, settings={"retired_pages.single_bit": 1})
    assert node.run("memory_remap").verdict is Severity.ISOLATE


def test_persistence_mode_off(sim):
    sim.inject(gpu=0, settings={"persistence_mode": False})
    assert sim.run("persistence_mode").verdict is Severity.MONITOR


def test_throttle_benign_reasons_ignored(sim):
    sim.inject(gpu=0, settings={"throttle_reasons": 0x1 | 0x2 | 0x10 | 0x100})
    assert sim.run("clock_throttle").verdict is Severity.PASS
    sim.inject(gpu=0, settings={"throttle_reasons": 0x4})  # SW power cap: a finding unless configured benign
    assert sim.run("clock_throttle").verdict is Severity.MONITOR
    assert sim.run("clock_throttle", config=CheckConfig(sw_power_cap_benign=True)).verdict is Severity.PASS
    sim.inject(gpu=0, settings={"throttle_reasons": 0x40 | 0x1})
    report = sim.run("clock_throttle")
    assert report.verdict is Severity.MONITOR and "hw_thermal_slowdown" in report.findings[0].message


def test_temperature_boundaries(sim):
    sim.inject(gpu=0, settings={"temperature_c": 84})
    assert sim.run("temperature").verdict is Severity.PASS
    sim.inject(gpu=0, settings={"temperature_c": 85})
    assert sim.run("temperature").verdict is Severity.MONITOR
    sim.inject(gpu=0, settings={"temperature_c": 92})
    assert sim.run("temperature").verdict is Severity.ISOLATE


def test_power_over_limit_and_capped_limit(sim):
    sim.inject(gpu=0, settings={"power_w": 700 * 1.05})
    assert sim.run("power").verdict is Severity.PASS  # at the tolerance, not over it
    sim.inject(gpu=0, settings={"power_w": 760})
    assert sim.run("power").verdict is Severity.MONITOR
    sim.inject(gpu=0, settings={"power_w": 100, "power_limit_w": 500})
    assert sim.run("power").verdict is Severity.MONITOR


def test_pcie_idle_downshift_is_pass(sim):
    # The simulated idle GPU sits at Gen1 of Gen5, as real idle GPUs do.
    gpu = sim.backend.read().gpus[0]
    assert gpu.pcie.gen_current < gpu.pcie.gen_max and gpu.utilization_gpu_pct == 0
    assert sim.run("pcie_link").verdict is Severity.PASS


def test_pcie_downshift_under_load_is_a_finding(sim):
    sim.inject(gpu=6, settings={"utilization_gpu_pct": 95})
    assert sim.run("pcie_link").verdict is Severity.PASS  # busy, at full speed
    sim.inject(gpu=6, settings={"pcie.gen_current": 3})
    assert sim.run("pcie_link").verdict is Severity.MONITOR
    sim.inject(gpu=6, settings={"pcie.gen_current": None, "pcie.width_current": 8})
    assert sim.run("pcie_link").verdict is Severity.MONITOR


def test_pcie_trained_below_profile(sim):
    sim.inject(gpu=0, settings={"pcie.gen_max": 4})
    assert sim.run("pcie_link").verdict is Severity.MONITOR


def test_pcie_replay_rate(sim):
    engine = sim.engine(["pcie_link"])
    sim.inject(gpu=0, settings={"pcie.replay_counter": 10})
    assert engine.run(("lightweight",)).verdict is Severity.PASS
    sim.inject(gpu=0, settings={"pcie.replay_counter": 100000})
    assert engine.run(("lightweight",)).verdict is Severity.MONITOR


def test_nvlink_down_is_reset(sim):
    sim.inject(gpu=3, settings={"nvlink_down": [0, 5]})
    report = sim.run("nvlink")
    assert report.verdict is Severity.RESET
    assert report.findings[0].evidence["down_links"] == [0, 5]


def test_nvlink_steady_crc_count_is_pass(sim):
    sim.inject(gpu=3, settings={"nvlink_counters.crc_flit_errors": 12345})
    engine = sim.engine(["nvlink"])
    assert engine.run(("lightweight",)).verdict is Severity.PASS
    assert engine.run(("lightweight",)).verdict is Severity.PASS


def test_nvlink_rising_crc_count_is_a_finding(sim):
    clock = {"now": 1000.0}
    sim.backend.clock = lambda: clock["now"]
    sim.inject(gpu=3, settings={"nvlink_rising.crc_flit_errors": 60}, now=1000.0)
    engine = sim.engine(["nvlink"], clock=lambda: clock["now"])
    assert engine.run(("lightweight",)).verdict is Severity.PASS  # baseline
    clock["now"] = 1060.0
    report = engine.run(("lightweight",))
    assert report.verdict is Severity.MONITOR
    assert report.findings[0].evidence["increase"]["crc_flit_errors"] == 18 * 60
    # A counter racing at >= 600/min on a link is RESET.
    sim.inject(gpu=3, settings={"nvlink_rising.crc_flit_errors": 6000})
    clock["now"] = 1120.0
    engine.run(("lightweight",))
    clock["now"] = 1180.0
    assert engine.run(("lightweight",)).verdict is Severity.RESET


def test_fabric_manager(sim):
    assert sim.run("fabric_manager").verdict is Severity.PASS
    sim.inject(settings={"fabric_manager_active": False})
    assert sim.run("fabric_manager").verdict is Severity.RESET


def test_rdma_devices(sim):
    assert (
        sim.run("rdma_devices", profile="p5.48xlarge").verdict is Severity.REBOOT
    )  # simulated node has 0 EFA
    sim.inject(settings={"efa_devices": 32})
    assert sim.run("rdma_devices", profile="p5.48xlarge").verdict is Severity.PASS
    sim.inject(settings={"efa_devices": 31})
    assert sim.run("rdma_devices", profile="p5.48xlarge").verdict is Severity.REBOOT


def test_dcgm_absent_is_skipped(sim):
    assert sim.run("dcgm_diag").verdict is Severity.PASS


@pytest.mark.parametrize(
    ("fixture", "verdict"),
    [
        ("dcgm3_diag_r2_fail.json", Severity.ISOLATE),
        ("dcgm4_diag_r2_fail.json", Severity.ISOLATE),
        ("dcgm4_diag_r1_pass.json", Severity.PASS),
    ],
)
def test_dcgm_output_becomes_findings(sim, fixtures_dir, fixture, verdict):
    sim.inject(settings={"dcgm_output": str(fixtures_dir / fixture)})
    report = sim.run("dcgm_diag")
    assert report.verdict is verdict


def test_lightweight_cycle_runs_only_lightweight_checks(sim):
    report = sim.engine().run(("lightweight",))
    assert "dcgm_diag" not in report.checks and "fabric_manager" not in report.checks
    assert "xid" in report.checks


def test_keeper_in_engine_keeps_reset_after_fault_clears(sim):
    engine = sim.engine(["memory_remap"])
    sim.inject(gpu=4, settings={"remapped_rows.pending": True})
    assert engine.run(("lightweight",)).verdict is Severity.RESET
    sim.inject(clear=True)
    assert engine.run(("lightweight",)).verdict is Severity.RESET  # within the window


def test_unknown_check_id_rejected(sim):
    with pytest.raises(ValueError, match="unknown checks"):
        sim.engine(["nope"])


def test_reboot_releases_held_findings(sim):
    engine = sim.engine(["memory_remap"])
    sim.inject(gpu=4, settings={"remapped_rows.pending": True})
    assert engine.run(("lightweight",)).verdict is Severity.RESET
    sim.inject(reboot=True)  # new boot id, faults cleared
    assert engine.run(("lightweight",)).verdict is Severity.PASS
    assert sim.state.boot_id == "sim-boot-2"
