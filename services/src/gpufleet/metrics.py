"""What every gpufleet metric follows: the naming rule, declarative metric specs, dcgm-exporter's GPU labels.

The naming rule (docs/metrics.md is generated from the specs):

* gpufleet's own metrics are ``gpufleet_<service>_<what>_<unit>`` — service one of
  ``health``, ``agent``, ``scheduler``; the unit a base unit (``seconds``, ``bytes``,
  ``celsius``, ``watts``, ``ratio``, ...) or nothing for counts and states; counters end
  in ``_total`` (prometheus_client adds it);
* the kernel agent keeps the seed's ``backendai_*`` names (Backend.AI's agent) where the seed
  names one — and only there (:data:`SEED_NAMES`);
* a per-GPU series carries dcgm-exporter's labels (:data:`GPU_LABELS`) with the same values
  dcgm-exporter gives them, so ``on(UUID)`` or ``on(Hostname, gpu)`` joins the two.

Both metrics modules (``gpufleet.health.metrics``, ``gpufleet.agent.metrics``) declare their
metrics as :class:`MetricSpec` tuples; the doc generator and the naming test read those.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# No `<counter>_created` series: Prometheus 2.x does not use them and they double every counter's series.
disable_created_metrics()

SERVICES = ("health", "agent", "scheduler")
NAME_RULE = re.compile(r"^gpufleet_(?:" + "|".join(SERVICES) + r")_[a-z][a-z0-9_]*[a-z0-9]$")
# The seed's metric names (Backend.AI's agent); the kernel agent uses them as they are.
SEED_NAMES = frozenset(
    {
        "backendai_rpc_requests",
        "backendai_rpc_failure_requests",
        "backendai_rpc_request_duration_seconds",
        "backendai_container_utilization",
        "backendai_device_utilization",
    }
)
# dcgm-exporter's labels on every per-GPU series, in its spelling.
GPU_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname")
KINDS = ("counter", "gauge", "histogram")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name (counters without ``_total``), kind, help text and label names."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    @property
    def exposed_name(self) -> str:
        """The name a scrape shows (and PromQL uses): counters get ``_total``."""
        return self.name + "_total" if self.kind == "counter" else self.name

    def create(self, registry: CollectorRegistry):
        """A prometheus_client metric registered in ``registry`` (for values the code updates)."""
        if self.kind == "counter":
            return Counter(self.name, self.help, self.labels, registry=registry)
        if self.kind == "gauge":
            return Gauge(self.name, self.help, self.labels, registry=registry)
        if self.buckets is not None:
            return Histogram(self.name, self.help, self.labels, registry=registry, buckets=self.buckets)
        return Histogram(self.name, self.help, self.labels, registry=registry)

    def family(self):
        """An empty metric family (for collectors that build their series on every scrape)."""
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=self.labels)
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.help, labels=self.labels)
        raise ValueError(f"{self.name}: a collector builds counters and gauges only")


def naming_problems(specs: Iterable[MetricSpec]) -> list[str]:
    """Every way the specs break the naming rule (empty when they follow it)."""
    problems = []
    for spec in specs:
        if spec.kind not in KINDS:
            problems.append(f"{spec.name}: kind {spec.kind!r} is not one of {', '.join(KINDS)}")
        if spec.name.endswith("_total"):
            problems.append(f"{spec.name}: declare counters without _total (the client adds it)")
        if spec.name.startswith("backendai_"):
            if spec.name not in SEED_NAMES:
                problems.append(f"{spec.name}: backendai_* only for the seed's own names")
        elif not NAME_RULE.match(spec.name):
            problems.append(f"{spec.name}: not gpufleet_<service>_<what>_<unit> (service: {SERVICES})")
        if any(label in spec.labels for label in GPU_LABELS) and not set(GPU_LABELS) <= set(spec.labels):
            problems.append(f"{spec.name}: a per-GPU series carries all of {GPU_LABELS}")
    return problems


def gpu_labels(index: int, uuid: str | None, model: str | None, hostname: str) -> dict[str, str]:
    """dcgm-exporter's label values for one GPU: gpu="0", device="nvidia0", UUID, modelName, Hostname."""
    return {
        "gpu": str(index),
        "UUID": uuid or "",
        "device": f"nvidia{index}",
        "modelName": model or "",
        "Hostname": hostname,
    }


def gpu_label_values(labels: dict[str, str]) -> list[str]:
    return [labels[name] for name in GPU_LABELS]
