"""Prometheus metrics of one agent (a registry per agent, so tests can run several).

Every metric is declared below as a :class:`~gpufleet.metrics.MetricSpec` (docs/metrics.md is
generated from these tuples). The seed's names (Backend.AI's agent: ``backendai_rpc_*``,
``backendai_container_utilization``, ``backendai_device_utilization``) are kept with the seed's
labels; everything else is ``gpufleet_agent_*``.

Per-kernel and per-GPU series are built on every scrape from the kernels the agent holds *now*:
a kernel that ends takes its series with it, so the series count follows the live kernels, not
how many ever ran.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest

from gpufleet.agent.kernel_usage import KernelUsage, KernelUsageReader
from gpufleet.gpu.base import BackendUnavailable, GpuBackend, NodeReading
from gpufleet.metrics import GPU_LABELS, MetricSpec, gpu_label_values, gpu_labels

if TYPE_CHECKING:
    from gpufleet.agent.core import Agent
    from gpufleet.agent.registry import KernelRecord

log = logging.getLogger(__name__)

MIB = 1 << 20
GPU_READ_INTERVAL = 5.0  # seconds a GPU reading is reused across scrapes and heartbeats

# ---- the seed's names (Backend.AI's agent)
RPC_REQUESTS = MetricSpec("backendai_rpc_requests", "counter", "RPC requests handled", ("method",))
RPC_FAILURES = MetricSpec(
    "backendai_rpc_failure_requests", "counter", "RPC requests that failed", ("method", "status")
)
RPC_DURATION = MetricSpec(
    "backendai_rpc_request_duration_seconds",
    "histogram",
    "RPC request latency",
    ("method",),
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONTAINER_UTILIZATION = MetricSpec(
    "backendai_container_utilization",
    "gauge",
    "Per-kernel usage, Backend.AI's container metrics: container_metric_name = cpu_util (percent of one "
    "core), cpu_used (CPU milliseconds), mem (bytes), cuda_mem (bytes on its GPUs), cuda_util (percent, "
    "mean of its GPUs); value_type = current, capacity (its allocation), pct (current / capacity x 100)",
    ("container_metric_name", "agent_id", "kernel_id", "session_id", "value_type"),
)
DEVICE_UTILIZATION = MetricSpec(
    "backendai_device_utilization",
    "gauge",
    "Per-GPU usage, Backend.AI's device metrics: device_metric_name = cuda_mem (bytes), cuda_util (percent); "
    "value_type = current, capacity, pct",
    ("device_metric_name", "agent_id", "device_id", "value_type"),
)

# ---- gpufleet's own
KERNELS = MetricSpec("gpufleet_agent_kernels", "gauge", "Kernels registered on this agent")
HEARTBEAT_AGE = MetricSpec(
    "gpufleet_agent_heartbeat_age_seconds", "gauge", "Seconds since the last heartbeat"
)
SLOT_CAPACITY = MetricSpec(
    "gpufleet_agent_slot_capacity",
    "gauge",
    "Slot capacity (Backend.AI slots: cpu in cores, mem in bytes, cuda.device in GPUs)",
    ("slot",),
)
SLOT_USED = MetricSpec(
    "gpufleet_agent_slot_used", "gauge", "Slots allocated to kernels (units as capacity)", ("slot",)
)
SLOT_UTILIZATION = MetricSpec(
    "gpufleet_agent_slot_utilization_ratio", "gauge", "Allocated / capacity", ("slot",)
)
PORTS_FREE = MetricSpec("gpufleet_agent_ports_free", "gauge", "Free ports in the container port pool")
EVENTS_BUFFERED = MetricSpec("gpufleet_agent_events_buffered", "gauge", "Events waiting for Redis")
EVENTS_DROPPED = MetricSpec("gpufleet_agent_events_dropped", "counter", "Events dropped from a full buffer")
KERNEL_CREATION = MetricSpec(
    "gpufleet_agent_kernel_creation_duration_seconds", "histogram", "Backend create until the runner answers"
)
KERNEL_FAILURES = MetricSpec(
    "gpufleet_agent_kernel_creation_failures", "counter", "Kernel creations that failed"
)
GPU_ALLOCATED = MetricSpec(
    "gpufleet_agent_gpu_allocated",
    "gauge",
    "1 while the GPU is held by a kernel (kernel_id, session_id: the holder; empty when free)",
    GPU_LABELS + ("kernel_id", "session_id"),
)
KERNEL_GPUS = MetricSpec(
    "gpufleet_agent_kernel_gpus", "gauge", "GPUs allocated to the kernel", ("kernel_id", "session_id")
)

ALL_METRICS = (
    RPC_REQUESTS,
    RPC_FAILURES,
    RPC_DURATION,
    CONTAINER_UTILIZATION,
    DEVICE_UTILIZATION,
    KERNELS,
    HEARTBEAT_AGE,
    SLOT_CAPACITY,
    SLOT_USED,
    SLOT_UTILIZATION,
    PORTS_FREE,
    EVENTS_BUFFERED,
    EVENTS_DROPPED,
    KERNEL_CREATION,
    KERNEL_FAILURES,
    GPU_ALLOCATED,
    KERNEL_GPUS,
)
# Old name -> new name (docs/metrics.md lists them for dashboards and alerts written against the old ones).
RENAMES = {
    "gpufleet_agent_kernel_creation_seconds": KERNEL_CREATION.name,
    "gpufleet_agent_slot_utilisation_ratio": SLOT_UTILIZATION.name,
    'gpufleet_agent_device_allocated{device="N"}': GPU_ALLOCATED.name + '{gpu="N",device="nvidiaN",...}',
}


@dataclass
class KernelSample:
    """What the collector shows for one live kernel."""

    agent_id: str
    kernel_id: str
    session_id: str
    cpu: float  # allocated cores
    mem: int  # allocated bytes
    gpus: tuple[int, ...]
    usage: KernelUsage = field(default_factory=KernelUsage)
    cpu_percent: float | None = None  # over the interval between the last two samples
    last_cpu: tuple[float, float] | None = None  # (monotonic time, cpu seconds)


class _Collector:
    def __init__(self, metrics: AgentMetrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        m = self.metrics
        with m.lock:
            kernels = list(m.kernel_samples.values())
            reading, devices, host, agent_id = m.gpu_reading, list(m.gpu_devices), m.hostname, m.agent_id
        by_index = {g.index: g for g in reading.gpus} if reading is not None else {}
        container = CONTAINER_UTILIZATION.family()
        kernel_gpus = KERNEL_GPUS.family()
        holders: dict[int, KernelSample] = {}
        for k in kernels:
            ids = [k.agent_id, k.kernel_id, k.session_id]
            kernel_gpus.add_metric([k.kernel_id, k.session_id], float(len(k.gpus)))
            for index in k.gpus:
                holders[index] = k
            capacity_cpu = k.cpu * 100.0
            _triple(container, "cpu_util", ids, k.cpu_percent, capacity_cpu)
            if k.usage.cpu_seconds is not None:
                container.add_metric(["cpu_used", *ids, "current"], k.usage.cpu_seconds * 1000.0)
            _triple(container, "mem", ids, k.usage.memory_bytes, float(k.mem))
            mine = [by_index[i] for i in k.gpus if i in by_index]
            if k.gpus and len(mine) == len(k.gpus):
                used = [g.memory_used_mib for g in mine]
                total = [g.memory_total_mib for g in mine]
                util = [g.utilization_gpu_pct for g in mine]
                if None not in used and None not in total:
                    _triple(container, "cuda_mem", ids, sum(used) * MIB, sum(total) * MIB)
                if None not in util:
                    _triple(container, "cuda_util", ids, sum(util) / len(util), 100.0)
        device = DEVICE_UTILIZATION.family()
        for gpu in by_index.values():
            ids = [agent_id, str(gpu.index)]
            if gpu.memory_used_mib is not None and gpu.memory_total_mib is not None:
                _triple(device, "cuda_mem", ids, gpu.memory_used_mib * MIB, gpu.memory_total_mib * MIB)
            if gpu.utilization_gpu_pct is not None:
                _triple(device, "cuda_util", ids, float(gpu.utilization_gpu_pct), 100.0)
        allocated = GPU_ALLOCATED.family()
        for index, model, uuid in devices:
            seen = by_index.get(index)
            labels = gpu_labels(index, seen.uuid if seen else uuid, seen.model if seen else model, host)
            holder = holders.get(index)
            allocated.add_metric(
                gpu_label_values(labels) + ([holder.kernel_id, holder.session_id] if holder else ["", ""]),
                1.0 if holder else 0.0,
            )
        yield container
        yield device
        yield kernel_gpus
        yield allocated


def _triple(family, name: str, ids: list[str], current: float | None, capacity: float | None) -> None:
    """Backend.AI's value_type triple: current, capacity, pct (absent parts stay absent)."""
    if current is not None:
        family.add_metric([name, *ids, "current"], float(current))
    if capacity is not None:
        family.add_metric([name, *ids, "capacity"], float(capacity))
    if current is not None and capacity:
        family.add_metric([name, *ids, "pct"], float(current) / capacity * 100.0)


class AgentMetrics:
    def __init__(self, usage_reader: KernelUsageReader | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_requests = RPC_REQUESTS.create(r)
        self.rpc_failures = RPC_FAILURES.create(r)
        self.rpc_duration = RPC_DURATION.create(r)
        self.kernels = KERNELS.create(r)
        self.heartbeat_age = HEARTBEAT_AGE.create(r)
        self.slot_capacity = SLOT_CAPACITY.create(r)
        self.slot_used = SLOT_USED.create(r)
        self.slot_utilization = SLOT_UTILIZATION.create(r)
        self.ports_free = PORTS_FREE.create(r)
        self.events_buffered = EVENTS_BUFFERED.create(r)
        self.events_dropped = EVENTS_DROPPED.create(r)
        self.kernel_creation_seconds = KERNEL_CREATION.create(r)
        self.kernel_failures = KERNEL_FAILURES.create(r)
        self.lock = threading.Lock()
        self.kernel_samples: dict[str, KernelSample] = {}
        self.usage_reader = usage_reader
        # GPUs: through gpufleet.gpu (NVML on a GPU node). Tests hand in a simulated backend.
        self.gpu_backend: GpuBackend | None = None
        self.gpu_reading: NodeReading | None = None
        self._gpu_read_at = 0.0
        self._gpu_backend_tried = False
        self.gpu_devices: list[tuple[int, str, str]] = []  # (index, model, uuid) the agent offers
        self.hostname = socket.gethostname()
        self.agent_id = ""
        r.register(_Collector(self))

    # ---- per-kernel series: the metrics API (the agent calls it; tests call it with fake records)

    def observe_kernel(
        self, agent_id: str, record: KernelRecord, usage: KernelUsage | None = None, now: float | None = None
    ) -> None:
        """Record one live kernel's allocation and usage (cpu_util comes from the change since last time)."""
        now = time.monotonic() if now is None else now
        allocation = record.allocation
        with self.lock:
            sample = self.kernel_samples.get(record.kernel_id)
            if sample is None:
                sample = self.kernel_samples[record.kernel_id] = KernelSample(
                    agent_id,
                    record.kernel_id,
                    record.session_id,
                    float(allocation.get("cpu", 0)),
                    int(allocation.get("mem", 0)),
                    tuple(allocation.get("gpus", ())),
                )
            if usage is None:
                return
            sample.usage = usage
            if usage.cpu_seconds is not None:
                if sample.last_cpu is not None and now > sample.last_cpu[0]:
                    used = max(0.0, usage.cpu_seconds - sample.last_cpu[1])
                    sample.cpu_percent = used / (now - sample.last_cpu[0]) * 100.0
                sample.last_cpu = (now, usage.cpu_seconds)

    def forget_kernel(self, kernel_id: str) -> None:
        """A kernel ended: its series go with it."""
        with self.lock:
            self.kernel_samples.pop(kernel_id, None)

    def keep_only(self, kernel_ids) -> None:
        """Drop every kernel not in ``kernel_ids`` (however it ended)."""
        live = set(kernel_ids)
        with self.lock:
            for kid in [k for k in self.kernel_samples if k not in live]:
                del self.kernel_samples[kid]

    def series_count(self) -> int:
        """Samples one scrape returns now (what Prometheus would store as series)."""
        return sum(len(family.samples) for family in self.registry.collect())

    # ---- the whole agent, on every scrape and heartbeat

    def observe_agent(self, agent: Agent, used: dict[str, Any] | None = None) -> None:
        used = used or agent.allocator.used()
        self.agent_id = agent.id
        for slot, capacity in agent.capacity.slots().items():
            self.slot_capacity.labels(slot).set(capacity)
            self.slot_used.labels(slot).set(used[slot])
            self.slot_utilization.labels(slot).set(used[slot] / capacity if capacity else 0)
        with self.lock:
            self.gpu_devices = [(g.index, g.model, g.uuid) for g in agent.capacity.gpus]
        self._read_gpus(agent)
        if self.usage_reader is None:
            self.usage_reader = KernelUsageReader()
        records = agent.registry.all()
        for record in records:
            self.observe_kernel(agent.id, record, self.usage_reader.read(record))
        self.keep_only(r.kernel_id for r in records)
        self.kernels.set(len(agent.registry))
        self.ports_free.set(agent.ports.free_count())
        self.events_buffered.set(len(agent.events.buffer))
        if agent.last_heartbeat is not None:
            self.heartbeat_age.set(time.time() - agent.last_heartbeat)

    def _read_gpus(self, agent: Agent) -> None:
        if self.gpu_backend is None and not self._gpu_backend_tried:
            self._gpu_backend_tried = True
            if agent.capacity.gpus and agent.config.resource.gpus == "auto":
                from gpufleet.gpu import open_backend

                try:
                    self.gpu_backend = open_backend("nvml")
                except (BackendUnavailable, ImportError, OSError) as exc:
                    log.warning("GPU usage metrics off: NVML unavailable (%s)", exc)
        if self.gpu_backend is None or time.monotonic() - self._gpu_read_at < GPU_READ_INTERVAL:
            return
        self._gpu_read_at = time.monotonic()
        try:
            reading = self.gpu_backend.read()
        except BackendUnavailable as exc:
            log.debug("GPU read failed: %s", exc)
            reading = None
        with self.lock:
            self.gpu_reading = reading

    def render(self) -> bytes:
        return generate_latest(self.registry)
