"""Workload manifests (Pod, Job, Deployment) ↔ requests, and the placement written back.

What a manifest asks for (summed over its pod template's containers; requests,
else limits):
- `cpu`, `memory`; `nvidia.com/gpu` whole GPUs;
- a GPU share: annotation `gpufleet.io/gpu-milli: "500"` (one GPU, 500 milli);
- accepted GPU models: annotation `gpufleet.io/gpu-models: "A100|H100"`;
- priority: annotation `gpufleet.io/priority`, else `spec.priority`;
- node selector and tolerations from the pod spec.

What placing it writes: `nodeSelector: {kubernetes.io/hostname: NODE}` (or a
required node affinity on that hostname), annotations `gpufleet.io/assigned-gpus`
("0,1") and `gpufleet.io/placement` (JSON: node, gpus, strategy, score) on the
object and its pod template, and — only when asked — `NVIDIA_VISIBLE_DEVICES`
in every container.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from gpufleet.placement.model import (
    ASSIGNED_GPUS_ANNOTATION,
    GPU_MILLI_ANNOTATION,
    HOSTNAME_LABEL,
    MILLI_PER_GPU,
    PLACEMENT_ANNOTATION,
    Decision,
    Request,
)
from gpufleet.placement.sources import (
    parse_cpu_milli,
    parse_memory_mib,
    request_from_dict,
    toleration_from_dict,
)

GPU_RESOURCE = "nvidia.com/gpu"
GPU_MODELS_ANNOTATION = "gpufleet.io/gpu-models"
PRIORITY_ANNOTATION = "gpufleet.io/priority"
KINDS = ("Pod", "Job", "Deployment")


def is_manifest(item: Any) -> bool:
    return isinstance(item, dict) and "kind" in item and "metadata" in item


def pod_template(manifest: dict) -> tuple[dict, dict]:
    """(pod metadata, pod spec) of a Pod, Job or Deployment — the dicts inside `manifest`."""
    kind = manifest.get("kind")
    if kind == "Pod":
        return manifest.setdefault("metadata", {}), manifest.setdefault("spec", {})
    if kind in ("Job", "Deployment"):
        template = manifest.setdefault("spec", {}).setdefault("template", {})
        return template.setdefault("metadata", {}), template.setdefault("spec", {})
    raise ValueError(f"cannot place a {kind!r}: one of {', '.join(KINDS)}")


def workload_id(manifest: dict) -> str:
    metadata = manifest.get("metadata", {})
    return f"{manifest.get('kind')}/{metadata.get('namespace', 'default')}/{metadata.get('name')}"


def _annotation(manifest: dict, key: str) -> str | None:
    pod_metadata, _ = pod_template(manifest)
    for metadata in (manifest.get("metadata") or {}, pod_metadata):
        value = (metadata.get("annotations") or {}).get(key)
        if value not in (None, ""):
            return str(value)
    return None


def request_from_manifest(manifest: dict, sequence: int = 0) -> Request:
    pod_metadata, spec = pod_template(copy.deepcopy(manifest))
    cpu = memory = gpus = 0
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        cpu += parse_cpu_milli(requests.get("cpu", limits.get("cpu")))
        memory += parse_memory_mib(requests.get("memory", limits.get("memory")))
        gpus += int(limits.get(GPU_RESOURCE, requests.get(GPU_RESOURCE, 0)) or 0)
    milli = _annotation(manifest, GPU_MILLI_ANNOTATION)
    models = _annotation(manifest, GPU_MODELS_ANNOTATION)
    priority = _annotation(manifest, PRIORITY_ANNOTATION)
    selector = {k: str(v) for k, v in (spec.get("nodeSelector") or {}).items() if k != HOSTNAME_LABEL}
    return Request(
        name=workload_id(manifest),
        cpu_milli=cpu,
        memory_mib=memory,
        num_gpu=max(gpus, 1) if milli else gpus,
        gpu_milli=int(milli) if milli else (MILLI_PER_GPU if gpus else 0),
        gpu_models=tuple(sorted(m for m in (models or "").split("|") if m)),
        priority=int(priority) if priority is not None else int(spec.get("priority") or 0),
        node_selector=selector,
        tolerations=[toleration_from_dict(t) for t in spec.get("tolerations") or []],
        sequence=sequence,
        source=manifest,
    )


def request_from_item(item: Any, sequence: int = 0) -> Request:
    """A manifest, or a plain resource request dict."""
    if is_manifest(item):
        return request_from_manifest(item, sequence)
    if isinstance(item, dict):
        return request_from_dict(item, sequence)
    raise ValueError(f"not a workload manifest or a resource request: {item!r}")


def existing_placement(manifest: dict | None) -> dict | None:
    """The placement recorded on a live object, if it has one."""
    if not manifest:
        return None
    raw = _annotation(manifest, PLACEMENT_ANNOTATION)
    if not raw:
        return None
    try:
        placement = json.loads(raw)
    except ValueError:
        return None
    return placement if isinstance(placement, dict) and placement.get("node") else None


def placement_record(decision: Decision) -> dict[str, Any]:
    return {
        "node": decision.node,
        "gpus": list(decision.gpus),
        "strategy": decision.strategy,
        "score": decision.score,
    }


def placed_manifest(
    manifest: dict, decision: Decision, pin: str = "node_selector", visible_devices: bool = False
):
    """A copy of `manifest` pinned to the decision's node and GPUs."""
    placed = copy.deepcopy(manifest)
    pod_metadata, spec = pod_template(placed)
    gpus = ",".join(str(g) for g in decision.gpus)
    record = json.dumps(placement_record(decision), sort_keys=True)
    for metadata in {id(m): m for m in (placed.setdefault("metadata", {}), pod_metadata)}.values():
        annotations = metadata.setdefault("annotations", {}) or {}
        annotations[ASSIGNED_GPUS_ANNOTATION] = gpus
        annotations[PLACEMENT_ANNOTATION] = record
        metadata["annotations"] = annotations
    if pin == "node_affinity":
        spec["affinity"] = dict(spec.get("affinity") or {})
        spec["affinity"]["nodeAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": HOSTNAME_LABEL, "operator": "In", "values": [decision.node]}
                        ]
                    }
                ]
            }
        }
    else:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), HOSTNAME_LABEL: decision.node}
    if visible_devices and decision.gpus:
        for container in spec.get("containers") or []:
            env = [e for e in container.get("env") or [] if e.get("name") != "NVIDIA_VISIBLE_DEVICES"]
            env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": gpus})
            container["env"] = env
    return placed


def placement_patch(manifest: dict, decision: Decision, pin: str, visible_devices: bool) -> dict:
    """A merge patch that pins an existing object (metadata and pod template only)."""
    placed = placed_manifest(manifest, decision, pin, visible_devices)
    patch: dict = {"metadata": {"annotations": placed["metadata"]["annotations"]}}
    if placed["kind"] == "Pod":
        patch["spec"] = {
            key: placed["spec"][key] for key in ("nodeSelector", "affinity") if key in placed["spec"]
        }
        if visible_devices:
            patch["spec"]["containers"] = placed["spec"].get("containers")
    else:
        patch["spec"] = {"template": placed["spec"]["template"]}
    return patch
