"""CPU time of one lightweight health cycle on a simulated 8-GPU node (target <= 20 ms).

    python benchmarks/health_cycle.py [--cycles 500] [--fault]

Measures process CPU time (time.process_time_ns) around HealthEngine.run(("lightweight",)),
including the simulated backend's read, the Xid drain and the kernel-log cursor read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gpufleet.gpu.simulated import SimulatedBackend, inject
from gpufleet.health.engine import HealthEngine
from gpufleet.health.state import HealthState


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--fault", action="store_true", help="inject a few faults first (more findings)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        faults = Path(tmp) / "faults.json"
        if args.fault:
            inject(
                faults,
                "sim-node-0",
                gpu=3,
                settings={"remapped_rows.pending": True, "nvlink_rising.crc_flit_errors": 60},
            )
            inject(faults, "sim-node-0", gpu=5, xid=79, message="GPU has fallen off the bus.")
        backend = SimulatedBackend(faults=faults)
        engine = HealthEngine(backend, profile=backend.profile_name, state=HealthState())
        for _ in range(5):  # warm up: imports, first-sight counter baselines
            engine.run(("lightweight",))
        cpu_ms, wall_ms = [], []
        for _ in range(args.cycles):
            cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
            report = engine.run(("lightweight",))
            cpu_ms.append((time.process_time_ns() - cpu0) / 1e6)
            wall_ms.append((time.perf_counter_ns() - wall0) / 1e6)
    print(
        f"lightweight cycle, simulated 8x H100, {len(report.checks)} checks, {args.cycles} cycles"
        f"{' (with faults)' if args.fault else ''}"
    )
    print(
        f"  CPU  ms: p50 {percentile(cpu_ms, 50):.3f}  p99 {percentile(cpu_ms, 99):.3f}  "
        f"mean {statistics.fmean(cpu_ms):.3f}  max {max(cpu_ms):.3f}"
    )
    print(f"  wall ms: p50 {percentile(wall_ms, 50):.3f}  p99 {percentile(wall_ms, 99):.3f}")
    print(f"  target: CPU p99 <= 20 ms -> {'met' if percentile(cpu_ms, 99) <= 20 else 'NOT met'}")
    print(f"  last verdict: {report.verdict.name} ({report.status.value})")


if __name__ == "__main__":
    main()
