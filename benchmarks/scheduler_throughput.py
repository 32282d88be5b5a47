"""Pods bound per second by `gpufleet place serve`, end to end over HTTP through the API emulator.

    python benchmarks/scheduler_throughput.py                       # 1,000 and 5,000 nodes
    python benchmarks/scheduler_throughput.py --nodes 5000 --pods 5000 --policy best_fit
    python benchmarks/scheduler_throughput.py --trace default --seed 0   # live path vs replay

The emulator (tests/fixtures/kube_emulator.py, the same one the tests use) runs in
its own process, seeded with N nodes of 8 GPUs and P pending one-GPU pods whose
schedulerName is gpufleet. The scheduler runs here, unchanged, with its real loop:
LIST + watches, queue, engine, a pool of binding requests. Reported: the time from
leading (model loaded) to the last binding answered, pods bound per second, and
where the scheduler's loop spent its time (engine decisions, model builds) beside
the binding requests' own latency — to say which part limits throughput.

With --trace, an openb trace (../shared/data/openb) goes through the live path
instead: its 1,213 nodes, and its tasks as pending pods in the replay's arrival
order (shuffled and inflated to 130 % with the seed, named by arrival so the
queue keeps that order); FGD measures fragmentation against the trace's own
task mix, as in the replay. Tasks never depart, so a task that does not fit on
arrival never fits later, and the final allocation must equal the replay's.

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


DATA = Path(os.environ.get("GPUFLEET_OPENB_DATA") or ROOT.parent / "shared" / "data" / "openb")


def trace_objects(trace: str, seed: int) -> tuple[list[dict], list[dict]]:
    """The trace's nodes and its tasks in the replay's arrival order, as API objects."""
    from fixtures.kube_api import node_object, pod_object
    from gpufleet.placement.replay import arrival_order
    from gpufleet.placement.sources import load_openb_nodes, load_openb_pods

    cluster = load_openb_nodes(DATA / "openb_node_list_gpu_node.csv")
    capacity = 1000 * sum(len(node.gpus) for node in cluster.nodes)
    tasks = arrival_order(load_openb_pods(DATA / f"openb_pod_list_{trace}.csv"), seed, capacity)
    nodes = [node_object(n.name, gpus=len(n.gpus), gpu_model=n.gpu_model or "none", cpu=f"{n.cpu_milli}m",
                         memory=f"{n.memory_mib}Mi", labels={"gpufleet.io/health": "pass"})
             for n in cluster.nodes]
    pods = []
    for i, task in enumerate(tasks):
        annotations = {}
        if task.is_share:
            annotations["gpufleet.io/gpu-milli"] = str(task.gpu_milli)
        if task.gpu_models:
            annotations["gpufleet.io/gpu-models"] = "|".join(task.gpu_models)
        pod = pod_object(f"task-{i:06d}", gpus=task.num_gpu, cpu=f"{task.cpu_milli}m",
                         memory=f"{task.memory_mib}Mi", phase="Pending", annotations=annotations)
        if not task.cpu_milli:
            pod["spec"]["containers"][0]["resources"]["requests"].pop("cpu", None)
        pods.append(pod)
    return nodes, pods


def synthetic_objects(nodes: int, pods: int) -> tuple[list[dict], list[dict]]:
    from fixtures.kube_api import node_object, pod_object

    return ([node_object(f"gpu-{i:05d}", gpus=8, cpu="128", memory="1Ti") for i in range(nodes)],
            [pod_object(f"job-{i:05d}", gpus=1, cpu="2", memory="8Gi", phase="Pending") for i in range(pods)])


def serve_emulator(nodes: int, pods: int, trace: str | None, seed: int) -> None:
    """The child process: seed the store, print the URL, serve until stdin closes."""
    from fixtures.kube_emulator import EmulatorThread

    node_objects, pod_objects = trace_objects(trace, seed) if trace else synthetic_objects(nodes, pods)
    server = EmulatorThread().start()
    emulator = server.emulator
    with emulator.lock:
        emulator.put_object("namespaces", {"metadata": {"name": "default"}}, None)
        emulator.put_object("namespaces", {"metadata": {"name": "kube-system"}}, None)
        for node in node_objects:
            emulator.put_object("nodes", node, None)
        for pod in pod_objects:
            pod["spec"]["schedulerName"] = "gpufleet"
            emulator.put_object("pods", pod, "default")
    print(server.url, len(node_objects), len(pod_objects), flush=True)
    sys.stdin.read()
    server.stop()


def allocated_milli(pod: dict) -> int:
    """GPU milli a bound pod holds: its share (or 1000) on each GPU it was given."""
    annotations = pod["metadata"].get("annotations") or {}
    gpus = [g for g in (annotations.get("gpufleet.io/assigned-gpus") or "").split(",") if g.strip()]
    return int(annotations.get("gpufleet.io/gpu-milli") or 1000) * len(gpus)


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


def measure(nodes: int, pods: int, policy: str, trace: str | None = None, seed: int = 0) -> dict:
    from gpufleet.kube.api import KubeApi
    from gpufleet.kube.client import api_client
    from gpufleet.placement import serve
    from gpufleet.placement.engine import Placer

    argv = [sys.executable, __file__, "--emulator", "--nodes", str(nodes), "--pods", str(pods),
            "--seed", str(seed)] + (["--trace", trace] if trace else [])
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    typical = None
    if trace:
        from gpufleet.placement.sources import load_openb_pods

        typical = load_openb_pods(DATA / f"openb_pod_list_{trace}.csv")
    try:
        url, nodes, pods = (child.stdout.readline().split() + ["", "0", "0"])[:3]
        nodes, pods = int(nodes), int(pods)
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
            config = serve.ServeConfig(policy=policy, identity="bench", seed=seed, typical_requests=typical,
                                       backoff_initial=60, backoff_max=60)
            scheduler = serve.GpuScheduler(api, config)
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
            # Done when every pod is bound or was refused once (and waits out a long back-off).
            while bound._value.get() + len(scheduler.queue.attempts) < pods:
                if time.perf_counter() - synced > 900:
                    raise SystemExit(f"only {bound._value.get():.0f} of {pods} bound after 900 s")
                time.sleep(0.002)
            done = time.perf_counter()
            allocated = sum(allocated_milli(p) for p in scheduler.cache.bound.values())
            capacity = 1000 * sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0))
                                  for n in scheduler.cache.nodes.values())
            refused = len(scheduler.queue.attempts)
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
        "nodes": nodes, "pods": pods, "policy": policy, "bound": pods - refused, "refused": refused,
        "allocation_pct": 100 * allocated / capacity if capacity else 0.0,
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
    parser.add_argument("--trace", choices=("default", "gpushare40", "multigpu50"),
                        help="Replay this openb trace through the live path and compare with `place replay`.")
    parser.add_argument("--seed", type=int, default=0,
                        help="Arrival order and tie-break seed (with --trace).")
    args = parser.parse_args()
    if args.emulator:
        serve_emulator((args.nodes or [0])[0], args.pods, args.trace, args.seed)
        return
    if args.trace:
        compare_with_replay(args.trace, args.seed, args.policy)
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


def compare_with_replay(trace: str, seed: int, policy: str | None) -> None:
    from gpufleet.placement.replay import replay
    from gpufleet.placement.serve import DEFAULT_POLICY
    from gpufleet.placement.sources import load_openb_nodes, load_openb_pods

    policy = policy or DEFAULT_POLICY
    live = measure(0, 0, policy, trace, seed)
    offline = replay(load_openb_nodes(DATA / "openb_node_list_gpu_node.csv"),
                     load_openb_pods(DATA / f"openb_pod_list_{trace}.csv"), policy, seed)
    print(f"trace {trace}, policy {policy}, seed {seed}: {live['pods']} tasks on {live['nodes']} nodes")
    print(f"  live path:  {live['bound']} placed, {live['refused']} refused, "
          f"allocation {live['allocation_pct']:.3f} %, {live['pods_per_second']:.0f} pods/s")
    print(f"  replay:     {offline['placed_tasks']} placed, {offline['failed_tasks']} refused, "
          f"allocation {offline['final_allocation_pct']:.3f} %")


if __name__ == "__main__":
    main()
