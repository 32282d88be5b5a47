import pytest
from gpufleet.agent.config import ResourceConfig
from gpufleet.agent.resources import (
    GpuDevice,
    PortPool,
    ResourceAllocator,
    ResourceError,
    SlotCapacity,
    detect_gpus,
)

GIB = 1 << 30


def allocator(cpu=8, mem=32 * GIB, gpus=4):
    return ResourceAllocator(SlotCapacity(cpu=cpu, mem=mem, gpus=[GpuDevice(i) for i in range(gpus)]))


def test_gpu_indices_are_distinct_and_reused_after_release():
    alloc = allocator()
    a = alloc.allocate("a", 1, GIB, 2)
    b = alloc.allocate("b", 1, GIB, 1)
    assert a.gpus == (0, 1) and b.gpus == (2,)
    alloc.release("a")
    c = alloc.allocate("c", 1, GIB, 3)
    assert sorted(c.gpus) == [0, 1, 3]
    assert alloc.used() == {"cpu": 2.0, "mem": 2 * GIB, "cuda.device": 4}


@pytest.mark.parametrize(("request_", "slot"), [
    ((9, GIB, 0), "cpu"), ((1, 33 * GIB, 0), "mem"), ((1, GIB, 5), "cuda.device"),
])
def test_overcommit_refused_naming_the_slot(request_, slot):
    alloc = allocator()
    with pytest.raises(ResourceError, match=rf"over-commit refused\): {slot}: requested"):
        alloc.allocate("k", *request_)
    assert alloc.used() == {"cpu": 0, "mem": 0, "cuda.device": 0}


def test_overcommit_counts_existing_allocations():
    alloc = allocator(gpus=2)
    alloc.allocate("a", 6, GIB, 2)
    with pytest.raises(ResourceError, match="cpu: requested 3"):
        alloc.allocate("b", 3, GIB, 0)
    with pytest.raises(ResourceError, match="cuda.device: requested 1, free 0"):
        alloc.allocate("b", 1, GIB, 1)


def test_invalid_and_duplicate_requests():
    alloc = allocator()
    with pytest.raises(ResourceError, match="invalid"):
        alloc.allocate("a", 0, GIB, 0)
    alloc.allocate("a", 1, GIB, 0)
    with pytest.raises(ResourceError, match="already holds"):
        alloc.allocate("a", 1, GIB, 0)
    assert alloc.release("a") is not None
    assert alloc.release("a") is None  # idempotent


def test_capacity_subtracts_reserved():
    cap = SlotCapacity.from_host(ResourceConfig(reserved_cpu=0.5, reserved_mem=GIB, gpus=3))
    assert len(cap.gpus) == 3
    assert cap.cpu > 0 and cap.mem > 0
    assert cap.slots()["cuda.device"] == 3


def test_detect_gpus_configured_count_and_auto_without_driver():
    assert [g.index for g in detect_gpus(2)] == [0, 1]
    assert detect_gpus("auto") == []  # no NVML on this machine: nothing offered, no crash


def test_port_pool_take_release_exhaust():
    pool = PortPool(30000, 30004)
    assert pool.take("k1", 2) == [30000, 30001]
    assert pool.take("k2", 3) == [30002, 30003, 30004]
    with pytest.raises(ResourceError, match="exhausted"):
        pool.take("k3")
    assert pool.release([30000], owner="k2") == []  # not k2's port
    assert pool.release_owner("k1") == [30000, 30001]
    assert pool.free_count() == 2
    pool.claim("k4", [30000, 40000])  # out-of-range ports are ignored
    assert pool.owners()[30000] == "k4" and 40000 not in pool.owners()


# --- GPU discovery through gpufleet.gpu, and the health agent's verdict ---------------------

def test_gpus_discovered_through_the_simulated_backend_skip_unreadable_ones(tmp_path, monkeypatch):
    from gpufleet.gpu import simulated

    faults = tmp_path / "faults.json"
    simulated.write_faults(faults, {"nodes": {"sim-node-0": {"gpus": {"2": {"missing": True},
                                                                      "5": {"nvml_error": "GpuIsLost"}}}}})
    monkeypatch.setattr(simulated, "DEFAULT_FAULTS_PATH", faults)
    gpus = detect_gpus("simulated")
    assert [g.index for g in gpus] == [0, 1, 3, 4, 6, 7]  # fell off the bus / unreadable: not offered
    assert all(g.uuid.startswith("GPU-") and g.memory > 0 and "H100" in g.model for g in gpus)


def test_a_gpu_the_health_agent_finds_bad_is_not_offered(tmp_path, monkeypatch):
    """The real health engine on the simulated backend writes its real state file; the
    allocator reads only that file (no health/ code) and holds GPU 3 back."""
    from gpufleet.agent.resources import unhealthy_gpu_uuids
    from gpufleet.gpu import simulated
    from gpufleet.health.engine import HealthEngine
    from gpufleet.health.sinks.state_file import write_state

    faults = tmp_path / "faults.json"
    simulated.write_faults(faults, {"nodes": {"sim-node-0": {"gpus": {"3": {
        "remapped_rows": {"failure": True, "uncorrectable": 9}}}}}})
    monkeypatch.setattr(simulated, "DEFAULT_FAULTS_PATH", faults)
    state = tmp_path / "health.json"
    report = HealthEngine(simulated.SimulatedBackend(faults=faults)).run()
    write_state(state, {"report": report.to_dict()})

    capacity = SlotCapacity(cpu=64, mem=64 * GIB, gpus=detect_gpus("simulated"))
    alloc = ResourceAllocator(capacity, unhealthy=lambda: unhealthy_gpu_uuids(state))
    bad_uuid = next(g.uuid for g in capacity.gpus if g.index == 3)
    assert unhealthy_gpu_uuids(state) == {bad_uuid}
    assert alloc.free_gpu_indices() == [0, 1, 2, 4, 5, 6, 7]
    with pytest.raises(ResourceError, match=r"cuda.device: requested 8, free 7 \(1 held back: marked bad"):
        alloc.allocate("k1", 1, GIB, 8)
    assert 3 not in alloc.allocate("k1", 1, GIB, 7).gpus
    # The health agent clears it (a PASS report): offered again, no agent restart.
    alloc.release("k1")
    simulated.write_faults(faults, {"nodes": {"sim-node-0": {}}})
    write_state(state, {"report": HealthEngine(simulated.SimulatedBackend(faults=faults)).run().to_dict()})
    assert alloc.allocate("k2", 1, GIB, 8).gpus == tuple(range(8))


@pytest.mark.parametrize("content", ["", "{broken", '{"schema": "other"}', '{"schema": '
                                     '"gpufleet.io/health-agent-state/v1", "report": {"findings": "x"}}'])
def test_an_unreadable_health_state_holds_nothing_back(tmp_path, content):
    from gpufleet.agent.resources import unhealthy_gpu_uuids

    state = tmp_path / "health.json"
    state.write_text(content)
    assert unhealthy_gpu_uuids(state) == set()
    assert unhealthy_gpu_uuids(tmp_path / "missing.json") == set()


def test_allocations_carry_each_gpus_minor_number(tmp_path, monkeypatch):
    """/dev/nvidiaN is the GPU's minor number, which NVML may report apart from its index."""
    from gpufleet.agent.resources import Allocation
    from gpufleet.gpu import simulated

    faults = tmp_path / "faults.json"
    simulated.write_faults(faults, {"nodes": {"sim-node-0": {"gpus": {"0": {"minor_number": 5},
                                                                      "5": {"minor_number": 0}}}}})
    monkeypatch.setattr(simulated, "DEFAULT_FAULTS_PATH", faults)
    capacity = SlotCapacity(cpu=64, mem=64 * GIB, gpus=detect_gpus("simulated"))
    assert [g.minor for g in capacity.gpus] == [5, 1, 2, 3, 4, 0, 6, 7]
    allocation = ResourceAllocator(capacity).allocate("k1", 1, GIB, 2)
    assert (allocation.gpus, allocation.gpu_minors) == ((0, 1), (5, 1))
    assert Allocation.from_dict(allocation.to_dict()) == allocation
    # A registry entry written before minors were kept: minor = index, as then assumed.
    old = Allocation.from_dict({"kernel_id": "k0", "cpu": 1, "mem": GIB, "gpus": [2, 3]})
    assert old.gpu_minors == (2, 3)
    # Configured GPUs (no NVML): minor = index.
    configured = ResourceAllocator(SlotCapacity(cpu=4, mem=GIB, gpus=detect_gpus(2)))
    assert configured.allocate("k2", 1, 1, 2).gpu_minors == (0, 1)
