"""The cluster snapshot and the request being placed: plain data, no logic beyond parsing.

Units everywhere: CPU in milli-cores, memory in MiB, GPU in milli-GPU (1 GPU = 1000).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MILLI_PER_GPU = 1000

HEALTH_LABEL = "gpufleet.io/health"
GPUS_ANNOTATION = "gpufleet.io/gpus"
ASSIGNED_GPUS_ANNOTATION = "gpufleet.io/assigned-gpus"
GPU_MILLI_ANNOTATION = "gpufleet.io/gpu-milli"
PLACEMENT_ANNOTATION = "gpufleet.io/placement"
GPU_MODEL_LABEL = "gpufleet.io/gpu-model"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Taints that fence a node whatever the workload tolerates (set by the health agent).
FENCING_TAINTS = ("gpufleet.io/quarantine", "gpufleet.io/unhealthy")


@dataclass
class Gpu:
    index: int
    model: str = ""
    memory_mib: int = 0
    milli_allocated: int = 0
    health: str = "unknown"  # pass | warn | fail | unknown
    nvlink_peers: tuple[int, ...] = ()
    uuid: str = ""

    @property
    def milli_free(self) -> int:
        return MILLI_PER_GPU - self.milli_allocated


@dataclass
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass
class Toleration:
    key: str | None = None
    operator: str = "Equal"  # Equal | Exists
    value: str = ""
    effect: str | None = None  # None tolerates every effect

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.key is None:  # empty key with Exists tolerates everything
            return self.operator == "Exists"
        if self.key != taint.key:
            return False
        return self.operator == "Exists" or (self.value or "") == (taint.value or "")


@dataclass
class Node:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: list[Gpu] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[Taint] = field(default_factory=list)
    unschedulable: bool = False
    cpu_allocated: int = 0
    memory_allocated: int = 0
    workloads: list[str] = field(default_factory=list)

    @property
    def gpu_model(self) -> str:
        return self.gpus[0].model if self.gpus else ""

    @property
    def health(self) -> str:
        return self.labels.get(HEALTH_LABEL, "unknown")


@dataclass
class Request:
    """What one workload needs. A GPU share is `num_gpu=1, gpu_milli<1000`;
    whole GPUs have `gpu_milli=1000` each."""

    name: str = "request"
    cpu_milli: int = 0
    memory_mib: int = 0
    num_gpu: int = 0
    gpu_milli: int = 0
    gpu_models: tuple[str, ...] = ()  # empty: any model
    priority: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)
    sequence: int = 0  # arrival order, for FIFO within a priority
    submitted_at: float = 0.0  # for aging
    source: Any = None  # the manifest it came from, if any

    def __post_init__(self) -> None:
        # A negative amount would hand out resources (a num_gpu of -2 once got real GPUs).
        for amount in ("cpu_milli", "memory_mib", "num_gpu", "gpu_milli"):
            if getattr(self, amount) < 0:
                raise ValueError(f"{self.name}: {amount} is {getattr(self, amount)}; it cannot be negative")
        if self.num_gpu and not self.gpu_milli:
            self.gpu_milli = MILLI_PER_GPU
        if self.gpu_milli > MILLI_PER_GPU:
            raise ValueError(
                f"{self.name}: gpu_milli {self.gpu_milli} is more than one GPU (1000); ask for whole GPUs "
                "with num_gpu"
            )
        if self.num_gpu > 1 and self.gpu_milli != MILLI_PER_GPU:
            raise ValueError(f"{self.name}: a multi-GPU request takes whole GPUs (gpu_milli 1000)")

    @property
    def is_share(self) -> bool:
        return self.num_gpu == 1 and 0 < self.gpu_milli < MILLI_PER_GPU

    @property
    def gpu_total_milli(self) -> int:
        return self.num_gpu * self.gpu_milli

    @property
    def score_key(self) -> tuple[int, int, int]:
        """What every score depends on (memory and model count for feasibility only)."""
        return (self.cpu_milli, self.num_gpu, self.gpu_milli)


@dataclass
class Cluster:
    nodes: list[Node] = field(default_factory=list)
    # The requests of the workloads already placed: FGD's "typical tasks" when no trace is given.
    workload_requests: list[Request] = field(default_factory=list)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


@dataclass
class Decision:
    request: Request
    node: str | None
    gpus: tuple[int, ...] = ()
    score: int | None = None
    runner_up: dict[str, Any] | None = None
    filters: list[dict[str, Any]] = field(default_factory=list)
    candidates: int = 0
    strategy: str = ""

    @property
    def placed(self) -> bool:
        return self.node is not None

    def why_not(self) -> str:
        removed = ", ".join(f"{f['filter']} removed {f['removed']}" for f in self.filters if f["removed"])
        return f"no node fits {self.request.name}: {removed or 'no nodes'}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.request.name,
            "node": self.node,
            "gpus": list(self.gpus),
            "score": self.score,
            "runner_up": self.runner_up,
            "strategy": self.strategy,
            "candidates": self.candidates,
            "filters": self.filters,
        }
