"""FGD's fragmentation measure (Weng et al., USENIX ATC'23), vectorised over node states.

For a distribution of "typical tasks" t with probabilities p_t, the fragment of a
node is the expected idle GPU milli a typical task cannot use:

    F(node) = Σ_t p_t · F_t(node)
    F_t(node) = Σ_g free_g                      if t cannot be placed on the node at all
                                                (CPU-only task, wrong GPU model, not
                                                enough CPU, not enough fitting GPUs)
              = Σ_{g: free_g < need_t} free_g   otherwise

`need_t` is the task's milli per GPU (1000 for whole GPUs). Memory is ignored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from gpufleet.placement.model import Request


@dataclass
class TypicalTasks:
    cpu_milli: np.ndarray  # [T]
    num_gpu: np.ndarray  # [T]
    gpu_milli: np.ndarray  # [T]
    probability: np.ndarray  # [T]
    models: list[tuple[str, ...]]  # accepted models per task (empty: any)
    memory_mib: np.ndarray | None = None  # [T], only for the memory-aware variant

    def __len__(self) -> int:
        return len(self.probability)

    @classmethod
    def from_requests(
        cls, requests: Iterable[Request], coverage: float = 0.95, with_memory: bool = False
    ) -> TypicalTasks:
        """The most frequent (cpu, gpu_milli, num_gpu, models) shapes until they cover `coverage`
        of the tasks, renormalised. `with_memory` also gives each shape the median memory of its
        tasks (used for placeability in `fragment`)."""
        requests = list(requests)
        counts = Counter((r.cpu_milli, r.gpu_milli, r.num_gpu, r.gpu_models) for r in requests)
        total = sum(counts.values())
        kept: list[tuple[tuple, int]] = []
        covered = 0
        # Ties in frequency are ordered by the key so the set is deterministic.
        for key, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            kept.append((key, count))
            covered += count
            if covered >= coverage * total:
                break
        weight = sum(count for _, count in kept) or 1
        memory = None
        if with_memory:
            by_shape: dict[tuple, list[int]] = {}
            for r in requests:
                by_shape.setdefault((r.cpu_milli, r.gpu_milli, r.num_gpu, r.gpu_models), []).append(
                    r.memory_mib
                )
            memory = np.array([int(np.median(by_shape[key])) for key, _ in kept], dtype=np.int64)
        return cls(
            cpu_milli=np.array([key[0] for key, _ in kept], dtype=np.int64),
            gpu_milli=np.array([key[1] for key, _ in kept], dtype=np.int64),
            num_gpu=np.array([key[2] for key, _ in kept], dtype=np.int64),
            probability=np.array([count / weight for _, count in kept], dtype=np.float64),
            models=[key[3] for key, _ in kept],
            memory_mib=memory,
        )

    def model_table(self, fleet_models: Sequence[str]) -> np.ndarray:
        """[model id, T]: whether task t accepts the model."""
        table = np.ones((len(fleet_models), len(self)), dtype=bool)
        for t, accepted in enumerate(self.models):
            if accepted:
                table[:, t] = [model in accepted for model in fleet_models]
        return table


def fragment(
    typical: TypicalTasks,
    model_table: np.ndarray,
    gpu_free: np.ndarray,
    cpu_free: np.ndarray,
    model_id: np.ndarray,
    memory_free: np.ndarray | None = None,
) -> np.ndarray:
    """F(node) for M node states at once: gpu_free [M, G], cpu_free [M], model_id [M] -> [M].
    With memory-aware typical tasks and `memory_free` [M], a task also needs its memory."""
    free = gpu_free[:, None, :]  # M, 1, G
    need = typical.gpu_milli[None, :, None]  # 1, T, 1
    fits = free >= need  # M, T, G
    idle = gpu_free.sum(axis=1)  # M
    placeable = (
        (fits.sum(axis=2) >= typical.num_gpu[None, :])
        & (typical.num_gpu[None, :] > 0)
        & (cpu_free[:, None] >= typical.cpu_milli[None, :])
        & model_table[model_id]
    )
    if typical.memory_mib is not None and memory_free is not None:
        placeable &= memory_free[:, None] >= typical.memory_mib[None, :]
    unusable = np.where(fits, 0, free).sum(axis=2)  # M, T
    per_task = np.where(placeable, unusable, idle[:, None])
    return per_task @ typical.probability
