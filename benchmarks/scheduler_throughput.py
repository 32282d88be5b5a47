"""Pods bound per second by `gpufleet place serve`, end to end over HTTP through the API emulator.

    python benchmarks/scheduler_throughput.py                       # 1,000 and 5,000 nodes
    python benchmarks/scheduler_throughput.py --nodes 5000 --pods 5000 --policy best_fit
    python benchmarks/scheduler_throughput.py --trace default --seed 0   # live path vs replay

The emulator (tests/fixtures/kube_emulator.py, the same one the tests use) runs in
its own process, seeded with N nodes of 8 GPUs and P pending one-GPU pods whose
schedulerName is gpufleet. The scheduler runs here, unchanged, with its real loop:
LIST + watches, queue, engine, a pool of binding requests. Reported: the time from
leading (model loaded) to the last binding answered, pods bound per second, and
where the CPU went — per pod, of the scheduler process (by thread: loop, binding
workers, watches) and of the emulator's; the engine's rate inside the run (per
engine CPU second: wall time on the loop thread includes waiting for the GIL)
and alone (same fleet, pods and policy, no API); the binding requests' latency;
the load average (the machine may be shared) — to say which part limits throughput.

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
    """Wraps a method to add up the seconds spent in it (on the scheduler's loop thread).

    `seconds` is wall time, which includes waiting for the GIL while the binding
    and watch threads run; `cpu_seconds` is the calling thread's own CPU time:
    what the engine itself costs.
    """

    def __init__(self, owner, name: str) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.calls = 0
        self.owner, self.name = owner, name
        self.original = original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.cpu_seconds += time.thread_time() - cpu
                self.calls += 1

        setattr(owner, name, wrapper)

    def restore(self) -> None:
        setattr(self.owner, self.name, self.original)


def process_cpu(pid: int | str) -> float:
    """User + system CPU seconds of a process (or "pid/task/tid": a thread) so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_alone(nodes: int, pods: int, policy: str) -> float:
    """Decisions per second of the engine alone (decide + commit, one thread, no API) on the same
    fleet, pods and policy as the live run: what the scheduler could decide if binding were free."""
    from gpufleet.placement.serve import ClusterCache
    from gpufleet.placement.workloads import request_from_item

    node_objects, pod_objects = synthetic_objects(nodes, pods)
    cache = ClusterCache("gpufleet")
    for node in node_objects:
        cache.on_node("ADDED", node)
    placer = cache.placer(policy, 0)
    requests = [request_from_item({"kind": "Pod", **pod}) for pod in pod_objects]
    start = time.thread_time()
    for request in requests:
        decision = placer.decide(request, report=False)
        if decision.placed:
            placer.commit(decision)
    return len(requests) / (time.thread_time() - start)


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads so far, by role (Python thread name without its number)."""
    by_role: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            cpu = process_cpu(f"{os.getpid()}/task/{thread.native_id}")
        except OSError:
            continue
        role = thread.name.split("_")[0].split("-")[0] if thread.name.startswith(("bind", "watch")) \
            else thread.name
        by_role[role] = by_role.get(role, 0.0) + cpu
    return by_role


def measure(nodes: int, pods: int, policy: str, trace: str | None = None, seed: int = 0,
            bind_workers: int | None = None) -> dict:
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
            config = serve.ServeConfig(policy=policy, identity="bench", seed=seed, typical_requests=typical,
                                       backoff_initial=60, backoff_max=60)
            if bind_workers:
                config.bind_workers = bind_workers
            api = KubeApi(api_client(kubeconfig=str(kubeconfig), request_timeout=30,
                                     connections=config.connections))
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
            thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True, name="loop")
            started = time.perf_counter()
            thread.start()
            while not scheduler.synced:
                time.sleep(0.001)
            synced = time.perf_counter()
            cpu_here, cpu_emulator = time.process_time(), process_cpu(child.pid)
            load_before = os.getloadavg()[0]
            threads_before = thread_cpu()
            bound = scheduler.metrics.bindings.labels(result="ok")
            # Done when every pod is bound or was refused once (and waits out a long back-off).
            while bound._value.get() + len(scheduler.queue.attempts) < pods:
                if time.perf_counter() - synced > 900:
                    raise SystemExit(f"only {bound._value.get():.0f} of {pods} bound after 900 s")
                time.sleep(0.002)
            done = time.perf_counter()
            cpu_here, cpu_emulator = time.process_time() - cpu_here, process_cpu(child.pid) - cpu_emulator
            threads = {role: cpu - threads_before.get(role, 0.0) for role, cpu in thread_cpu().items()}
            allocated = sum(allocated_milli(p) for p in scheduler.cache.bound.values())
            capacity = 1000 * sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0))
                                  for n in scheduler.cache.nodes.values())
            refused = len(scheduler.queue.attempts)
            # A binding refused by the API (409: bound already) would show here: none is expected.
            binding_errors = int(scheduler.metrics.bindings.labels(result="error")._value.get())
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
        "engine_seconds": decide.seconds, "engine_cpu_seconds": decide.cpu_seconds, "decisions": decide.calls,
        "decisions_per_second": decide.calls / decide.cpu_seconds if decide.cpu_seconds else float("inf"),
        "scheduler_cpu_ms_per_pod": 1000 * cpu_here / max(pods, 1),
        "emulator_cpu_ms_per_pod": 1000 * cpu_emulator / max(pods, 1),
        "load_average": (load_before + os.getloadavg()[0]) / 2,
        "thread_cpu_ms_per_pod": {role: 1000 * cpu / max(pods, 1) for role, cpu in sorted(threads.items())
                                  if cpu > 0},
        "model_builds": build.calls, "model_build_seconds": build.seconds,
        "bind_p50_ms": 1000 * binds[len(binds) // 2], "bind_p99_ms": 1000 * binds[int(len(binds) * 0.99)],
        "bind_workers": config.bind_workers,
        "binding_errors": binding_errors,
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
    parser.add_argument("--bind-workers", type=int, default=None,
                        help="Binding requests in flight (default: the scheduler's).")
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
    print(f"policy {policy}; CPU ms per pod: the scheduler process (sched) and the emulator's (emu); "
          "engine: wall s on the loop thread / its own CPU s, dec/s per engine CPU second; "
          "alone: the engine's decisions/s without the API")
    print(f"{'nodes':>6} {'pods':>6} {'sync s':>7} {'bind-all s':>10} {'pods/s':>8} {'engine s':>12} "
          f"{'dec/s':>7} {'alone':>6} {'sched ms':>8} {'emu ms':>7} {'builds':>6} {'bind p50/p99 ms':>16} "
          f"{'load':>5}")
    for nodes in args.nodes or [1000, 5000]:
        r = measure(nodes, args.pods, policy, bind_workers=args.bind_workers)
        alone = engine_alone(nodes, args.pods, policy)
        print(f"{r['nodes']:>6} {r['pods']:>6} {r['sync_seconds']:>7.2f} {r['bind_all_seconds']:>10.2f} "
              f"{r['pods_per_second']:>8.0f} {r['engine_seconds']:>5.2f}/{r['engine_cpu_seconds']:<6.2f} "
              f"{r['decisions_per_second']:>7.0f} {alone:>6.0f} {r['scheduler_cpu_ms_per_pod']:>8.3f} "
              f"{r['emulator_cpu_ms_per_pod']:>7.3f} {r['model_builds']:>6} "
              f"{r['bind_p50_ms']:>7.1f}/{r['bind_p99_ms']:<7.1f} {r['load_average']:>5.1f}", flush=True)
        print("        scheduler CPU ms per pod by thread: " + ", ".join(
            f"{role} {ms:.3f}" for role, ms in r["thread_cpu_ms_per_pod"].items()), flush=True)
    print(f"(cores: {os.cpu_count()}; emulator in its own process; {r['bind_workers']} binding workers; "
          f"{r['binding_errors']} bindings refused in the last run)")


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
          f"allocation {live['allocation_pct']:.3f} %, {live['pods_per_second']:.0f} pods/s, "
          f"{live['binding_errors']} bindings refused")
    print(f"  replay:     {offline['placed_tasks']} placed, {offline['failed_tasks']} refused, "
          f"allocation {offline['final_allocation_pct']:.3f} %")


if __name__ == "__main__":
    main()
