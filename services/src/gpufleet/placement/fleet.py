"""The snapshot as numpy arrays: what filters and strategies read on the hot path.

A `Fleet` is built once from a `Cluster` and updated in place as decisions are
committed. Each node carries a version that bumps when it changes, so strategies
can cache a node's score per request shape and recompute only changed nodes.
"""

from __future__ import annotations

import numpy as np

from gpufleet.placement.model import MILLI_PER_GPU, Cluster, Request


class Fleet:
    def __init__(self, cluster: Cluster) -> None:
        nodes = cluster.nodes
        self.cluster = cluster
        self.nodes = nodes
        self.names = [node.name for node in nodes]
        self.index_of = {name: i for i, name in enumerate(self.names)}
        n = len(nodes)
        self.size = n
        self.max_gpus = max((len(node.gpus) for node in nodes), default=0) or 1
        self.cpu_capacity = np.array([node.cpu_milli for node in nodes], dtype=np.int64)
        self.memory_capacity = np.array([node.memory_mib for node in nodes], dtype=np.int64)
        self.cpu_free = self.cpu_capacity - np.array([node.cpu_allocated for node in nodes], dtype=np.int64)
        self.memory_free = self.memory_capacity - np.array(
            [node.memory_allocated for node in nodes], dtype=np.int64
        )
        self.gpu_count = np.array([len(node.gpus) for node in nodes], dtype=np.int64)
        # Absent GPU slots hold 0 free milli: they never fit and never count as idle.
        # A failed GPU is likewise never offered.
        self.gpu_free = np.zeros((n, self.max_gpus), dtype=np.int64)
        for i, node in enumerate(nodes):
            for gpu in node.gpus:
                if gpu.health != "fail":
                    self.gpu_free[i, gpu.index] = gpu.milli_free
        # Per node, kept current by commit(): fully free GPUs and the most milli left on one
        # GPU, so the resources filter reads one array instead of scanning every GPU.
        self.whole_free = (self.gpu_free >= MILLI_PER_GPU).sum(axis=1)
        self.max_free = self.gpu_free.max(axis=1)
        self.models = sorted({node.gpu_model for node in nodes})
        model_ids = {model: k for k, model in enumerate(self.models)}
        self.model_id = np.array([model_ids[node.gpu_model] for node in nodes], dtype=np.int64)
        self.version = np.ones(n, dtype=np.int64)
        self.typical_requests: list[Request] = list(cluster.workload_requests)
        self._model_masks: dict[tuple[str, ...], np.ndarray] = {}
        # Masks of the metadata filters (health, taints, selector): node metadata does not
        # change while placing, so each is computed once per distinct request key.
        self.static_masks: dict[tuple, np.ndarray] = {}

    # -- what filters and strategies read -------------------------------------------------

    def gpu_capacity_milli(self) -> np.ndarray:
        return self.gpu_count * MILLI_PER_GPU

    def models_mask(self, models: tuple[str, ...]) -> np.ndarray:
        """Nodes whose GPU model is among `models` (all nodes when empty)."""
        if not models:
            return np.ones(self.size, dtype=bool)
        mask = self._model_masks.get(models)
        if mask is None:
            accepted = [k for k, model in enumerate(self.models) if model in models]
            mask = np.isin(self.model_id, accepted)
            self._model_masks[models] = mask
        return mask

    def resources_mask(self, request: Request) -> np.ndarray:
        mask = (self.cpu_free >= request.cpu_milli) & (self.memory_free >= request.memory_mib)
        if request.num_gpu == 1:
            mask &= self.max_free >= request.gpu_milli
        elif request.num_gpu:  # several GPUs are always whole ones
            mask &= self.whole_free >= request.num_gpu
        return mask

    # -- commit ---------------------------------------------------------------------------

    def commit(self, node_index: int, request: Request, gpus: tuple[int, ...]) -> None:
        """Record a placement on the arrays and on the snapshot's node."""
        self.cpu_free[node_index] -= request.cpu_milli
        self.memory_free[node_index] -= request.memory_mib
        for gpu in gpus:
            self.gpu_free[node_index, gpu] -= request.gpu_milli
            if self.gpu_free[node_index, gpu] < 0:
                raise ValueError(f"GPU {gpu} of {self.names[node_index]} over-allocated")
        row = self.gpu_free[node_index]
        self.whole_free[node_index] = int((row >= MILLI_PER_GPU).sum())
        self.max_free[node_index] = int(row.max())
        self.version[node_index] += 1
        node = self.nodes[node_index]
        node.cpu_allocated += request.cpu_milli
        node.memory_allocated += request.memory_mib
        by_index = {gpu.index: gpu for gpu in node.gpus}
        for gpu in gpus:
            if gpu in by_index:
                by_index[gpu].milli_allocated += request.gpu_milli
        node.workloads.append(request.name)
