"""Kernel agent, Kubernetes backend: create→ready latency and API requests per kernel lifetime.

`python benchmarks/agent_latency.py --kubernetes [--creates 30] [--idle 10] [--json]`
(or this file directly). The agent runs in-process (its Python API, not its RPC:
this measures the backend, not the transport) against the Kubernetes API emulator
of tests/fixtures over HTTP. A stand-in kubelet watches the emulator's store
(in-process, every 5 ms), starts each pod's runner as a local process and marks
the pod Running and Ready once the readinessProbe's port accepts — so create→ready
is: POST pod and service, the runner's start, and how soon the backend notices.

Reported: create→ready p50/p99 (mostly the runner's own start); how long after the
pod turns Ready in the API the create returns (what the backend's wait costs: a
watch event, or the next poll); API requests per kernel (create to destroy, the
agent's one pod watch excluded and counted apart); requests while `--kernels`
kernels sit idle for `--idle` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration" / "agent")]

NAMESPACE = "gpufleet-kernels"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class StandInKubelet(threading.Thread):
    """Runs each new pod's runner locally and reports the pod Ready when its port accepts."""

    def __init__(self, emulator, scratch_root: Path) -> None:
        super().__init__(daemon=True)
        self.emulator, self.scratch_root = emulator, scratch_root
        self.stopped = threading.Event()
        self.processes: dict[str, subprocess.Popen] = {}
        self.finished: set[str] = set()
        self.ready_at: dict[str, float] = {}  # pod name -> perf_counter() when marked Ready

    def run(self) -> None:
        while not self.stopped.wait(0.005):
            with self.emulator.lock:
                pods = [p for (kind, ns, _), p in self.emulator.store.items()
                        if kind == "pods" and ns == NAMESPACE]
            present = {pod["metadata"]["name"] for pod in pods}
            for name in [n for n in self.processes if n not in present]:
                # the pod is gone: its container stops (and frees its port for the next kernel)
                process = self.processes.pop(name)
                process.terminate()
                process.wait(5)
                self.finished.add(name)
            for pod in pods:
                name = pod["metadata"]["name"]
                if name in self.processes or name in self.finished \
                        or pod["metadata"].get("deletionTimestamp"):
                    continue
                kid = pod["metadata"]["labels"]["ai.backend.kernel-id"]
                argv = [sys.executable] + pod["spec"]["containers"][0]["command"][1:]
                argv = [a.replace("/home/config", str(self.scratch_root / kid / "config"))
                        .replace("/home/work", str(self.scratch_root / kid / "work")) for a in argv]
                argv[argv.index("--host") + 1] = "127.0.0.1"
                self.processes[name] = subprocess.Popen(argv)
                port = pod["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]["port"]
                threading.Thread(target=self.ready_when_listening, args=(name, port), daemon=True).start()

    def ready_when_listening(self, name: str, port: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.005)
        with self.emulator.lock:
            key = ("pods", NAMESPACE, name)
            if key in self.emulator.store:
                self.emulator.update_stored(key, {"spec": {"nodeName": "gpu-1"}, "status": {
                    "phase": "Running", "podIP": "127.0.0.1",
                    "conditions": [{"type": "Ready", "status": "True"}]}})
                self.ready_at[name] = time.perf_counter()

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        for process in self.processes.values():
            process.terminate()
            process.wait(5)


def kernel_requests(log) -> int:
    return sum(1 for r in log if f"/namespaces/{NAMESPACE}/" in r.path and not r.is_watch)


async def measure(args, server, kubeconfig: Path, workdir: Path) -> dict:
    from agent_helpers import make_config
    from gpufleet.agent.core import Agent

    emulator = server.emulator
    config = make_config(workdir, backend="kubernetes", kube_namespace=NAMESPACE, kubeconfig=str(kubeconfig),
                         kernel_image="python:3.11-slim", kernel_ready_timeout=30, ports=args.kernels + 10)
    kubelet = StandInKubelet(emulator, config.container.scratch_root)
    kubelet.start()
    agent = Agent(config)
    await agent.start()
    results: dict = {}
    try:
        warm = await agent.create_kernel()  # the backend's own set-up (a watch, if it has one) happens here
        await agent.destroy_kernel(warm.kernel_id)
        times, per_kernel, noticed = [], [], []
        for _ in range(args.creates):
            with emulator.lock:
                emulator.log.clear()
            started = time.perf_counter()
            record = await agent.create_kernel()
            ended = time.perf_counter()
            times.append(ended - started)
            noticed.append(ended - kubelet.ready_at[f"kernel-{record.kernel_id}"])
            await agent.destroy_kernel(record.kernel_id)
            with emulator.lock:
                per_kernel.append(kernel_requests(emulator.log))
        results["create_ready_ms"] = {"n": len(times), "p50": round(statistics.median(times) * 1000, 1),
                                      "p99": round(percentile(times, 99) * 1000, 1)}
        # from the pod turning Ready in the API to create_kernel returning: how soon the backend notices
        results["ready_to_running_ms"] = {"p50": round(statistics.median(noticed) * 1000, 1),
                                          "p99": round(percentile(noticed, 99) * 1000, 1)}
        results["requests_per_kernel_lifetime"] = {"min": min(per_kernel), "max": max(per_kernel),
                                                   "mean": round(statistics.mean(per_kernel), 1)}
        idle = [await agent.create_kernel() for _ in range(args.kernels)]
        with emulator.lock:
            emulator.log.clear()
        await asyncio.sleep(args.idle)
        with emulator.lock:
            log = list(emulator.log)
        results["idle"] = {"kernels": args.kernels, "seconds": args.idle, "requests": len(log),
                           "watch_requests": sum(1 for r in log if r.is_watch)}
        for record in idle:
            await agent.destroy_kernel(record.kernel_id)
    finally:
        await agent.stop(destroy_kernels=True)
        kubelet.stop()
    return results


def kubernetes_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes", action="store_true", help="(accepted for agent_latency.py's flag)")
    parser.add_argument("--creates", type=int, default=30)
    parser.add_argument("--kernels", type=int, default=5, help="kernels left idle")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds to watch idle kernels")
    parser.add_argument("--json", action="store_true")
    args, _ = parser.parse_known_args(argv)

    import gpufleet.agent.backends.kubernetes as backend
    from fixtures.kube_api import node_object, write_kubeconfig
    from fixtures.kube_emulator import EmulatorThread

    server = EmulatorThread().start()
    with server.emulator.lock:
        server.emulator.put_object("namespaces", {"metadata": {"name": NAMESPACE}})
        server.emulator.put_object("nodes", node_object("gpu-1", gpus=8, cpu="64", memory="512Gi"))
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-kube-bench-"))
    try:
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", server.url)
        results = asyncio.run(measure(args, server, kubeconfig, workdir))
    finally:
        server.stop()
    results["backend"] = backend.__file__
    results["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        cr, rk, idle = results["create_ready_ms"], results["requests_per_kernel_lifetime"], results["idle"]
        print(f"backend: {results['backend']}  cpus: {results['cpus']}")
        rr = results["ready_to_running_ms"]
        print(f"kubernetes create->ready  p50 {cr['p50']:7.1f} ms  p99 {cr['p99']:7.1f} ms  (n={cr['n']})")
        print(f"pod Ready in the API -> create returns  p50 {rr['p50']:7.1f} ms  p99 {rr['p99']:7.1f} ms")
        print(f"API requests per kernel lifetime (create..destroy, watch excluded): mean {rk['mean']} "
              f"(min {rk['min']}, max {rk['max']})")
        print(f"{idle['kernels']} idle kernels for {idle['seconds']:.0f} s: {idle['requests']} API requests "
              f"({idle['watch_requests']} of them watch requests)")
    return 0


if __name__ == "__main__":
    sys.exit(kubernetes_main())
