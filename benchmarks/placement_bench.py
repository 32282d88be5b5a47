"""Placement speed: decisions/s at 5,000 nodes, and the wall time of one full fgd replay.

    python benchmarks/placement_bench.py [--nodes 5000] [--gpus-per-node 8] [--decisions 2000]

Targets (issue 7): ≥ 1,000 decisions/s for best_fit and binpack, ≥ 200/s for fgd,
a full fgd replay of one openb trace in under 60 s. Printed, not asserted.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from gpufleet.placement.bench import BENCH_STRATEGIES, bench
from gpufleet.placement.replay import replay_files

OPENB = Path("/work/shared/data/openb")
TARGETS = {"best_fit": 1000, "binpack": 1000, "fgd": 200}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--data", type=Path, default=OPENB)
    args = parser.parse_args()

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(
        f"{args.nodes} nodes x {args.gpus_per_node} GPUs, half full, {args.decisions} decisions per strategy"
    )
    print(f"{'strategy':16} {'decisions/s':>12} {'warm/s':>10} {'p99 ms':>8}  target")
    for row in bench(args.nodes, args.gpus_per_node, args.decisions, BENCH_STRATEGIES):
        target = TARGETS.get(row["strategy"])
        verdict = (
            ""
            if target is None
            else f">= {target}: {'met' if row['decisions_per_second'] >= target else 'NOT met'}"
        )
        print(
            f"{row['strategy']:16} {row['decisions_per_second']:>12} {row['warm_decisions_per_second']:>10} "
            f"{row['p99_ms']:>8}  {verdict}"
        )
    if (args.data / "openb_node_list_gpu_node.csv").exists():
        for trace in ("default", "gpushare40", "multigpu50"):
            started = time.perf_counter()
            result = replay_files(
                args.data / "openb_node_list_gpu_node.csv",
                args.data / f"openb_pod_list_{trace}.csv",
                "fgd",
                0,
            )
            elapsed = time.perf_counter() - started
            print(
                f"full fgd replay of {trace} ({result['tasks']} tasks, {result['nodes']} nodes): "
                f"{elapsed:.1f} s (< 60 s: {'met' if elapsed < 60 else 'NOT met'}), "
                f"{result['decisions_per_second']} decisions/s"
            )


if __name__ == "__main__":
    main()
