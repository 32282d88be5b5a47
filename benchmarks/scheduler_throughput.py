"""Pods bound per second by `gpufleet place serve`, end to end over HTTP through the API emulator.

    python benchmarks/scheduler_throughput.py                       # 1,000 and 5,000 nodes
    python benchmarks/scheduler_throughput.py --nodes 5000 --pods 5000 --policy best_fit

The emulator (tests/fixtures/kube_emulator.py, the same one the tests use) runs in
its own process, seeded with N nodes of 8 GPUs and P pending one-GPU pods whose
schedulerName is gpufleet. The scheduler runs here, unchanged, with its real loop:
LIST + watches, queue, engine, a pool of binding requests. Reported: the time from
leading (model loaded) to the last binding answered, pods bound per second, and
where the scheduler's loop spent its time (engine decisions, model builds) beside
the binding requests' own latency — to say which part limits throughput.

Anchors: kube-scheduler's performance tests at 5,000 nodes run at 100-180 pods/s;
ByteDance's Gödel reports ~1,000 pods/s average at 30,000 nodes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def serve_emulator(nodes: int, pods: int) -> None:
    """The child process: seed the store, print the URL, serve until stdin closes."""
    from fixtures.kube_api import node_object, pod_object
    from fixtures.kube_emulator import EmulatorThread

    server = EmulatorThread().start()
    emulator = server.emulator
    with emulator.lock:
        emulator.put_object("namespaces", {"metadata": {"name": "default"}}, None)
        emulator.put_object("namespaces", {"metadata": {"name": "kube-system"}}, None)
        for i in range(nodes):
            emulator.put_object("nodes", node_object(f"gpu-{i:05d}", gpus=8, cpu="128", memory="1Ti"), None)
        for i in range(pods):
            pod = pod_object(f"job-{i:05d}", gpus=1, cpu="2", memory="8Gi", phase="Pending")
            pod["spec"]["schedulerName"] = "gpufleet"
            emulator.put_object("pods", pod, "default")
    print(server.url, flush=True)
    sys.stdin.read()
    server.stop()


class Timed:
    """Wraps a method to add up the seconds spent in it (on the scheduler's loop thread)."""

    def __init__(self, owner, name: str) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.owner, self.name = owner, name
        self.original = original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        setattr(owner, name, wrapper)

    def restore(self) -> None:
        setattr(self.owner, self.name, self.original)


def measure(nodes: int, pods: int, policy: str) -> dict:
    from gpufleet.kube.api import KubeApi
    from gpufleet.kube.client import api_client
    from gpufleet.placement import serve
    from gpufleet.placement.engine import Placer

    argv = [sys.executable, __file__, "--emulator", "--nodes", str(nodes), "--pods", str(pods)]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = child.stdout.readline().strip()
        if not url.startswith("http"):
            raise SystemExit("the emulator did not start")
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(
                "apiVersion: v1\nkind: Config\ncurrent-context: b\n"
                f"clusters: [{{name: b, cluster: {{server: '{url}'}}}}]\n"
                "contexts: [{name: b, context: {cluster: b, user: b}}]\n"
                "users: [{name: b, user: {token: t}}]\n")
            api = KubeApi(api_client(kubeconfig=str(kubeconfig), request_timeout=30))
            scheduler = serve.GpuScheduler(api, serve.ServeConfig(policy=policy, identity="bench"))
            decide = Timed(Placer, "decide")
            build = Timed(serve.ClusterCache, "placer")
            binds: list[float] = []
            original_bind = api.bind_pod

            def timed_bind(*args, **kwargs):
                start = time.perf_counter()
                original_bind(*args, **kwargs)
                binds.append(time.perf_counter() - start)

            api.bind_pod = timed_bind
            stop = threading.Event()
            thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
            started = time.perf_counter()
            thread.start()
            while not scheduler.synced:
                time.sleep(0.001)
            synced = time.perf_counter()
            bound = scheduler.metrics.bindings.labels(result="ok")
            while bound._value.get() < pods:
                if time.perf_counter() - synced > 600:
                    raise SystemExit(f"only {bound._value.get():.0f} of {pods} bound after 600 s")
                time.sleep(0.002)
            done = time.perf_counter()
            stop.set()
            thread.join(30)
            decide.restore()
            build.restore()
    finally:
        child.stdin.close()
        child.wait(30)
    seconds = done - synced
    binds.sort()
    return {
        "nodes": nodes, "pods": pods, "policy": policy,
        "sync_seconds": synced - started, "bind_all_seconds": seconds, "pods_per_second": pods / seconds,
        "engine_seconds": decide.seconds, "decisions": decide.calls,
        "decisions_per_second": decide.calls / decide.seconds if decide.seconds else float("inf"),
        "model_builds": build.calls, "model_build_seconds": build.seconds,
        "bind_p50_ms": 1000 * binds[len(binds) // 2], "bind_p99_ms": 1000 * binds[int(len(binds) * 0.99)],
        "bind_workers": serve.ServeConfig().bind_workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emulator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, action="append",
                        help="Node count (repeat; default 1000 and 5000).")
    parser.add_argument("--pods", type=int, default=5000, help="Pending one-GPU pods (default 5000).")
    parser.add_argument("--policy", default=None, help="Placement policy (default: the scheduler's).")
    args = parser.parse_args()
    if args.emulator:
        serve_emulator(args.nodes[0], args.pods)
        return
    from gpufleet.placement.serve import DEFAULT_POLICY

    policy = args.policy or DEFAULT_POLICY
    print(f"{'nodes':>6} {'pods':>6} {'policy':16} {'sync s':>7} {'bind-all s':>10} {'pods/s':>8} "
          f"{'engine s':>8} {'dec/s':>8} {'builds':>6} {'build s':>7} {'bind p50/p99 ms':>16}")
    for nodes in args.nodes or [1000, 5000]:
        r = measure(nodes, args.pods, policy)
        print(f"{r['nodes']:>6} {r['pods']:>6} {r['policy']:16} {r['sync_seconds']:>7.2f} "
              f"{r['bind_all_seconds']:>10.2f} {r['pods_per_second']:>8.0f} {r['engine_seconds']:>8.2f} "
              f"{r['decisions_per_second']:>8.0f} {r['model_builds']:>6} {r['model_build_seconds']:>7.2f} "
              f"{r['bind_p50_ms']:>7.1f}/{r['bind_p99_ms']:<7.1f}", flush=True)
    print(f"(cores: {os.cpu_count()}; emulator in its own process; {r['bind_workers']} binding workers)")


if __name__ == "__main__":
    main()
