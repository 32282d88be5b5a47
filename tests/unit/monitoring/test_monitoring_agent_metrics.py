"""The kernel agent's per-kernel series: cgroup/procfs and gpufleet.gpu usage, bounded by live kernels."""

from __future__ import annotations

import os

from gpufleet.agent.kernel_usage import CgroupReader, KernelUsage, KernelUsageReader, read_process
from gpufleet.agent.metrics import AgentMetrics
from gpufleet.agent.registry import KernelRecord
from gpufleet.gpu.simulated import SimulatedBackend, inject
from prometheus_client.parser import text_string_to_metric_families


def fake_record(i: int, gpus: tuple[int, ...] = ()) -> KernelRecord:
    kid = f"k{i:05d}"
    return KernelRecord(
        kernel_id=kid,
        session_id=f"s-{kid}",
        status="running",
        allocation={"kernel_id": kid, "cpu": 2.0, "mem": 1 << 30, "gpus": list(gpus)},
        ports=[],
    )


def samples(metrics: AgentMetrics, name: str) -> list:
    text = metrics.render().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def test_a_thousand_kernels_leave_no_series_behind():
    metrics = AgentMetrics()
    idle = metrics.series_count()
    peak = 0
    live: list[KernelRecord] = []
    for i in range(1000):
        record = fake_record(i)
        metrics.observe_kernel(
            "agent-1", record, KernelUsage(cpu_seconds=i * 0.5, memory_bytes=1 << 20), now=i
        )
        live.append(record)
        if len(live) > 20:  # at most ~20 kernels at a time, like a busy node
            metrics.forget_kernel(live.pop(0).kernel_id)
        peak = max(peak, metrics.series_count())
    assert peak > idle  # the kernels did show
    per_kernel = (peak - idle) / 21
    assert per_kernel < 10  # a handful of series per live kernel, not per kernel ever seen
    for record in live:
        metrics.forget_kernel(record.kernel_id)
    assert metrics.series_count() == idle
    assert samples(metrics, "backendai_container_utilization") == []


def test_keep_only_drops_kernels_that_ended_without_a_goodbye():
    metrics = AgentMetrics()
    for i in range(50):
        metrics.observe_kernel("agent-1", fake_record(i), KernelUsage(memory_bytes=5))
    metrics.keep_only(["k00003", "k00007"])
    kernels = {s.labels["kernel_id"] for s in samples(metrics, "backendai_container_utilization")}
    assert kernels == {"k00003", "k00007"}


def test_container_utilization_uses_backendai_names_and_values():
    metrics = AgentMetrics()
    record = fake_record(1)
    metrics.observe_kernel(
        "agent-1", record, KernelUsage(cpu_seconds=10.0, memory_bytes=256 << 20), now=100.0
    )
    metrics.observe_kernel(
        "agent-1", record, KernelUsage(cpu_seconds=13.0, memory_bytes=512 << 20), now=102.0
    )
    values = {
        (s.labels["container_metric_name"], s.labels["value_type"]): s.value
        for s in samples(metrics, "backendai_container_utilization")
    }
    assert values[("cpu_util", "current")] == 150.0  # 3 CPU seconds in 2 s = 1.5 cores
    assert values[("cpu_util", "capacity")] == 200.0  # 2 cores allocated
    assert values[("cpu_util", "pct")] == 75.0
    assert values[("cpu_used", "current")] == 13000.0  # Backend.AI counts milliseconds
    assert values[("mem", "current")] == 512 << 20
    assert values[("mem", "capacity")] == 1 << 30
    assert values[("mem", "pct")] == 50.0
    one = samples(metrics, "backendai_container_utilization")[0].labels
    assert (one["agent_id"], one["kernel_id"], one["session_id"]) == ("agent-1", "k00001", "s-k00001")


class FakeAgentParts:
    """Just what observe_agent reads, so the GPU path runs without a kernel backend."""

    def __init__(self, records, gpus):
        from types import SimpleNamespace

        from gpufleet.agent.resources import GpuDevice, SlotCapacity

        self.id = "agent-1"
        self.capacity = SlotCapacity(cpu=16, mem=64 << 30, gpus=[GpuDevice(i, "sim") for i in range(gpus)])
        used = {"cpu": 0, "mem": 0, "cuda.device": sum(len(r.allocation["gpus"]) for r in records)}
        self.allocator = SimpleNamespace(used=lambda: used)
        self.registry = Registry(records)
        self.ports = SimpleNamespace(free_count=lambda: 10)
        self.events = SimpleNamespace(buffer=[])
        self.config = SimpleNamespace(resource=SimpleNamespace(gpus=8))
        self.last_heartbeat = None


class Registry(list):
    def all(self):
        return list(self)


def test_gpu_usage_comes_through_gpufleet_gpu(tmp_path):
    faults = tmp_path / "faults.json"
    inject(faults, "sim-node-0", gpu=2, settings={"utilization_gpu_pct": 80})
    inject(faults, "sim-node-0", gpu=3, settings={"utilization_gpu_pct": 40})
    metrics = AgentMetrics(usage_reader=KernelUsageReader(CgroupReader(tmp_path, cgroups={})))
    metrics.gpu_backend = SimulatedBackend(node="sim-node-0", faults=faults)
    agent = FakeAgentParts([fake_record(1, gpus=(2, 3))], gpus=8)
    metrics.observe_agent(agent)
    values = {
        (s.labels["container_metric_name"], s.labels["value_type"]): s.value
        for s in samples(metrics, "backendai_container_utilization")
    }
    assert values[("cuda_util", "current")] == 60.0
    total = 81559 << 20
    assert values[("cuda_mem", "capacity")] == 2 * total
    assert values[("cuda_mem", "current")] == int(81559 * 0.8) * (1 << 20) + int(81559 * 0.4) * (1 << 20)
    device = {
        (s.labels["device_id"], s.labels["device_metric_name"], s.labels["value_type"]): s.value
        for s in samples(metrics, "backendai_device_utilization")
    }
    assert device[("2", "cuda_util", "current")] == 80 and device[("0", "cuda_util", "current")] == 0
    allocated = {s.labels["gpu"]: s for s in samples(metrics, "gpufleet_agent_gpu_allocated")}
    assert allocated["2"].value == 1 and allocated["2"].labels["kernel_id"] == "k00001"
    assert allocated["2"].labels["device"] == "nvidia2" and allocated["2"].labels["UUID"].startswith("GPU-")
    assert allocated["2"].labels["modelName"] == "NVIDIA H100 80GB HBM3"  # from NVML, not the slot list
    assert allocated["0"].value == 0 and allocated["0"].labels["kernel_id"] == ""
    assert [s.value for s in samples(metrics, "gpufleet_agent_kernel_gpus")] == [2]
    # The kernel ends: its series go, the GPU's allocation series stays (one per GPU) with no holder.
    agent.registry = Registry([])
    metrics.observe_agent(agent)
    assert samples(metrics, "backendai_container_utilization") == []
    assert samples(metrics, "gpufleet_agent_kernel_gpus") == []
    assert {s.labels["kernel_id"] for s in samples(metrics, "gpufleet_agent_gpu_allocated")} == {""}
    assert len(samples(metrics, "gpufleet_agent_gpu_allocated")) == 8


def test_cgroup_v1_and_v2_units_are_read_next_to_the_agents_unit(tmp_path):
    unit = "gpufleet-kernel-abc.service"
    v1 = tmp_path / "v1"
    for hierarchy, name, value in (
        ("cpuacct", "cpuacct.usage", "2500000000"),
        ("memory", "memory.usage_in_bytes", "4096"),
    ):
        path = v1 / hierarchy / "docker/c1/system.slice" / unit
        path.mkdir(parents=True)
        (path / name).write_text(value + "\n")
    reader = CgroupReader(v1, cgroups={"name=systemd": "/docker/c1/system.slice/gpufleet-agent.service"})
    assert reader.read_unit(unit) == KernelUsage(cpu_seconds=2.5, memory_bytes=4096)
    v2 = tmp_path / "v2"
    (v2 / "system.slice" / unit).mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    (v2 / "system.slice" / unit / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    (v2 / "system.slice" / unit / "memory.current").write_text("8192\n")
    reader = CgroupReader(v2, cgroups={"": "/system.slice/gpufleet-agent.service"})
    assert reader.read_unit(unit) == KernelUsage(cpu_seconds=1.5, memory_bytes=8192)
    # A unit that is gone (or a cgroup without the file) is "no data", not zero.
    assert reader.read_unit("gpufleet-kernel-gone.service") == KernelUsage()


def test_subprocess_kernels_are_read_from_procfs():
    usage = read_process(os.getpid())
    assert usage.cpu_seconds is not None and usage.cpu_seconds > 0
    assert usage.memory_bytes is not None and usage.memory_bytes > 1 << 20
    record = fake_record(1)
    record.backend_data = {"pid": os.getpid()}
    assert KernelUsageReader(CgroupReader(cgroups={})).read(record).memory_bytes > 1 << 20
    record.backend = "kubernetes"  # the pod may run elsewhere: no usage, only allocation
    assert KernelUsageReader(CgroupReader(cgroups={})).read(record) == KernelUsage()
