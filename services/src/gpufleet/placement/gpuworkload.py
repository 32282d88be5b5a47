"""`GPUWorkload` (gpufleet.io/v1alpha1): a GPU job of N replicas, placed by `gpufleet place serve`.

    apiVersion: gpufleet.io/v1alpha1
    kind: GPUWorkload
    metadata: {name: train, namespace: ml}
    spec:
      replicas: 4              # pods
      gpusPerReplica: 2        # whole GPUs each; or gpuMilli: 500 for a share of one GPU
      gpuModels: [NVIDIA-H100-80GB-HBM3]
      priority: 10
      strategy: best_fit       # optional; else the scheduler's policy
      gang: true               # all replicas placed at once, or none
      template: {metadata: {...}, spec: {containers: [...]}}   # a pod template
    status:                    # written by the scheduler
      phase: Pending | PartiallyPlaced | Placed
      replicas: 4
      placed: 4
      placements: [{pod: train-0, node: gpu-07, gpus: [0, 1]}, ...]
      conditions: [{type: Placed, status: "True", reason: AllPlaced, message: ...}]

The scheduler creates the pods (`<name>-<i>`, owned by the workload, labelled
`gpufleet.io/workload`, schedulerName gpufleet) and keeps the status current.
There is no `GPUNode` kind: a node's GPUs, their health and the verdict are on
the Node already (`gpufleet.io/gpus`, `gpufleet.io/health`, the GpuHealthy
condition), and a second object would be a second truth to keep in step.
"""

from __future__ import annotations

import copy
import time

from gpufleet.placement.model import ASSIGNED_GPUS_ANNOTATION, GPU_MILLI_ANNOTATION, MILLI_PER_GPU
from gpufleet.placement.workloads import GPU_MODELS_ANNOTATION, GPU_RESOURCE, PRIORITY_ANNOTATION

WORKLOAD_LABEL = "gpufleet.io/workload"
GANG_ANNOTATION = "gpufleet.io/gang"
GANG_SIZE_ANNOTATION = "gpufleet.io/gang-size"
STRATEGY_ANNOTATION = "gpufleet.io/strategy"
MAX_REPLICAS = 10_000


class WorkloadError(ValueError):
    """A GPUWorkload the scheduler cannot act on; the message goes into its status."""


def validate(workload: dict) -> dict:
    """The spec, checked; a WorkloadError names the field and what it must be."""
    spec = workload.get("spec")
    if not isinstance(spec, dict):
        raise WorkloadError("spec: required")
    replicas = spec.get("replicas", 1)
    gpus = spec.get("gpusPerReplica", 0 if spec.get("gpuMilli") else 1)
    milli = spec.get("gpuMilli")
    checks = [
        (isinstance(replicas, int) and 1 <= replicas <= MAX_REPLICAS, f"spec.replicas: 1..{MAX_REPLICAS}"),
        (isinstance(gpus, int) and 0 <= gpus <= 64, "spec.gpusPerReplica: 0..64"),
        (milli is None or (isinstance(milli, int) and 1 <= milli < MILLI_PER_GPU and gpus in (0, 1)),
         "spec.gpuMilli: 1..999, with at most 1 GPU per replica"),
        (isinstance(spec.get("priority", 0), int), "spec.priority: an integer"),
        (isinstance(spec.get("gang", False), bool), "spec.gang: true or false"),
        (isinstance(spec.get("gpuModels", []), list)
         and all(isinstance(m, str) and m and "|" not in m for m in spec.get("gpuModels", [])),
         "spec.gpuModels: a list of GPU model names"),
        (isinstance(spec.get("strategy", ""), str), "spec.strategy: a strategy name"),
        (isinstance((spec.get("template") or {}).get("spec", {}).get("containers"), list)
         and spec["template"]["spec"]["containers"], "spec.template.spec.containers: at least one container"),
    ]
    for ok, message in checks:
        if not ok:
            raise WorkloadError(message)
    return spec


def pod_names(workload: dict) -> list[str]:
    name = workload["metadata"]["name"]
    return [f"{name}-{i}" for i in range(int(workload["spec"].get("replicas", 1)))]


def pods_for(workload: dict, scheduler_name: str) -> list[dict]:
    """The pods a workload asks for, ready to create."""
    spec = validate(workload)
    meta = workload["metadata"]
    template = copy.deepcopy(spec["template"])
    gpus = spec.get("gpusPerReplica", 0 if spec.get("gpuMilli") else 1)
    annotations = {PRIORITY_ANNOTATION: str(spec.get("priority", 0))}
    if spec.get("gpuMilli"):
        annotations[GPU_MILLI_ANNOTATION] = str(spec["gpuMilli"])
        gpus = 1
    if spec.get("gpuModels"):
        annotations[GPU_MODELS_ANNOTATION] = "|".join(spec["gpuModels"])
    if spec.get("strategy"):
        annotations[STRATEGY_ANNOTATION] = spec["strategy"]
    if spec.get("gang"):
        annotations[GANG_ANNOTATION] = meta["name"]
        annotations[GANG_SIZE_ANNOTATION] = str(spec.get("replicas", 1))
    owner = {"apiVersion": workload.get("apiVersion", "gpufleet.io/v1alpha1"), "kind": "GPUWorkload",
             "name": meta["name"], "uid": meta.get("uid", ""), "controller": True, "blockOwnerDeletion": True}
    pods = []
    for name in pod_names(workload):
        pod_meta = copy.deepcopy(template.get("metadata") or {})
        pod_spec = copy.deepcopy(template["spec"])
        pod_meta.update(name=name, namespace=meta.get("namespace", "default"), ownerReferences=[owner])
        pod_meta.setdefault("labels", {})[WORKLOAD_LABEL] = meta["name"]
        pod_meta.setdefault("annotations", {}).update(annotations)
        pod_spec["schedulerName"] = scheduler_name
        pod_spec.pop("nodeName", None)
        # GPUs only through the device plugin's resource, on the first container.
        for container in pod_spec["containers"]:
            for section in ("limits", "requests"):
                (container.setdefault("resources", {}).get(section) or {}).pop(GPU_RESOURCE, None)
        if gpus:
            first = pod_spec["containers"][0].setdefault("resources", {})
            first.setdefault("limits", {})[GPU_RESOURCE] = str(gpus)
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": pod_spec})
    return pods


def status_for(workload: dict, pods: list[dict], unschedulable: str | None = None) -> dict:
    """The status a workload should show, from its pods as they are."""
    replicas = int((workload.get("spec") or {}).get("replicas", 1))
    placements = sorted(
        ({"pod": p["metadata"]["name"], "node": p["spec"]["nodeName"], "gpus": _assigned_gpus(p)}
         for p in pods if (p.get("spec") or {}).get("nodeName")),
        key=lambda placement: placement["pod"])
    placed = len(placements)
    phase = "Placed" if placed >= replicas else ("PartiallyPlaced" if placed else "Pending")
    if placed >= replicas:
        condition = ("True", "AllPlaced", f"{placed}/{replicas} replicas placed")
    elif unschedulable:
        condition = ("False", "Unschedulable", unschedulable)
    else:
        condition = ("False", "Waiting", f"{placed}/{replicas} replicas placed")
    return {"phase": phase, "replicas": replicas, "placed": placed, "placements": placements,
            "conditions": [{"type": "Placed", "status": condition[0], "reason": condition[1],
                            "message": condition[2][:1024]}]}


def _assigned_gpus(pod: dict) -> list[int]:
    raw = (pod["metadata"].get("annotations") or {}).get(ASSIGNED_GPUS_ANNOTATION) or ""
    return [int(g) for g in raw.split(",") if g.strip().isdigit()]


def status_differs(old: dict | None, new: dict) -> bool:
    """Whether writing `new` would change what the status says (transition times aside)."""
    old = old or {}

    def said(status: dict) -> tuple:
        conditions = [(c.get("status"), c.get("reason"), c.get("message"))
                      for c in status.get("conditions") or []]
        return {k: v for k, v in status.items() if k != "conditions"}, conditions

    return said(old) != said(new)


def with_transition_time(new: dict, old: dict | None) -> dict:
    """Keep the condition's lastTransitionTime unless its status changed."""
    old_condition = next(iter((old or {}).get("conditions") or []), {})
    condition = new["conditions"][0]
    if old_condition.get("status") == condition["status"] and old_condition.get("lastTransitionTime"):
        condition["lastTransitionTime"] = old_condition["lastTransitionTime"]
    else:
        condition["lastTransitionTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return new
