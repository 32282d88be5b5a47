"""Idle cost of the GPU health agent: CPU share of one core and memory (RSS).

    python benchmarks/health_idle.py [--seconds 45] [--interval 300] [--no-kube]

Runs `gpufleet health run` as its own process on a healthy simulated 8x H100
node (with the Kubernetes sink pointed at the test emulator unless --no-kube),
lets it settle past its first cycle, then samples /proc/<pid>/stat and
/proc/<pid>/status over --seconds: CPU time used / wall time, RSS at the end
and its peak (VmHWM). The Xid watcher (the simulated backend checks its fault
file every 25 ms, as NVML's event wait would block) and the scheduled cycles
both count. Targets: idle CPU < 1 % of a core, RSS <= 80 MiB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from health_fence_latency import EmulatedKubeApi, EmulatorThread, start_agent, stop, write_kubeconfig  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--interval", type=float, default=300.0, help="the agent's lightweight interval")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the first cycle")
    parser.add_argument("--no-kube", action="store_true", help="without the Kubernetes sink")
    args = parser.parse_args()

    server = None if args.no_kube else EmulatorThread().start()
    process = None
    try:
        with tempfile.TemporaryDirectory(prefix="health-idle-", ignore_cleanup_errors=True) as tmp:
            workdir = Path(tmp)
            kubeconfig = None
            if server is not None:
                api = EmulatedKubeApi(server, write_kubeconfig(workdir / "kubeconfig", server.url))
                api.reset()
                api.add_node("gpu-bench-0", gpus=8)
                kubeconfig = api.kubeconfig
            process, _ = start_agent(workdir, kubeconfig, args.interval)
            time.sleep(args.settle)
            cpu_before, wall_before = cpu_seconds(process.pid), time.monotonic()
            time.sleep(args.seconds)
            cpu = cpu_seconds(process.pid) - cpu_before
            wall = time.monotonic() - wall_before
            memory = memory_kib(process.pid)
            print(
                f"health agent idle for {wall:.0f} s (interval {args.interval:.0f} s, "
                f"Kubernetes sink {'off' if args.no_kube else 'on (emulator)'})"
            )
            print(f"  CPU  {100 * cpu / wall:6.2f} % of one core   ({cpu:.2f} s CPU)   target < 1 %")
            print(
                f"  RSS  {memory['VmRSS'] / 1024:6.1f} MiB   (peak {memory['VmHWM'] / 1024:.1f} MiB)   "
                "target <= 80 MiB"
            )
    finally:
        stop(process)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
