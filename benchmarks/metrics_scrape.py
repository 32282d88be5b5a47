"""What one /metrics scrape costs: series per scrape and render time, health agent and kernel agent.

    python benchmarks/metrics_scrape.py [--kernels 0,10,100,1000] [--renders 50]

Health agent: a simulated 8x H100 node after a cycle and an Xid (in process, no HTTP).
Kernel agent: the metrics with N live fake kernels on 8 simulated GPUs (each with usage), then
after all of them ended — the series count must fall back to the idle one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gpufleet.agent.kernel_usage import KernelUsage
from gpufleet.agent.metrics import AgentMetrics
from gpufleet.agent.registry import KernelRecord
from gpufleet.gpu.simulated import inject
from gpufleet.health.config import config_from_dict
from gpufleet.health.daemon import XID, HealthAgent


def render_ms(render, renders: int) -> tuple[float, float]:
    times = []
    for _ in range(renders):
        started = time.perf_counter()
        render()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def health(tmp: Path, renders: int) -> None:
    faults = tmp / "faults.json"
    data = {
        "interval": 60,
        "state_file": str(tmp / "health.json"),
        "backend": {"type": "simulated", "node": "sim-node-0", "faults": str(faults)},
        "kubernetes": {"enabled": "false"},
        "http": {"address": "127.0.0.1", "port": 0},
    }
    agent = HealthAgent(config_from_dict(data, source="bench"))
    agent.cycle()
    inject(faults, "sim-node-0", gpu=1, xid=79)
    agent.cycle(XID, agent.backend.wait_xid_events(2.0))
    series = sum(len(f.samples) for f in agent.metrics.registry.collect())
    p50, p99 = render_ms(agent.metrics.render, renders)
    size = len(agent.metrics.render())
    print(f"health agent, 8 GPUs: {series} series, {size} bytes, render p50 {p50:.2f} ms p99 {p99:.2f} ms")


def agent(counts: list[int], renders: int) -> None:
    for count in counts:
        metrics = AgentMetrics()
        idle = metrics.series_count()
        for i in range(count):
            kid = f"k{i:05d}"
            record = KernelRecord(
                kid,
                f"s-{kid}",
                "running",
                {"kernel_id": kid, "cpu": 1.0, "mem": 1 << 30, "gpus": [i % 8]},
                [],
            )
            metrics.observe_kernel(
                "bench", record, KernelUsage(cpu_seconds=1.0, memory_bytes=1 << 20), now=0.0
            )
            metrics.observe_kernel(
                "bench", record, KernelUsage(cpu_seconds=2.0, memory_bytes=1 << 20), now=1.0
            )
        live = metrics.series_count()
        p50, p99 = render_ms(metrics.render, renders)
        metrics.keep_only([])
        print(
            f"kernel agent, {count} live kernels: {live} series (idle {idle}), render p50 {p50:.2f} ms "
            f"p99 {p99:.2f} ms; after they ended: {metrics.series_count()} series"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="0,10,100,1000")
    parser.add_argument("--renders", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        health(Path(tmp), args.renders)
    agent([int(x) for x in args.kernels.split(",")], args.renders)


if __name__ == "__main__":
    main()
