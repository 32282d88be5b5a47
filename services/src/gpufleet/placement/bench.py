"""Decision throughput on a synthetic, half-full fleet (`gpufleet place bench`).

The fleet: `nodes` nodes of 128 cores, 1 TiB and `gpus_per_node` GPUs (two
models), each GPU drawn free / fully used / partly used so that about half of
the GPU capacity is allocated. Requests are drawn from an openb-like mix
(CPU-only, GPU shares, 1/2/4/8 whole GPUs). Every decision is committed, so the
fleet changes as it would in a scheduler. Reported: decisions per second over
all decisions from a cold start (every cache empty), and over the second half
(warm).
"""

from __future__ import annotations

import time

import numpy as np

from gpufleet.placement.engine import Placer
from gpufleet.placement.fleet import Fleet
from gpufleet.placement.fragmentation import TypicalTasks
from gpufleet.placement.model import MILLI_PER_GPU, Cluster, Gpu, Node, Request
from gpufleet.placement.strategies import make

BENCH_STRATEGIES = (
    "best_fit",
    "binpack",
    "least_utilized",
    "round_robin",
    "priority",
    "fgd",
    "topology",
    "random",
)
# (cpu_milli, memory_mib, num_gpu, gpu_milli, weight)
REQUEST_MIX = (
    (4000, 16384, 0, 0, 0.05),
    (6000, 12288, 1, 250, 0.1),
    (6000, 12288, 1, 500, 0.15),
    (8000, 24576, 1, 1000, 0.4),
    (16000, 65536, 2, 1000, 0.15),
    (32000, 131072, 4, 1000, 0.1),
    (64000, 262144, 8, 1000, 0.05),
)


def synthetic_cluster(nodes: int, gpus_per_node: int, seed: int = 0) -> Cluster:
    rng = np.random.default_rng(seed)
    cluster = Cluster()
    for i in range(nodes):
        model = "A100" if i % 3 else "H100"
        state = rng.choice(3, size=gpus_per_node, p=[0.45, 0.45, 0.10])  # free, full, partly used
        gpus = []
        for g in range(gpus_per_node):
            used = {0: 0, 1: MILLI_PER_GPU, 2: int(rng.integers(1, 10)) * 100}[int(state[g])]
            peers = tuple(
                p for p in range(gpus_per_node) if p != g and p // 4 == g // 4
            )  # two NVLink islands
            gpus.append(Gpu(index=g, model=model, milli_allocated=used, health="pass", nvlink_peers=peers))
        used_share = sum(gpu.milli_allocated for gpu in gpus) / (MILLI_PER_GPU * max(gpus_per_node, 1))
        cluster.nodes.append(
            Node(
                name=f"node-{i:05d}",
                cpu_milli=128_000,
                memory_mib=1_048_576,
                gpus=gpus,
                cpu_allocated=int(128_000 * used_share),
                memory_allocated=int(1_048_576 * used_share),
                labels={"gpufleet.io/health": "pass"},
            )
        )
    return cluster


def request_stream(count: int, seed: int = 0) -> list[Request]:
    rng = np.random.default_rng(seed + 1)
    weights = np.array([mix[4] for mix in REQUEST_MIX])
    picks = rng.choice(len(REQUEST_MIX), size=count, p=weights / weights.sum())
    return [
        Request(
            name=f"bench-{i}",
            cpu_milli=REQUEST_MIX[k][0],
            memory_mib=REQUEST_MIX[k][1],
            num_gpu=REQUEST_MIX[k][2],
            gpu_milli=REQUEST_MIX[k][3],
            sequence=i,
        )
        for i, k in enumerate(picks)
    ]


def bench_strategy(strategy: str, nodes: int, gpus_per_node: int, decisions: int, seed: int = 0) -> dict:
    fleet = Fleet(synthetic_cluster(nodes, gpus_per_node, seed))
    requests = request_stream(decisions, seed)
    options = {"typical": TypicalTasks.from_requests(requests)} if strategy == "fgd" else {}
    placer = Placer(fleet, [make(strategy, **options)], seed=seed)
    initial_allocation = 1 - fleet.gpu_free.sum() / max(int(fleet.gpu_capacity_milli().sum()), 1)
    times = np.zeros(len(requests))
    placed = 0
    for i, request in enumerate(requests):
        tick = time.perf_counter()
        decision = placer.decide(request, report=False)
        if decision.placed:
            placer.commit(decision)
            placed += 1
        times[i] = time.perf_counter() - tick
    half = len(times) // 2
    return {
        "strategy": strategy,
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "decisions": len(requests),
        "placed": placed,
        "decisions_per_second": round(float(len(times) / times.sum()), 1),
        "warm_decisions_per_second": round(float((len(times) - half) / times[half:].sum()), 1),
        "p99_ms": round(float(np.percentile(times, 99)) * 1000, 3),
        "initial_gpu_allocation_pct": round(100.0 * float(initial_allocation), 1),
    }


def bench(
    nodes: int, gpus_per_node: int, decisions: int, strategies=BENCH_STRATEGIES, seed: int = 0
) -> list[dict]:
    return [bench_strategy(name, nodes, gpus_per_node, decisions, seed) for name in strategies]
