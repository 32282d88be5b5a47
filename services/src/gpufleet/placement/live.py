"""What `gpufleet place status | workloads | watch | generate-template` read from a live cluster.

Each function reads through gpufleet.kube (deadlines, retries) and returns plain
data; the CLI only prints it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

from gpufleet.kube.api import GPU_WORKLOADS, KUBE_ERRORS, NODES, PODS, KubeApi
from gpufleet.kube.watch import Watch
from gpufleet.placement.gpuworkload import WORKLOAD_LABEL
from gpufleet.placement.kube import cluster_from
from gpufleet.placement.model import MILLI_PER_GPU

FENCE_TAINTS = ("gpufleet.io/unhealthy", "gpufleet.io/quarantine", "gpufleet.io/maintenance")


def _workloads(api: KubeApi, namespace: str | None) -> list[dict] | None:
    """GPUWorkloads, or None when the CRD is not installed."""
    try:
        return api.list(GPU_WORKLOADS, namespace)[0]
    except KUBE_ERRORS as exc:
        if getattr(exc, "status", None) == 404:
            return None
        raise


def scheduler_status(api: KubeApi, scheduler_name: str, lease: str) -> dict:
    """The leader, the queue as the API shows it, fenced nodes and GPU allocation."""
    lease_namespace, _, lease_name = lease.partition("/")
    lease_obj = api.get_lease(lease_namespace, lease_name) or {}
    spec = lease_obj.get("spec") or {}
    nodes, _ = api.list(NODES)
    pods, _ = api.list(PODS)
    ours = [p for p in pods if (p.get("spec") or {}).get("schedulerName") == scheduler_name
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    pending = [p for p in ours if not p["spec"].get("nodeName")]
    unschedulable = [p for p in pending if any(
        c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
        for c in (p.get("status") or {}).get("conditions") or [])]
    cluster = cluster_from(nodes, pods)
    usable = [g for n in cluster.nodes for g in n.gpus if g.health != "fail"]
    allocated = sum(min(g.milli_allocated, MILLI_PER_GPU) for g in usable)
    fenced = sorted(n["metadata"]["name"] for n in nodes
                    if any(t.get("key") in FENCE_TAINTS for t in (n.get("spec") or {}).get("taints") or []))
    workloads = _workloads(api, None)
    return {
        "scheduler": scheduler_name,
        "leader": spec.get("holderIdentity") or None,
        "lease_renewed": spec.get("renewTime"),
        "pods": {"bound": len(ours) - len(pending), "pending": len(pending),
                 "unschedulable": len(unschedulable)},
        "nodes": {"total": len(nodes), "fenced": fenced,
                  "cordoned": sorted(n["metadata"]["name"] for n in nodes
                                     if (n.get("spec") or {}).get("unschedulable"))},
        "gpus": {"usable": len(usable), "failed": sum(len(n.gpus) for n in cluster.nodes) - len(usable),
                 "allocation_ratio": round(allocated / (MILLI_PER_GPU * len(usable)), 4) if usable else 0.0},
        "workloads": None if workloads is None else dict(Counter(
            (w.get("status") or {}).get("phase", "New") for w in workloads)),
    }


def workload_rows(api: KubeApi, namespace: str | None) -> list[dict] | None:
    workloads = _workloads(api, namespace)
    if workloads is None:
        return None
    rows = []
    for workload in sorted(workloads, key=lambda w: (w["metadata"].get("namespace", ""),
                                                     w["metadata"]["name"])):
        status = workload.get("status") or {}
        condition = next(iter(status.get("conditions") or []), {})
        rows.append({
            "namespace": workload["metadata"].get("namespace", "default"),
            "name": workload["metadata"]["name"],
            "replicas": (workload.get("spec") or {}).get("replicas", 1), "placed": status.get("placed", 0),
            "phase": status.get("phase", "New"), "message": condition.get("message", ""),
            "placements": status.get("placements", []),
        })
    return rows


def template(name: str, replicas: int, gpus: int, gpu_milli: int | None, image: str, gang: bool,
             priority: int, models: tuple[str, ...], namespace: str) -> dict:
    spec: dict = {"replicas": replicas, "priority": priority, "gang": gang}
    if gpu_milli:
        spec["gpuMilli"] = gpu_milli
    else:
        spec["gpusPerReplica"] = gpus
    if models:
        spec["gpuModels"] = list(models)
    spec["template"] = {"metadata": {"labels": {"app": name}},
                        "spec": {"restartPolicy": "Never",
                                 "containers": [{"name": "main", "image": image,
                                                 "command": ["nvidia-smi", "-L"]}]}}
    return {"apiVersion": GPU_WORKLOADS.api_version, "kind": GPU_WORKLOADS.kind,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def watch_lines(api: KubeApi, scheduler_name: str, until: float) -> Iterator[str]:
    """One line per change of the scheduler's pods (bound, refused, gone) until `until` (monotonic)."""
    watch = Watch(api, PODS, timeout_seconds=60)
    timer = threading.Timer(max(0.0, until - time.monotonic()), watch.stop)
    timer.daemon = True
    timer.start()
    seen: dict[str, str] = {}
    try:
        for event in watch:
            pod = event.object
            if (pod.get("spec") or {}).get("schedulerName") != scheduler_name:
                continue
            meta = pod["metadata"]
            key = f"{meta.get('namespace', 'default')}/{meta['name']}"
            state = _pod_state(pod) if event.type != "DELETED" else "deleted"
            if seen.get(key) != state:
                seen[key] = state
                workload = (meta.get("labels") or {}).get(WORKLOAD_LABEL)
                yield f"{time.strftime('%H:%M:%S')} {key}{f' ({workload})' if workload else ''}: {state}"
    finally:
        timer.cancel()
        watch.stop()


def _pod_state(pod: dict) -> str:
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        gpus = (pod["metadata"].get("annotations") or {}).get("gpufleet.io/assigned-gpus")
        return f"bound to {node}" + (f" GPUs {gpus}" if gpus else "")
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"unschedulable: {condition.get('message', '')}"
    return "pending"
