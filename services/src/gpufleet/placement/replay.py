"""Trace replay: the openb evaluation protocol of the FGD paper (see the README beside the data).

1. Arrival order: tasks sorted by name, shuffled with the seed; tasks never depart.
2. Inflate to 130% of GPU capacity with random clones appended at the end (the
   stop test uses the clone's per-GPU milli, as the paper's simulator does), or
   drop random tasks when the trace asks for more.
3. One task at a time; its GPU request counts as arrived before it is tried; a
   task that fits nowhere fails and is dropped.
4. After each arrival record allocation and arrival (% of capacity) and FGD's
   fragmentation; "at 100%" is the mean over the arrivals whose rounded arrival
   percentage is 100 (likewise 130).
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from gpufleet.placement.engine import Placer
from gpufleet.placement.fleet import Fleet
from gpufleet.placement.fragmentation import TypicalTasks, fragment
from gpufleet.placement.model import Cluster, Request
from gpufleet.placement.sources import (
    PlacementInputError,
    check_requests_fit,
    load_openb_nodes,
    load_openb_pods,
)
from gpufleet.placement.strategies import STRATEGIES, Strategy, make

INFLATION = 1.3


def arrival_order(
    pods: list[Request], seed: int, capacity_milli: int, inflation: float = INFLATION
) -> list[Request]:
    rng = random.Random(seed)
    originals = sorted(pods, key=lambda pod: pod.name)
    tasks = list(originals)
    rng.shuffle(tasks)
    target = inflation * capacity_milli
    total = sum(task.gpu_total_milli for task in tasks)
    if total < target:
        # Bounded: far more draws than any trace needs to reach the target.
        for clone_number in range(100 * len(originals) + 1000):
            task = rng.choice(originals)
            if total + task.gpu_milli > target:
                break
            tasks.append(replace(task, name=f"{task.name}-clone-{clone_number}", sequence=len(tasks)))
            total += task.gpu_total_milli
    while total > target and tasks:
        task = tasks.pop(rng.randrange(len(tasks)))
        total -= task.gpu_total_milli
    return tasks


def check_policy(policy: str) -> None:
    """`policy` names known strategies (a chain joined by +), or a PlacementInputError."""
    unknown = [name for name in policy.split("+") if name not in STRATEGIES]
    if unknown:
        raise PlacementInputError(
            f"unknown policy {policy!r} ({', '.join(repr(n) for n in unknown)}): use one of "
            f"{', '.join(STRATEGIES)}, or a tie-break chain such as fgd+best_fit"
        )


def policy_chain(policy: str, pods: list[Request], seed: int = 0) -> list[Strategy]:
    """`fgd`, `best_fit`, or a chain of tie-breaks such as `fgd+best_fit`."""
    chain: list[Strategy] = []
    for name in policy.split("+"):
        if name in ("fgd", "fgd_fine"):
            chain.append(make(name, typical=TypicalTasks.from_requests(pods)))
        elif name == "fgd_mem":
            chain.append(make(name, typical=TypicalTasks.from_requests(pods, with_memory=True)))
        elif name == "model_reserve":
            chain.append(make(name, typical=list(pods)))
        else:
            chain.append(make(name, seed=seed) if name == "random" else make(name))
    return chain


def _round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(values + 0.5)


def replay(cluster: Cluster, pods: list[Request], policy: str, seed: int = 0) -> dict[str, Any]:
    started = time.perf_counter()
    fleet = Fleet(cluster)
    capacity = int(fleet.gpu_capacity_milli().sum())
    typical = TypicalTasks.from_requests(pods)
    placer = Placer(fleet, policy_chain(policy, pods, seed), seed=seed)
    tasks = arrival_order(pods, seed, capacity)

    # FGD's fragmentation measure for every policy, kept per node and updated on change.
    model_table = typical.model_table(fleet.models)
    node_fragment = fragment(typical, model_table, fleet.gpu_free, fleet.cpu_free, fleet.model_id)
    fragment_total = float(node_fragment.sum())
    idle_total = int(fleet.gpu_free.sum())

    arrived = allocated = failed = failed_gpu_milli = 0
    series = np.zeros((len(tasks), 4))  # arrived, allocated, fragment, idle (milli)
    decide_seconds = 0.0
    for step, task in enumerate(tasks):
        arrived += task.gpu_total_milli
        tick = time.perf_counter()
        decision = placer.decide(task, report=False)
        decide_seconds += time.perf_counter() - tick
        if decision.placed:
            placer.commit(decision)
            allocated += task.gpu_total_milli
            idle_total -= task.gpu_total_milli
            i = fleet.index_of[decision.node]
            new = fragment(
                typical,
                model_table,
                fleet.gpu_free[i : i + 1],
                fleet.cpu_free[i : i + 1],
                fleet.model_id[i : i + 1],
            )[0]
            fragment_total += new - node_fragment[i]
            node_fragment[i] = new
        else:
            failed += 1
            failed_gpu_milli += task.gpu_total_milli
        series[step] = (arrived, allocated, fragment_total, idle_total)

    arrived_pct = 100.0 * series[:, 0] / capacity
    result: dict[str, Any] = {
        "policy": policy,
        "seed": seed,
        "nodes": fleet.size,
        "gpus": int(fleet.gpu_count.sum()),
        "tasks": len(tasks),
        "original_tasks": len(pods),
        "placed_tasks": len(tasks) - failed,
        "failed_tasks": failed,
        "failed_gpu_milli": failed_gpu_milli,
        "final_arrived_pct": round(float(arrived_pct[-1]), 3) if len(tasks) else 0.0,
        "final_allocation_pct": round(100.0 * allocated / capacity, 3) if capacity else 0.0,
    }
    for point in (100, 130):
        at = _round_half_up(arrived_pct) == point
        if at.any():
            alloc = 100.0 * series[at, 1] / capacity
            frag = series[at, 2]
            idle = np.maximum(series[at, 3], 1)
            result[f"alloc_at_{point}"] = round(float(alloc.mean()), 3)
            result[f"frag_ratio_at_{point}"] = round(float((100.0 * frag / idle).mean()), 3)
            result[f"frag_amount_pct_at_{point}"] = round(float((100.0 * frag / capacity).mean()), 3)
        else:
            result[f"alloc_at_{point}"] = None
            result[f"frag_ratio_at_{point}"] = None
            result[f"frag_amount_pct_at_{point}"] = None
    elapsed = time.perf_counter() - started
    result["seconds"] = round(elapsed, 3)
    result["decisions_per_second"] = round(len(tasks) / decide_seconds, 1) if decide_seconds else None
    return result


def replay_files(nodes: str | Path, pods: str | Path, policy: str, seed: int = 0, sample: int | None = None):
    """Replay from the openb CSVs; `sample` keeps the first N nodes and scales the pods to match."""
    check_policy(policy)
    cluster = load_openb_nodes(nodes)
    requests = load_openb_pods(pods)
    check_requests_fit(requests, cluster, str(nodes))
    if sample:
        rng = random.Random(f"sample-{sample}")
        full_gpus = sum(len(node.gpus) for node in cluster.nodes)
        cluster.nodes = sorted(
            rng.sample(cluster.nodes, min(sample, len(cluster.nodes))), key=lambda n: n.name
        )
        kept_gpus = sum(len(node.gpus) for node in cluster.nodes)
        share = kept_gpus / full_gpus if full_gpus else 1.0
        requests = sorted(rng.sample(requests, max(1, int(len(requests) * share))), key=lambda r: r.name)
    return replay(cluster, requests, policy, seed)
