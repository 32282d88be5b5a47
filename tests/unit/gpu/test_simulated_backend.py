import json
import time

import pytest
from gpufleet.gpu import open_backend
from gpufleet.gpu.base import BackendUnavailable
from gpufleet.gpu.simulated import FaultFile, FleetSpecError, SimulatedBackend, inject, read_faults


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "defaults:\n  efa_devices: 4\n"
        "nodes:\n"
        "  b200-0: {profile: b200-8}\n"
        "  mixed: {model: NVIDIA A100-SXM4-80GB, count: 8, nvlinks_per_gpu: 2}\n"
        "  small: {model: Tesla T4, count: 2, architecture: turing, memory_mib: 15360}\n"
    )
    return path


def test_fleet_spec_nodes(spec, tmp_path):
    b200 = SimulatedBackend("b200-0", spec, tmp_path / "f.json").read()
    assert b200.device_count == 8 and b200.gpus[0].model == "NVIDIA B200"
    assert len(b200.gpus[0].nvlinks) == 18 and b200.gpus[0].architecture == "blackwell"
    mixed = SimulatedBackend("mixed", spec, tmp_path / "f.json")
    assert mixed.spec["profile"] == "a100-sxm-8" and len(mixed.read().gpus[0].nvlinks) == 2
    small = SimulatedBackend("small", spec, tmp_path / "f.json").read()
    assert small.device_count == 2 and small.gpus[0].memory_total_mib == 15360
    assert small.gpus[0].remapped_rows is None and small.gpus[0].retired_pages is not None
    assert SimulatedBackend("small", spec, tmp_path / "f.json").host_probe().efa_device_count() == 4


def test_unknown_node_and_bad_spec(spec, tmp_path):
    with pytest.raises(FleetSpecError):
        SimulatedBackend("nope", spec)
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: {}\n")
    with pytest.raises(FleetSpecError):
        SimulatedBackend(None, bad)


def test_uuids_stable_and_distinct(tmp_path):
    a = open_backend("simulated", faults=tmp_path / "f.json").read()
    b = open_backend("simulated", faults=tmp_path / "f.json").read()
    assert [g.uuid for g in a.gpus] == [g.uuid for g in b.gpus]
    assert len({g.uuid for g in a.gpus}) == 8


def test_faults_reloaded_when_file_changes(tmp_path):
    faults = tmp_path / "f.json"
    backend = SimulatedBackend(faults=faults)
    assert backend.read().gpus[3].temperature_c < 80
    inject(faults, backend.node, gpu=3, settings={"temperature_c": 97, "ecc.volatile_uncorrected": 2})
    gpu = backend.read().gpus[3]
    assert gpu.temperature_c == 97 and gpu.ecc.volatile_uncorrected == 2
    inject(faults, backend.node, gpu=3, settings={"missing": True})
    reading = backend.read()
    assert reading.device_count == 7 and 3 not in [g.index for g in reading.gpus]
    inject(faults, backend.node, settings={"nvml_error": "DriverNotLoaded"})
    with pytest.raises(BackendUnavailable):
        backend.read()
    inject(faults, backend.node, clear=True)
    assert backend.read().device_count == 8


def test_gpu_nvml_error(tmp_path):
    faults = tmp_path / "f.json"
    inject(faults, "sim-node-0", gpu=1, settings={"nvml_error": "GpuIsLost"})
    reading = SimulatedBackend(faults=faults).read()
    assert [(e.index, e.code) for e in reading.errors] == [(1, "GpuIsLost")]


def test_xid_events_only_after_start_and_once(tmp_path):
    faults = tmp_path / "f.json"
    inject(faults, "sim-node-0", gpu=0, xid=13)
    backend = SimulatedBackend(faults=faults)
    assert backend.wait_xid_events(0) == []  # injected before the backend started, like NVML
    inject(faults, "sim-node-0", gpu=5, xid=48, message="DBE")
    events = backend.wait_xid_events(0.5)
    assert [(e.xid, e.gpu_index, e.message) for e in events] == [(48, 5, "DBE")]
    assert backend.wait_xid_events(0) == []


def test_wait_returns_after_timeout_without_events(tmp_path):
    backend = SimulatedBackend(faults=tmp_path / "f.json")
    started = time.monotonic()
    assert backend.wait_xid_events(0.1) == []
    assert 0.09 <= time.monotonic() - started < 1.0


def test_simulated_kernel_log_cursor_and_reboot(tmp_path):
    faults = tmp_path / "f.json"
    backend = SimulatedBackend(faults=faults)
    log = backend.host_probe().kernel_log()
    inject(faults, backend.node, gpu=2, xid=79, message="GPU has fallen off the bus.")
    lines, cursor = log.read_after(None)
    assert cursor == "1" and "NVRM: Xid (PCI:0000:38:00): 79" in lines[0].text
    assert log.read_after(cursor) == ([], "1")
    first_boot = log.boot_id()
    inject(faults, backend.node, reboot=True)
    assert log.boot_id() != first_boot and log.read_after(None)[0] == []


def test_inject_yaml_fault_file_and_removal(tmp_path):
    faults = tmp_path / "f.yaml"
    inject(faults, "n", gpu=0, settings={"pcie.gen_current": 3})
    assert read_faults(faults)["nodes"]["n"]["gpus"]["0"]["pcie"] == {"gen_current": 3}
    inject(faults, "n", gpu=0, settings={"pcie.gen_current": None})
    assert read_faults(faults)["nodes"]["n"]["gpus"]["0"]["pcie"] == {}


def test_fault_file_keeps_last_good_content_on_bad_json(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"nodes": {"n": {"nvml_error": "X"}}}))
    fault_file = FaultFile(path)
    assert fault_file.refresh() and fault_file.node("n") == {"nvml_error": "X"}
    path.write_text("{not json")
    fault_file.refresh()
    assert fault_file.node("n") == {"nvml_error": "X"}


def test_minor_numbers_are_the_indices_unless_set(tmp_path):
    faults = tmp_path / "f.json"
    backend = SimulatedBackend(faults=faults)
    assert [g.minor_number for g in backend.read().gpus] == list(range(8))
    inject(faults, backend.node, gpu=2, settings={"minor_number": 9})
    assert [g.minor_number for g in backend.read().gpus] == [0, 1, 9, 3, 4, 5, 6, 7]
