"""Placement against a live cluster: the snapshot (one LIST of nodes, one of pods) and the writes.

`place_workloads` is what both `gpufleet place submit/plan` and the
`workload_placement` module run: read the cluster, decide for each workload in
priority order (each decision counted before the next), and — unless checking —
create the object pinned to its node, or patch it if it exists. An object that
already carries a placement is left alone and reported unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from gpufleet.kube.api import DEPLOYMENTS, JOBS, PODS, STRATEGIC_MERGE_PATCH, KubeApi
from gpufleet.placement.assign import default_gpus
from gpufleet.placement.engine import Placer
from gpufleet.placement.fleet import Fleet
from gpufleet.placement.model import (
    ASSIGNED_GPUS_ANNOTATION,
    GPU_MILLI_ANNOTATION,
    GPU_MODEL_LABEL,
    GPUS_ANNOTATION,
    MILLI_PER_GPU,
    Cluster,
    Decision,
    Gpu,
    Node,
    Taint,
)
from gpufleet.placement.sources import parse_cpu_milli, parse_memory_mib
from gpufleet.placement.strategies import Priority, make
from gpufleet.placement.workloads import (
    GPU_RESOURCE,
    existing_placement,
    is_manifest,
    placed_manifest,
    placement_patch,
    request_from_item,
    workload_id,
)

FINISHED_PHASES = ("Succeeded", "Failed")
MODEL_LABELS = (GPU_MODEL_LABEL, "nvidia.com/gpu.product")


class NothingFits(Exception):
    def __init__(self, decisions: list[Decision]) -> None:
        self.decisions = decisions
        super().__init__("; ".join(d.why_not() for d in decisions if not d.placed))


def _node_gpus(node: dict) -> list[Gpu]:
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    raw = (metadata.get("annotations") or {}).get(GPUS_ANNOTATION)
    if raw:
        try:
            inventory = json.loads(raw)
            return [
                Gpu(
                    index=int(g["index"]),
                    model=str(g.get("model", "")),
                    memory_mib=int(g.get("memory_mib") or 0),
                    health=str(g.get("health", "unknown")),
                    nvlink_peers=tuple(int(p) for p in g.get("nvlink_peers") or ()),
                    uuid=str(g.get("uuid", "")),
                )
                for g in inventory
            ]
        except (ValueError, KeyError, TypeError):
            pass  # a malformed annotation: fall back to the resource count
    status = node.get("status") or {}
    count = int((status.get("allocatable") or status.get("capacity") or {}).get(GPU_RESOURCE, 0) or 0)
    model = next((labels[key] for key in MODEL_LABELS if labels.get(key)), "")
    return [Gpu(index=i, model=model) for i in range(count)]


def node_from_api(node: dict) -> Node:
    metadata, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    allocatable = status.get("allocatable") or status.get("capacity") or {}
    return Node(
        name=metadata["name"],
        cpu_milli=parse_cpu_milli(allocatable.get("cpu", 0)),
        memory_mib=parse_memory_mib(allocatable.get("memory", 0)),
        gpus=_node_gpus(node),
        labels=dict(metadata.get("labels") or {}),
        taints=[
            Taint(t["key"], t.get("value", "") or "", t.get("effect", "NoSchedule"))
            for t in spec.get("taints") or []
        ],
        unschedulable=bool(spec.get("unschedulable")),
    )


def _pod_node(pod: dict) -> str | None:
    spec = pod.get("spec") or {}
    return spec.get("nodeName") or (spec.get("nodeSelector") or {}).get("kubernetes.io/hostname")


def snapshot(api: KubeApi | Any) -> Cluster:
    """Nodes and the pods on them (running, pending or pinned) — one LIST each."""
    api = as_kube_api(api)
    return cluster_from(api.list_nodes(), api.list_pods())


def cluster_from(node_objects: Iterable[dict], pod_objects: Iterable[dict]) -> Cluster:
    """The Cluster of these nodes (API objects) with what these pods hold on them.

    A pod counts on the node it is bound or pinned to, unless it has finished; its
    GPUs are those in `gpufleet.io/assigned-gpus`, else the lowest free ones.
    """
    nodes = {n.name: n for n in (node_from_api(item) for item in node_objects)}
    placed = []
    for pod in pod_objects:
        if (pod.get("status") or {}).get("phase") in FINISHED_PHASES:
            continue
        node = nodes.get(_pod_node(pod) or "")
        if node is None:
            continue
        manifest = {"kind": "Pod", **pod}
        request = request_from_item(manifest)
        node.cpu_allocated += request.cpu_milli
        node.memory_allocated += request.memory_mib
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        assigned = annotations.get(ASSIGNED_GPUS_ANNOTATION)
        by_index = {gpu.index: gpu for gpu in node.gpus}
        if assigned:
            indices = [int(i) for i in str(assigned).split(",") if i.strip().isdigit()]
        else:  # placed by someone else: assume the lowest free GPUs
            free = [gpu.milli_free if gpu.index in by_index else 0 for gpu in node.gpus]
            indices = list(default_gpus(free, request))
        milli = int(annotations.get(GPU_MILLI_ANNOTATION) or 0) or MILLI_PER_GPU
        for index in indices:
            if index in by_index:
                by_index[index].milli_allocated = min(MILLI_PER_GPU, by_index[index].milli_allocated + milli)
        node.workloads.append(request.name)
        placed.append(request)
    return Cluster(nodes=sorted(nodes.values(), key=lambda n: n.name), workload_requests=placed)


# -- reading and writing workload objects ---------------------------------------------------

PLACEABLE = {"Pod": PODS, "Job": JOBS, "Deployment": DEPLOYMENTS}


def as_kube_api(api: KubeApi | Any) -> KubeApi:
    """A KubeApi from a KubeApi or an ApiClient made by gpufleet.kube.client."""
    return api if isinstance(api, KubeApi) else KubeApi(api)


def _resource(kind: str):
    if kind not in PLACEABLE:
        raise ValueError(f"cannot place a {kind!r}")
    return PLACEABLE[kind]


def read_object(api: KubeApi, manifest: dict) -> dict | None:
    metadata = manifest["metadata"]
    namespace = metadata.get("namespace", "default")
    live = api.get_or_none(_resource(manifest["kind"]), metadata["name"], namespace)
    return None if live is None else {"kind": manifest["kind"], **live}


def write_object(api: KubeApi, manifest: dict, live: dict | None, decision: Decision, pin: str,
                 visible_devices: bool) -> str:
    """Create the placed object, or patch the live one — guarded by the resourceVersion read, so a
    change made since the decision fails with 409 instead of being overwritten."""
    resource = _resource(manifest["kind"])
    namespace = manifest["metadata"].get("namespace", "default")
    if live is None:
        body = placed_manifest(manifest, decision, pin, visible_devices)
        body.setdefault("metadata", {}).setdefault("namespace", namespace)
        api.create(resource, body, namespace)
        return "created"
    patch = placement_patch(live, decision, pin, visible_devices)
    patch.setdefault("metadata", {})["resourceVersion"] = live["metadata"]["resourceVersion"]
    api.patch(resource, manifest["metadata"]["name"], patch, namespace, content_type=STRATEGIC_MERGE_PATCH)
    return "patched"


# -- the whole operation --------------------------------------------------------------------


def place_workloads(
    api: KubeApi | Any,
    items: Sequence[Any],
    strategy: str = "best_fit",
    tie_break: Sequence[str] = ("topology",),
    seed: int = 0,
    check: bool = False,
    pin: str = "node_selector",
    visible_devices: bool = False,
    strategy_options: dict | None = None,
    cluster: Cluster | None = None,
) -> dict[str, Any]:
    """Decide (and unless `check`, apply) a placement for each item; a list goes in priority order.

    Returns {"changed": bool, "placements": [...]}; raises NothingFits if any item fits nowhere
    (after placing none of them when not checking: decisions are all made before any write).
    """
    api = as_kube_api(api)
    cluster = cluster if cluster is not None else snapshot(api)
    fleet = Fleet(cluster)
    chain = [make(strategy, **(strategy_options or {}))] + [
        make(name) for name in tie_break if name != strategy
    ]
    placer = Placer(fleet, chain, seed=seed)

    requests = [request_from_item(item, sequence) for sequence, item in enumerate(items)]
    fleet.typical_requests = fleet.typical_requests + requests  # FGD's typical tasks: placed and asked
    queue = chain[0] if isinstance(chain[0], Priority) else Priority()
    # In queue order: a finished entry (already placed) or a decision still to be written.
    planned: list[dict[str, Any] | tuple[Decision, dict | None, dict | None]] = []
    failures: list[Decision] = []
    for request in queue.order(requests):
        manifest = request.source if is_manifest(request.source) else None
        live = read_object(api, manifest) if manifest is not None else None
        already = existing_placement(live)
        if already is not None:
            planned.append(
                {
                    "workload": workload_id(manifest),
                    "node": already["node"],
                    "gpus": already.get("gpus", []),
                    "score": already.get("score"),
                    "runner_up": None,
                    "strategy": already.get("strategy"),
                    "changed": False,
                    "action": "already placed",
                }
            )
            continue
        decision = placer.place(request)
        if decision.placed:
            planned.append((decision, manifest, live))
        else:
            failures.append(decision)
    if failures:
        raise NothingFits(failures)
    results: list[dict[str, Any]] = []
    for item in planned:
        if isinstance(item, dict):
            results.append(item)
            continue
        decision, manifest, live = item
        entry = decision.as_dict()
        if manifest is None:
            entry.update(changed=False, action="decided")
        elif check:
            entry.update(changed=True, action="would create" if live is None else "would patch")
        else:
            entry.update(
                changed=True, action=write_object(api, manifest, live, decision, pin, visible_devices)
            )
        results.append(entry)
    return {"changed": any(r["changed"] for r in results), "placements": results}
