"""The health agent's per-GPU series: dcgm-exporter's labels, values from the reading, bounded by the GPUs."""

from __future__ import annotations

import pytest
from gpufleet.gpu.simulated import inject
from gpufleet.health.config import config_from_dict
from gpufleet.health.daemon import XID, HealthAgent
from gpufleet.metrics import GPU_LABELS
from prometheus_client.parser import text_string_to_metric_families

NODE = "sim-node-0"


@pytest.fixture
def agent_and_faults(tmp_path):
    faults = tmp_path / "faults.json"

    def make(taint_severity: str = "RESET") -> HealthAgent:
        data = {
            "interval": 60,
            "state_file": str(tmp_path / "health.json"),
            "backend": {"type": "simulated", "node": NODE, "faults": str(faults)},
            "kubernetes": {"enabled": "false", "taint_severity": taint_severity},
            "http": {"address": "127.0.0.1", "port": 0},
        }
        return HealthAgent(config_from_dict(data, source="test"))

    return make, faults


def samples(agent: HealthAgent, name: str) -> list:
    text = agent.metrics.render().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def by_gpu(agent: HealthAgent, name: str, **labels) -> dict[str, float]:
    return {
        s.labels["gpu"]: s.value
        for s in samples(agent, name)
        if all(s.labels.get(k) == v for k, v in labels.items())
    }


def test_per_gpu_series_carry_dcgm_exporter_labels(agent_and_faults):
    make, _ = agent_and_faults
    agent = make()
    agent.cycle()
    temps = samples(agent, "gpufleet_health_gpu_temperature_celsius")
    assert len(temps) == 8
    gpu3 = next(s for s in temps if s.labels["gpu"] == "3")
    assert set(GPU_LABELS) <= set(gpu3.labels)
    assert gpu3.labels["device"] == "nvidia3"  # dcgm-exporter's spelling, not "3"
    assert gpu3.labels["UUID"].startswith("GPU-")
    assert gpu3.labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert gpu3.labels["Hostname"] == NODE
    # Every per-GPU series of one GPU names it the same way, so they join with each other and dcgm.
    uuids = {
        s.labels["UUID"] for s in samples(agent, "gpufleet_health_gpu_power_watts") if s.labels["gpu"] == "3"
    }
    assert uuids == {gpu3.labels["UUID"]}


def test_readings_reach_their_series(agent_and_faults):
    make, faults = agent_and_faults
    inject(faults, NODE, gpu=2, settings={"temperature_c": 91, "power_w": 650.5})
    inject(faults, NODE, gpu=5, settings={"ecc.aggregate_uncorrected": 3, "ecc.volatile_corrected": 12})
    inject(faults, NODE, gpu=6, settings={"remapped_rows": {"uncorrectable": 2, "pending": True}})
    inject(faults, NODE, gpu=1, settings={"nvlink_counters": {"crc_flit_errors": 5}, "nvlink_down": [0, 1]})
    inject(faults, NODE, gpu=4, settings={"pcie.replay_counter": 40, "pcie.width_current": 8})
    agent = make()
    agent.cycle()
    assert by_gpu(agent, "gpufleet_health_gpu_temperature_celsius")["2"] == 91
    assert by_gpu(agent, "gpufleet_health_gpu_power_watts")["2"] == 650.5
    ecc = "gpufleet_health_gpu_ecc_errors_total"
    assert by_gpu(agent, ecc, error="uncorrected", counter="aggregate")["5"] == 3
    assert by_gpu(agent, ecc, error="corrected", counter="volatile")["5"] == 12
    assert by_gpu(agent, ecc, error="uncorrected", counter="aggregate")["0"] == 0
    assert by_gpu(agent, "gpufleet_health_gpu_remapped_rows_total", cause="uncorrectable")["6"] == 2
    assert by_gpu(agent, "gpufleet_health_gpu_row_remap_pending") == {
        str(i): (1 if i == 6 else 0) for i in range(8)
    }
    # 18 links on an H100, each counting 5: the series is the GPU's sum.
    assert by_gpu(agent, "gpufleet_health_gpu_nvlink_errors_total", counter="crc_flit")["1"] == 18 * 5
    assert by_gpu(agent, "gpufleet_health_gpu_nvlinks_active")["1"] == 16
    assert by_gpu(agent, "gpufleet_health_gpu_pcie_replays_total")["4"] == 40
    assert by_gpu(agent, "gpufleet_health_gpu_pcie_link_width_lanes")["4"] == 8
    severity = by_gpu(agent, "gpufleet_health_gpu_severity")
    assert severity["6"] >= 2 and severity["0"] == 0  # the pending remap is GPU 6's finding, not GPU 0's


def test_xid_counts_per_gpu_and_verdict_metrics(agent_and_faults):
    make, faults = agent_and_faults
    agent = make(taint_severity="REBOOT")
    agent.cycle()
    assert samples(agent, "gpufleet_health_fence_required")[0].value == 0
    inject(faults, NODE, gpu=3, xid=79, message="GPU has fallen off the bus.")
    inject(faults, NODE, gpu=3, xid=79, message="GPU has fallen off the bus.")
    agent.cycle(XID, agent.backend.wait_xid_events(2.0))
    xids = samples(agent, "gpufleet_health_gpu_xid_events_total")
    assert [(s.labels["gpu"], s.labels["device"], s.labels["xid"], s.value) for s in xids] == [
        ("3", "nvidia3", "79", 2.0)
    ]
    assert xids[0].labels["UUID"] == by_uuid(agent)["3"]
    assert samples(agent, "gpufleet_health_xid_events_total")[0].value == 2
    assert by_gpu(agent, "gpufleet_health_gpu_severity")["3"] >= 3
    # Xid 79 is REBOOT or worse: at the configured fence level.
    assert samples(agent, "gpufleet_health_fence_required")[0].value == 1


def by_uuid(agent) -> dict[str, str]:
    return {
        s.labels["gpu"]: s.labels["UUID"] for s in samples(agent, "gpufleet_health_gpu_temperature_celsius")
    }


def test_fence_required_stays_off_below_the_fence_level(agent_and_faults):
    make, faults = agent_and_faults
    agent = make(taint_severity="ISOLATE")
    inject(faults, NODE, gpu=3, xid=79)
    agent.cycle()
    agent.cycle(XID, agent.backend.wait_xid_events(2.0))
    assert samples(agent, "gpufleet_health_node_severity")[0].value >= 3
    assert samples(agent, "gpufleet_health_fence_required")[0].value == 0


def test_a_gpu_that_falls_off_the_bus_loses_its_series(agent_and_faults):
    make, faults = agent_and_faults
    agent = make()
    agent.cycle()
    assert "7" in by_gpu(agent, "gpufleet_health_gpu_temperature_celsius")
    inject(faults, NODE, gpu=7, settings={"missing": True})
    inject(faults, NODE, gpu=5, settings={"nvml_error": "GpuIsLost"})
    agent.cycle()
    temps = by_gpu(agent, "gpufleet_health_gpu_temperature_celsius")
    assert set(temps) == {"0", "1", "2", "3", "4", "6"}
    errors = samples(agent, "gpufleet_health_gpu_read_error")
    assert [(s.labels["gpu"], s.labels["device"], s.labels["code"]) for s in errors] == [
        ("5", "nvidia5", "GpuIsLost")
    ]
