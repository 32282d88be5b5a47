"""Filters: which nodes may take a request at all. Each one reports how many nodes it removed.

Filters run in this order, each on the nodes the previous ones kept, so a
"nothing fits" answer says which rule removed how many nodes:

1. `health`      — no cordoned node, no node labelled `gpufleet.io/health=fail`,
                   no node tainted `gpufleet.io/quarantine` or `gpufleet.io/unhealthy`
                   (whatever the workload tolerates: fencing is not negotiable).
2. `taints`      — every NoSchedule/NoExecute taint must be tolerated.
3. `node_selector` — every selector label must match.
4. `gpu_model`   — the node's GPU model is one the request accepts.
5. `resources`   — free CPU and memory; whole GPUs need that many fully free GPUs,
                   a GPU share needs one GPU with at least its milli left.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gpufleet.placement.fleet import Fleet
from gpufleet.placement.model import FENCING_TAINTS, Node, Request


def node_is_healthy(node: Node) -> bool:
    if node.unschedulable or node.health == "fail":
        return False
    return not any(taint.key in FENCING_TAINTS for taint in node.taints)


def taints_tolerated(node: Node, request: Request) -> bool:
    for taint in node.taints:
        if taint.effect == "PreferNoSchedule":
            continue
        if not any(toleration.tolerates(taint) for toleration in request.tolerations):
            return False
    return True


def selector_matches(node: Node, request: Request) -> bool:
    return all(node.labels.get(key) == value for key, value in request.node_selector.items())


def _static(name: str, rule: Callable[[Node, Request], bool], key: Callable[[Request], object]):
    """A filter over node metadata, which does not change while placing: cached per key."""

    def mask(fleet: Fleet, request: Request) -> np.ndarray:
        cache = fleet.static_masks
        cache_key = (name, key(request))
        if cache_key not in cache:
            cache[cache_key] = np.fromiter(
                (rule(node, request) for node in fleet.nodes), dtype=bool, count=fleet.size
            )
        return cache[cache_key]

    return mask


def _toleration_key(request: Request) -> object:
    return tuple((t.key, t.operator, t.value, t.effect) for t in request.tolerations)


FILTERS: list[tuple[str, Callable[[Fleet, Request], np.ndarray]]] = [
    ("health", _static("health", lambda node, request: node_is_healthy(node), lambda request: None)),
    ("taints", _static("taints", taints_tolerated, _toleration_key)),
    (
        "node_selector",
        _static(
            "node_selector", selector_matches, lambda request: tuple(sorted(request.node_selector.items()))
        ),
    ),
    ("gpu_model", lambda fleet, request: fleet.models_mask(request.gpu_models) if request.num_gpu else True),
    ("resources", lambda fleet, request: fleet.resources_mask(request)),
]


def feasible(fleet: Fleet, request: Request, report: bool = True) -> tuple[np.ndarray, list[dict]]:
    """Indices of the nodes that pass every filter, and per filter how many it removed."""
    mask = np.ones(fleet.size, dtype=bool)
    removed: list[dict] = []
    for name, rule in FILTERS:
        kept = mask & rule(fleet, request)
        if report:
            removed.append({"filter": name, "removed": int(mask.sum() - kept.sum())})
        mask = kept
    return np.flatnonzero(mask), removed
