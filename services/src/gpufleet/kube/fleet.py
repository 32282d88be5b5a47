"""The GPU fleet as seen from the API: one LIST of nodes, summarised per node.

`list_fleet` never reads nodes one by one: everything a playbook or an AWX
survey needs (health, severity, taints, cordon, quarantine, GPU inventory)
is on the node object already.
"""

from __future__ import annotations

import json

from gpufleet.kube.api import KubeApi
from gpufleet.kube.taints import TAINT_MAINTENANCE, TAINT_QUARANTINE, TAINT_UNHEALTHY

GPU_RESOURCE = "nvidia.com/gpu"
LABEL_HEALTH = "gpufleet.io/health"
LABEL_SEVERITY = "gpufleet.io/severity"
LABEL_LAST_CHECK = "gpufleet.io/last-check"
LABEL_GPU_COUNT = "gpufleet.io/gpu-count"
LABEL_GPU_MODEL = "gpufleet.io/gpu-model"
ANNOTATION_GPUS = "gpufleet.io/gpus"
ANNOTATION_HEALTH_REPORT = "gpufleet.io/health-report"
ANNOTATION_QUARANTINE = "gpufleet.io/quarantine"
ANNOTATION_QUARANTINE_RESULT = "gpufleet.io/quarantine-result"

# The states fleet_health_info filters on (a node can be in several).
STATES = ("healthy", "warning", "unhealthy", "unknown", "quarantined", "cordoned", "maintenance",
          "not_ready", "schedulable", "idle", "busy")


def load_json_annotation(annotations: dict, key: str):
    raw = annotations.get(key)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"unparsable": raw}


def gpu_count(node: dict) -> int:
    status = node.get("status") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    for source in ((status.get("capacity") or {}).get(GPU_RESOURCE), labels.get(LABEL_GPU_COUNT),
                   labels.get("nvidia.com/gpu.count")):
        try:
            if source is not None:
                return int(source)
        except ValueError:
            continue
    return 0


def is_gpu_node(node: dict) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return gpu_count(node) > 0 or labels.get("nvidia.com/gpu.present") == "true"


def is_ready(node: dict) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def node_summary(node: dict) -> dict:
    """One node as fleet_health_info reports it."""
    meta = node.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    taints = list((node.get("spec") or {}).get("taints") or [])
    taint_keys = {t.get("key") for t in taints}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    quarantine = load_json_annotation(annotations, ANNOTATION_QUARANTINE)
    health = labels.get(LABEL_HEALTH, "unknown")
    cordoned = bool((node.get("spec") or {}).get("unschedulable"))
    summary = {
        "name": meta.get("name"),
        "health": health,
        "severity": labels.get(LABEL_SEVERITY, "UNKNOWN"),
        "last_check": labels.get(LABEL_LAST_CHECK),
        "ready": is_ready(node),
        "cordoned": cordoned,
        "taints": taints,
        "unhealthy_taint": TAINT_UNHEALTHY in taint_keys,
        "maintenance": TAINT_MAINTENANCE in taint_keys,
        "quarantined": quarantine is not None or TAINT_QUARANTINE in taint_keys,
        "quarantine": quarantine,
        "quarantine_result": load_json_annotation(annotations, ANNOTATION_QUARANTINE_RESULT),
        "gpu_model": labels.get(LABEL_GPU_MODEL) or labels.get("nvidia.com/gpu.product"),
        "gpu_count": gpu_count(node),
        "gpu_allocatable": int(allocatable.get(GPU_RESOURCE) or 0),
        "gpus": load_json_annotation(annotations, ANNOTATION_GPUS),
        "health_report": load_json_annotation(annotations, ANNOTATION_HEALTH_REPORT),
    }
    summary["states"] = node_states(summary)
    return summary


def node_states(summary: dict) -> list[str]:
    by_health = {"pass": ["healthy"], "warn": ["warning"], "fail": ["unhealthy"]}
    states = list(by_health.get(summary["health"], ["unknown"]))
    if summary["unhealthy_taint"] and "unhealthy" not in states:
        states.append("unhealthy")
    if summary["quarantined"]:
        states.append("quarantined")
    if summary["cordoned"]:
        states.append("cordoned")
    if summary["maintenance"]:
        states.append("maintenance")
    if not summary["ready"]:
        states.append("not_ready")
    if not summary["cordoned"] and not summary["quarantined"] and summary["ready"]:
        states.append("schedulable")
    return states


def list_fleet(api: KubeApi, label_selector: str | None = None, gpu_only: bool = True,
               states: list[str] | None = None, names: list[str] | None = None) -> list[dict]:
    """Summaries of the fleet's nodes from ONE LIST call, filtered (see filter_fleet), sorted by name."""
    summaries = [node_summary(n) for n in api.list_nodes(label_selector) if not gpu_only or is_gpu_node(n)]
    return filter_fleet(sorted(summaries, key=lambda s: s["name"]), states, names)


def attach_workloads(api: KubeApi, summaries: list[dict]) -> list[dict]:
    """Add each node's GPU pods (`gpu_pods`, `gpus_in_use`) and the idle/busy states.

    One more request: the pods of the one node asked about, or one LIST of all
    pods for a fleet. Finished pods do not count; pods already terminating do
    (their GPUs are not free yet).
    """
    from gpufleet.kube.drain import pod_gpus  # the one GPU-request count

    if len(summaries) == 1:
        pods = api.list_pods_on_node(summaries[0]["name"])
    else:
        pods = api.list_pods()
    by_node: dict[str, list[dict]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and pod_gpus(pod):
            by_node.setdefault(node, []).append(pod)
    for summary in summaries:
        gpu_pods = by_node.get(summary["name"], [])
        summary["gpu_pods"] = [f"{p['metadata'].get('namespace')}/{p['metadata']['name']}" for p in gpu_pods]
        summary["gpus_in_use"] = sum(pod_gpus(p) for p in gpu_pods)
        summary["states"] = [s for s in summary["states"] if s not in ("idle", "busy")]
        summary["states"].append("busy" if gpu_pods else "idle")
    return summaries


def filter_fleet(summaries: list[dict], states: list[str] | None = None,
                 names: list[str] | None = None) -> list[dict]:
    """Keep nodes named in `names` (if given) that are in any of `states` (if given)."""
    if names:
        wanted = set(names)
        summaries = [s for s in summaries if s["name"] in wanted]
    if states:
        summaries = [s for s in summaries if set(states) & set(s["states"])]
    return summaries


def fleet_counts(summaries: list[dict]) -> dict:
    counts = {state: 0 for state in STATES}
    for summary in summaries:
        for state in summary["states"]:
            counts[state] = counts.get(state, 0) + 1
    counts["total"] = len(summaries)
    counts["gpus"] = sum(s["gpu_count"] for s in summaries)
    return counts
