"""Which GPUs of the chosen node a request gets. Deterministic: ties go to the lowest index.

- Whole GPUs (default): the lowest-index fully free GPUs.
- A GPU share (default): the fitting GPU with the least milli left (best fit inside the node).
- NVLink-aware (`topology`): a multi-GPU request takes the set of free GPUs with the
  most NVLink links among its members; a single GPU goes on the fitting GPU with the
  fewest NVLink links to other free GPUs, so that well-connected sets stay whole.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from gpufleet.placement.model import MILLI_PER_GPU, Node, Request

# Beyond this many candidate sets the search is greedy (grow the set by the best-linked GPU).
_MAX_COMBINATIONS = 5000


def default_gpus(gpu_free: np.ndarray, request: Request) -> tuple[int, ...]:
    """gpu_free: that node's free milli per GPU slot."""
    if not request.num_gpu:
        return ()
    if request.is_share:
        fitting = [(int(free), g) for g, free in enumerate(gpu_free) if free >= request.gpu_milli]
        return (min(fitting)[1],) if fitting else ()
    free_whole = [g for g, free in enumerate(gpu_free) if free >= MILLI_PER_GPU]
    return tuple(free_whole[: request.num_gpu]) if len(free_whole) >= request.num_gpu else ()


def nvlink_links(node: Node) -> dict[int, set[int]]:
    """Symmetric NVLink adjacency between GPU indices (a link reported by either end counts)."""
    links: dict[int, set[int]] = {gpu.index: set() for gpu in node.gpus}
    for gpu in node.gpus:
        for peer in gpu.nvlink_peers:
            if peer in links and peer != gpu.index:
                links[gpu.index].add(peer)
                links[peer].add(gpu.index)
    return links


def links_within(gpus: tuple[int, ...], links: dict[int, set[int]]) -> int:
    return sum(1 for a, b in combinations(gpus, 2) if b in links.get(a, ()))


def best_connected_set(free: list[int], count: int, links: dict[int, set[int]]) -> tuple[int, ...]:
    """The `count` GPUs among `free` with the most internal links; ties: lexicographically lowest."""
    if len(free) < count:
        return ()
    n_sets = 1
    for k in range(count):
        n_sets = n_sets * (len(free) - k) // (k + 1)
    if n_sets <= _MAX_COMBINATIONS:
        best: tuple[int, ...] = ()
        best_links = -1
        for candidate in combinations(sorted(free), count):
            n_links = links_within(candidate, links)
            if n_links > best_links:
                best, best_links = candidate, n_links
        return best
    chosen = [max(sorted(free), key=lambda g: len(links.get(g, set()) & set(free)))]
    while len(chosen) < count:
        rest = [g for g in sorted(free) if g not in chosen]
        chosen.append(max(rest, key=lambda g: len(links.get(g, set()) & set(chosen))))
    return tuple(sorted(chosen))


def topology_gpus(node: Node, gpu_free: np.ndarray, request: Request) -> tuple[int, ...]:
    if not request.num_gpu:
        return ()
    links = nvlink_links(node)
    whole_free = [g for g, free in enumerate(gpu_free) if free >= MILLI_PER_GPU]
    if request.num_gpu > 1:
        return best_connected_set(whole_free, request.num_gpu, links)
    fitting = [g for g, free in enumerate(gpu_free) if free >= request.gpu_milli]
    if not fitting:
        return ()
    free_set = set(whole_free)
    # Fewest links to free GPUs first, then the least milli left, then the lowest index.
    return (min(fitting, key=lambda g: (len(links.get(g, set()) & (free_set - {g})), int(gpu_free[g]), g)),)


def topology_score(node: Node, gpu_free: np.ndarray, request: Request) -> int:
    """0..100. Multi-GPU: 100 · links inside the best set / links of a fully linked set.
    One GPU: 100 · (1 − free peers of the chosen GPU / (GPUs on the node − 1))."""
    gpus = topology_gpus(node, gpu_free, request)
    if not request.num_gpu or not gpus:
        return 0
    links = nvlink_links(node)
    if request.num_gpu > 1:
        full = request.num_gpu * (request.num_gpu - 1) // 2
        return int(100 * links_within(gpus, links) / full)
    others = len(node.gpus) - 1
    if others <= 0:
        return 100
    free_peers = sum(1 for peer in links.get(gpus[0], ()) if gpu_free[peer] >= MILLI_PER_GPU)
    return int(100 * (1 - free_peers / others))
