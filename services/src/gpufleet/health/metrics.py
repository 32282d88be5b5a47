"""The health agent's Prometheus metrics (one registry per agent, so tests can run several).

Every metric is declared below as a :class:`~gpufleet.metrics.MetricSpec` (docs/metrics.md is
generated from these tuples). Node-level values are prometheus_client metrics the daemon updates;
per-GPU series are built on every scrape from the last cycle's reading, labelled like
dcgm-exporter, so a GPU that disappears takes its series with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from gpufleet.gpu.base import GpuSnapshot, NodeReading, XidEvent
from gpufleet.health.severity import NODE, HealthStatus, Severity
from gpufleet.metrics import GPU_LABELS, MetricSpec, gpu_label_values, gpu_labels

UNKNOWN_CHECK = -1  # gpufleet_health_check_status of a check that could not run
FENCE_ACTIONS = ("fence", "update", "lift", "suppressed", "isolate_held", "released")
GPU = GPU_LABELS

# ---- node-level metrics (the daemon sets them)
CHECK_STATUS = MetricSpec(
    "gpufleet_health_check_status",
    "gauge",
    "Worst severity of each check's last result: 0 PASS, 1 MONITOR, 2 RESET, 3 REBOOT, 4 ISOLATE, "
    "-1 could not run",
    ("check",),
)
NODE_SEVERITY = MetricSpec("gpufleet_health_node_severity", "gauge", "The node verdict: 0 PASS .. 4 ISOLATE")
NODE_STATUS = MetricSpec(
    "gpufleet_health_node_status",
    "gauge",
    "1 for the node's current health status (pass, warn, fail, unknown)",
    ("status",),
)
FENCE_REQUIRED = MetricSpec(
    "gpufleet_health_fence_required",
    "gauge",
    "1 while the verdict is at or above the fence level (kubernetes.taint_severity) and the monitor works: "
    "the node is fenced, or would be where no Kubernetes sink or the circuit breaker stops it",
)
XID_EVENTS = MetricSpec("gpufleet_health_xid_events", "counter", "Xid events received, by code", ("xid",))
CYCLE_DURATION = MetricSpec(
    "gpufleet_health_cycle_duration_seconds",
    "histogram",
    "Wall time of a check cycle (checks and sinks)",
    ("schedule",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
FENCE_ACTIONS_SPEC = MetricSpec(
    "gpufleet_health_fence_actions",
    "counter",
    "Fence decisions applied: fence, update, lift, suppressed (circuit breaker), isolate_held, "
    "released (removed by an operator)",
    ("action",),
)
FENCED = MetricSpec("gpufleet_health_fenced", "gauge", "1 while this node carries the agent's taint")
CIRCUIT_BREAKER_OPEN = MetricSpec(
    "gpufleet_health_circuit_breaker_open",
    "gauge",
    "1 while a fence is withheld because max_fenced nodes are already fenced",
)
KUBE_API_ERRORS = MetricSpec(
    "gpufleet_health_kube_api_errors", "counter", "Failed Kubernetes API publications"
)
LAST_CYCLE = MetricSpec(
    "gpufleet_health_last_cycle_timestamp_seconds", "gauge", "Unix time of the last completed check cycle"
)
HEALTHY_STREAK = MetricSpec(
    "gpufleet_health_healthy_streak_cycles", "gauge", "Consecutive healthy scheduled cycles (hysteresis)"
)
REDIS_PENDING = MetricSpec(
    "gpufleet_health_redis_events_pending", "gauge", "Redis events waiting for Redis to answer"
)

NODE_METRICS = (
    CHECK_STATUS,
    NODE_SEVERITY,
    NODE_STATUS,
    FENCE_REQUIRED,
    XID_EVENTS,
    CYCLE_DURATION,
    FENCE_ACTIONS_SPEC,
    FENCED,
    CIRCUIT_BREAKER_OPEN,
    KUBE_API_ERRORS,
    LAST_CYCLE,
    HEALTHY_STREAK,
    REDIS_PENDING,
)


# ---- per-GPU metrics (from the last cycle's reading; dcgm-exporter's labels)
@dataclass(frozen=True)
class GpuMetric:
    """A per-GPU series: ``values(gpu)`` gives (extra label values, value) pairs; None values are absent."""

    spec: MetricSpec
    values: Callable[[GpuSnapshot], list[tuple[tuple[str, ...], float | None]]]


def _one(read: Callable[[GpuSnapshot], Any], scale: float = 1.0):
    def values(gpu: GpuSnapshot):
        value = read(gpu)
        return [((), None if value is None else float(value) * scale)]

    return values


def _ecc(gpu: GpuSnapshot):
    e = gpu.ecc
    return [
        (("corrected", "volatile"), e.volatile_corrected),
        (("uncorrected", "volatile"), e.volatile_uncorrected),
        (("corrected", "aggregate"), e.aggregate_corrected),
        (("uncorrected", "aggregate"), e.aggregate_uncorrected),
    ]


def _remapped(gpu: GpuSnapshot):
    rows = gpu.remapped_rows
    if rows is None:
        return []
    return [(("correctable",), rows.correctable), (("uncorrectable",), rows.uncorrectable)]


def _retired(gpu: GpuSnapshot):
    pages = gpu.retired_pages
    if pages is None:
        return []
    return [(("single_bit",), pages.single_bit), (("double_bit",), pages.double_bit)]


def _remap_flag(name: str):
    def values(gpu: GpuSnapshot):
        rows = gpu.remapped_rows
        return [((), None if rows is None else float(getattr(rows, name)))]

    return values


def _nvlink_errors(gpu: GpuSnapshot):
    """Summed over the GPU's links, like dcgm-exporter's *_TOTAL fields (per-link labels would multiply
    the series by 18)."""
    out = []
    for counter in (
        "replay_errors",
        "recovery_errors",
        "crc_flit_errors",
        "crc_data_errors",
        "ecc_data_errors",
    ):
        seen = [getattr(link, counter) for link in gpu.nvlinks if getattr(link, counter) is not None]
        out.append(((counter.removesuffix("_errors"),), sum(seen) if seen else None))
    return out


def _nvlinks_active(gpu: GpuSnapshot):
    return [((), float(sum(1 for link in gpu.nvlinks if link.active)) if gpu.nvlinks else None)]


MIB = 1 << 20
GPU_METRICS = (
    GpuMetric(
        MetricSpec("gpufleet_health_gpu_temperature_celsius", "gauge", "GPU core temperature", GPU),
        _one(lambda g: g.temperature_c),
    ),
    GpuMetric(
        MetricSpec("gpufleet_health_gpu_power_watts", "gauge", "GPU power draw", GPU),
        _one(lambda g: g.power_w),
    ),
    GpuMetric(
        MetricSpec("gpufleet_health_gpu_power_limit_watts", "gauge", "GPU power limit", GPU),
        _one(lambda g: g.power_limit_w),
    ),
    GpuMetric(
        MetricSpec("gpufleet_health_gpu_memory_used_bytes", "gauge", "GPU memory in use", GPU),
        _one(lambda g: g.memory_used_mib, MIB),
    ),
    GpuMetric(
        MetricSpec("gpufleet_health_gpu_memory_total_bytes", "gauge", "GPU memory size", GPU),
        _one(lambda g: g.memory_total_mib, MIB),
    ),
    GpuMetric(
        MetricSpec(
            "gpufleet_health_gpu_utilization_ratio",
            "gauge",
            "Fraction of time a kernel ran on the GPU (NVML's utilization.gpu / 100)",
            GPU,
        ),
        _one(lambda g: g.utilization_gpu_pct, 0.01),
    ),
    GpuMetric(
        MetricSpec(
            "gpufleet_health_gpu_ecc_errors",
            "counter",
            "ECC errors counted by the driver: error = corrected|uncorrected, counter = volatile "
            "(since driver load)|aggregate (lifetime)",
            GPU + ("error", "counter"),
        ),
        _ecc,
    ),
    GpuMetric(
        MetricSpec(
            "gpufleet_health_gpu_remapped_rows",
            "counter",
            "Memory rows remapped (Ampere and later), by cause = correctable|uncorrectable",
            GPU + ("cause",),
        ),
        _remapped,
    ),
    GpuMetric(
        MetricSpec(
            "gpufleet_health_gpu_row_remap_pending", "gauge", "1 while a row remap waits for a GPU reset", GPU
        ),
        _remap_flag("pending"),
    ),
    GpuMetric(
        MetricSpec(
            "gpufleet_health_gpu_row_remap_failed",
            "gauge",
            "1 when a row remap failed (the GPU needs replacing)",
            GPU,
        ),
        _remap_flag("failure"),
    ),
    GpuMetric(
        MetricSpec(
            "gpufleet_health_gpu_retired_pages",
            "counter",
            "Retired memory pages (Volta and older), by cause = single_bit|double_bit",
            GPU + ("cause",),
        ),
        _retired,
    ),
    GpuMetric(
        MetricSpec(
            "gpufleet_health_gpu_nvlink_errors",
            "counter",
            "NVLink error counters summed over the GPU's links: counter = replay, recovery, "
            "crc_flit, crc_data, ecc_data",
            GPU + ("counter",),
        ),
        _nvlink_errors,
    ),
    GpuMetric(
        MetricSpec("gpufleet_health_gpu_nvlinks_active", "gauge", "NVLinks up on the GPU", GPU),
        _nvlinks_active,
    ),
    GpuMetric(
        MetricSpec("gpufleet_health_gpu_pcie_replays", "counter", "PCIe replay counter", GPU),
        _one(lambda g: g.pcie.replay_counter),
    ),
    GpuMetric(
        MetricSpec("gpufleet_health_gpu_pcie_link_generation", "gauge", "Current PCIe link generation", GPU),
        _one(lambda g: g.pcie.gen_current),
    ),
    GpuMetric(
        MetricSpec("gpufleet_health_gpu_pcie_link_width_lanes", "gauge", "Current PCIe link width", GPU),
        _one(lambda g: g.pcie.width_current),
    ),
)
GPU_SEVERITY = MetricSpec(
    "gpufleet_health_gpu_severity",
    "gauge",
    "Worst severity of the last findings naming this GPU: 0 PASS .. 4 ISOLATE",
    GPU,
)
GPU_READ_ERROR = MetricSpec(
    "gpufleet_health_gpu_read_error",
    "gauge",
    "1 when the last read of this GPU failed (code = the NVML error, e.g. GpuIsLost)",
    GPU + ("code",),
)
GPU_XID_EVENTS = MetricSpec(
    "gpufleet_health_gpu_xid_events", "counter", "Xid events received for this GPU, by code", GPU + ("xid",)
)

# Old name -> new name (docs/metrics.md lists them for dashboards and alerts written against the old ones).
RENAMES = {"gpufleet_health_healthy_streak": HEALTHY_STREAK.name}

ALL_METRICS = (
    NODE_METRICS + (GPU_SEVERITY, GPU_READ_ERROR, GPU_XID_EVENTS) + tuple(m.spec for m in GPU_METRICS)
)


class _GpuCollector:
    """Builds the per-GPU series at scrape time from what the last cycle saw."""

    def __init__(self, metrics: HealthMetrics):
        self.metrics = metrics

    def describe(self):
        return []  # no eager collect() at registration

    def collect(self):
        m = self.metrics
        with m.lock:
            gpus, severities, errors = list(m.gpus), dict(m.gpu_severity), list(m.read_errors)
            xids, names, host = dict(m.gpu_xids), dict(m.gpu_names), m.hostname
        families = {}
        for metric in GPU_METRICS:
            family = families[metric.spec.name] = metric.spec.family()
            for gpu in gpus:
                base = gpu_label_values(gpu_labels(gpu.index, gpu.uuid, gpu.model, host))
                for extra, value in metric.values(gpu):
                    if value is not None:
                        family.add_metric(base + list(extra), value)
        severity = GPU_SEVERITY.family()
        for gpu in gpus:
            labels = gpu_label_values(gpu_labels(gpu.index, gpu.uuid, gpu.model, host))
            severity.add_metric(labels, float(severities.get(gpu.index, 0)))
        read_error = GPU_READ_ERROR.family()
        for index, uuid, model, code in errors:
            read_error.add_metric(gpu_label_values(gpu_labels(index, uuid, model, host)) + [code], 1.0)
        xid_family = GPU_XID_EVENTS.family()
        for (index, event_uuid, xid), count in sorted(xids.items()):
            uuid, model = names.get(index, (event_uuid, None))
            xid_family.add_metric(
                gpu_label_values(gpu_labels(index, uuid, model, host)) + [xid], float(count)
            )
        yield from families.values()
        yield severity
        yield read_error
        yield xid_family


class HealthMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.check_status = CHECK_STATUS.create(r)
        self.node_severity = NODE_SEVERITY.create(r)
        self.node_status = NODE_STATUS.create(r)
        self.fence_required = FENCE_REQUIRED.create(r)
        self.xid_events = XID_EVENTS.create(r)
        self.cycle_duration = CYCLE_DURATION.create(r)
        self.fence_actions = FENCE_ACTIONS_SPEC.create(r)
        self.fenced = FENCED.create(r)
        self.circuit_breaker_open = CIRCUIT_BREAKER_OPEN.create(r)
        self.api_errors = KUBE_API_ERRORS.create(r)
        self.last_cycle = LAST_CYCLE.create(r)
        self.healthy_streak = HEALTHY_STREAK.create(r)
        self.redis_pending = REDIS_PENDING.create(r)
        for status in HealthStatus:
            self.node_status.labels(status.value).set(0)
        for action in FENCE_ACTIONS:
            self.fence_actions.labels(action)
        # Per-GPU state, read by the collector on the HTTP thread.
        self.lock = threading.Lock()
        self.hostname = ""
        self.gpus: list[GpuSnapshot] = []
        self.gpu_severity: dict[int, int] = {}
        self.read_errors: list[tuple[int, str | None, str | None, str]] = []
        self.gpu_xids: dict[tuple[int, str, str], int] = {}  # (index, uuid the event named, xid) -> count
        self.gpu_names: dict[int, tuple[str | None, str | None]] = {}  # index -> (uuid, model)
        r.register(_GpuCollector(self))

    def observe_xid(self, event: XidEvent) -> None:
        """Count one Xid event for the node and, when it names a GPU, for that GPU."""
        self.xid_events.labels(str(event.xid)).inc()
        if event.gpu_index is None:
            return
        key = (event.gpu_index, event.uuid or "", str(event.xid))
        with self.lock:
            self.gpu_xids[key] = self.gpu_xids.get(key, 0) + 1

    def observe_report(self, report, checks_run: list[str], fence_level: Severity | None = None) -> None:
        worst: dict[str, int] = {check: int(Severity.PASS) for check in checks_run}
        for finding in report.findings:
            worst[finding.check] = max(worst.get(finding.check, 0), int(finding.severity))
        for item in report.unknown:
            if worst.get(item["check"], 0) == 0:
                worst[item["check"]] = UNKNOWN_CHECK
        for check, value in worst.items():
            self.check_status.labels(check).set(value)
        self.node_severity.set(int(report.verdict))
        for status in HealthStatus:
            self.node_status.labels(status.value).set(1 if report.status == status else 0)
        if fence_level is not None:
            required = report.verdict >= fence_level and report.status != HealthStatus.UNKNOWN
            self.fence_required.set(1 if required else 0)
        self.last_cycle.set(report.time)
        self._observe_gpus(report)

    def _observe_gpus(self, report) -> None:
        reading: NodeReading | None = getattr(report, "reading", None)
        severities: dict[int, int] = {}
        for finding in report.findings:
            if finding.gpu == NODE:
                continue
            index = finding.gpu.split(":", 1)[0]
            if index.isdigit():
                severities[int(index)] = max(severities.get(int(index), 0), int(finding.severity))
        with self.lock:
            self.hostname = report.node
            if reading is not None:  # a failed read keeps the last values (the node status says unknown)
                self.gpus = list(reading.gpus)
                self.read_errors = [(e.index, e.uuid, None, e.code) for e in reading.errors]
                self.gpu_names = {g.index: (g.uuid, g.model) for g in reading.gpus}
            self.gpu_severity = severities

    def render(self) -> bytes:
        return generate_latest(self.registry)
