"""The placement pipeline: filters → strategy → tie-breaks → GPUs inside the node.

    placer = Placer(cluster, ["fgd", "topology"], seed=7)
    decision = placer.place(Request(name="train", cpu_milli=8000, num_gpu=2))

Nodes are ranked by the first strategy's score, ties by the next one's, and the
remaining ties by a random order of the nodes drawn once from the seed, so a
decision is deterministic for a given seed and snapshot. The GPUs come from the
first strategy in the chain that has its own rule (FGD, topology), else the
default rule (assign.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from gpufleet.placement.filters import feasible
from gpufleet.placement.fleet import Fleet
from gpufleet.placement.model import Cluster, Decision, Request
from gpufleet.placement.strategies import Strategy, make_chain


class Placer:
    def __init__(
        self,
        cluster: Cluster | Fleet,
        strategies: str | Strategy | Sequence[str | Strategy] = "best_fit",
        seed: int = 0,
    ) -> None:
        self.fleet = cluster if isinstance(cluster, Fleet) else Fleet(cluster)
        if isinstance(strategies, (str, Strategy)):
            strategies = [strategies]
        self.strategies = make_chain(strategies)
        if not self.strategies:
            raise ValueError("at least one strategy is needed")
        # Higher rank wins a tie; one permutation per seed.
        self.tie_rank = np.random.default_rng(seed).permutation(self.fleet.size).astype(np.int64)

    @property
    def gpu_chooser(self) -> Strategy:
        """The first strategy in the chain with its own GPU rule (FGD, topology), else the first."""
        return next((s for s in self.strategies if s.own_gpu_rule), self.strategy)

    @property
    def strategy(self) -> Strategy:
        return self.strategies[0]

    @property
    def name(self) -> str:
        return "+".join(strategy.name for strategy in self.strategies)

    def decide(self, request: Request, report: bool = True) -> Decision:
        idx, removed = feasible(self.fleet, request, report=report)
        decision = Decision(
            request=request, node=None, filters=removed, candidates=int(idx.size), strategy=self.name
        )
        if not idx.size:
            return decision
        primary = self.strategy.scores(self.fleet, idx, request)
        key = primary.copy()
        for strategy in self.strategies[1:]:
            key = key * strategy.score_range + strategy.scores(self.fleet, idx, request)
        key = key * self.fleet.size + self.tie_rank[idx]
        best = int(np.argmax(key))
        node_index = int(idx[best])
        decision.node = self.fleet.names[node_index]
        decision.score = int(primary[best])
        decision.gpus = tuple(int(g) for g in self.gpu_chooser.assign(self.fleet, node_index, request))
        if report and idx.size > 1:
            key[best] = np.iinfo(np.int64).min
            second = int(np.argmax(key))
            decision.runner_up = {"node": self.fleet.names[int(idx[second])], "score": int(primary[second])}
        return decision

    def commit(self, decision: Decision) -> None:
        node_index = self.fleet.index_of[decision.node]
        self.fleet.commit(node_index, decision.request, decision.gpus)
        for strategy in self.strategies:
            strategy.committed(self.fleet, node_index, decision.request)

    def place(self, request: Request, report: bool = True) -> Decision:
        decision = self.decide(request, report=report)
        if decision.placed:
            self.commit(decision)
        return decision

    def place_all(self, requests: Iterable[Request], now: float = 0.0) -> list[Decision]:
        """A batch, in the first strategy's queue order (priority: highest first, FIFO within)."""
        return [self.place(request) for request in self.strategy.order(list(requests), now=now)]
