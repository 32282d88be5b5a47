"""Draining a node: a pure planner and an executor through the Eviction API.

The planner decides, from the pods on a node, which to evict, in what order
and why the others are left alone:

- DaemonSet pods: skipped (the DaemonSet controller would put them back);
- mirror pods (static pods, annotation kubernetes.io/config.mirror): skipped
  (the kubelet owns them, the API cannot remove them);
- pods already terminating, or finished (Succeeded/Failed): skipped;
- pods with emptyDir volumes: their scratch data is lost, so they BLOCK the
  drain unless `delete_emptydir_data`;
- pods no controller owns: nothing recreates them, so they BLOCK the drain
  unless `delete_unmanaged` (kubectl's --force).

Order: lowest pod priority first (`spec.priority`, like the kubelet's own
eviction), then namespace/name, so the most important workloads run longest.

The executor posts evictions, retries PodDisruptionBudget refusals (429) with
exponential backoff until `timeout`, then waits until the evicted pods are gone
(one LIST of the node's pods per poll).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kubernetes.client.rest import ApiException

from gpufleet.kube.api import KubeApi, api_error_message

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str = ""
    priority: int = 0
    gpus: int = 0

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class DrainPlan:
    evict: list[PodRef] = field(default_factory=list)
    skipped: list[tuple[PodRef, str]] = field(default_factory=list)  # left alone, with the reason
    blocking: list[tuple[PodRef, str]] = field(default_factory=list)  # prevent the drain, with the reason

    @property
    def ok(self) -> bool:
        return not self.blocking

    def as_dict(self) -> dict:
        return {"evict": [str(p) for p in self.evict],
                "skipped": [{"pod": str(p), "reason": r} for p, r in self.skipped],
                "blocking": [{"pod": str(p), "reason": r} for p, r in self.blocking]}


def pod_gpus(pod: dict) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get(GPU_RESOURCE) or (resources.get("requests") or {}).get(
            GPU_RESOURCE)
        total += int(amount or 0)
    return total


def pod_ref(pod: dict) -> PodRef:
    meta = pod.get("metadata") or {}
    return PodRef(meta.get("namespace", "default"), meta["name"], meta.get("uid", ""),
                  int((pod.get("spec") or {}).get("priority") or 0), pod_gpus(pod))


def controller_kind(pod: dict) -> str | None:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("kind")
    return None


def skip_reason(pod: dict, delete_emptydir_data: bool, delete_unmanaged: bool) -> tuple[str, str] | None:
    """("skip"|"block", why) for a pod the drain does not evict, or None to evict it."""
    meta = pod.get("metadata") or {}
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return "skip", "mirror pod (static, managed by the kubelet)"
    kind = controller_kind(pod)
    if kind == "DaemonSet":
        return "skip", "DaemonSet pod"
    if meta.get("deletionTimestamp"):
        return "skip", "already terminating"
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return "skip", "finished"
    volumes = (pod.get("spec") or {}).get("volumes") or []
    if not delete_emptydir_data and any("emptyDir" in volume for volume in volumes):
        return "block", "uses emptyDir (local data would be lost; allow with delete_emptydir_data)"
    if kind is None and not delete_unmanaged:
        return "block", "not managed by a controller (would not be recreated; allow with delete_unmanaged)"
    return None


def plan_drain(pods: list[dict], delete_emptydir_data: bool = False,
               delete_unmanaged: bool = False) -> DrainPlan:
    """Which pods to evict (ordered), which to skip and which block the drain. Pure."""
    plan = DrainPlan()
    for pod in pods:
        verdict = skip_reason(pod, delete_emptydir_data, delete_unmanaged)
        if verdict is None:
            plan.evict.append(pod_ref(pod))
        elif verdict[0] == "skip":
            plan.skipped.append((pod_ref(pod), verdict[1]))
        else:
            plan.blocking.append((pod_ref(pod), verdict[1]))
    plan.evict.sort(key=lambda p: (p.priority, p.namespace, p.name))
    return plan


@dataclass
class DrainResult:
    ok: bool
    evicted: list[str] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)  # pod -> how many 429s it got
    not_evicted: list[str] = field(default_factory=list)
    still_terminating: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    message: str = ""

    def as_dict(self) -> dict:
        return {"ok": self.ok, "evicted": self.evicted, "refusals": self.refusals,
                "not_evicted": self.not_evicted, "still_terminating": self.still_terminating,
                "elapsed": round(self.elapsed, 2), "message": self.message}


def execute_drain(
    api: KubeApi,
    node: str,
    plan: DrainPlan,
    timeout: float = 300,
    grace_period: int | None = None,
    wait: bool = True,
    backoff: float = 1.0,
    max_backoff: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DrainResult:
    """Evict the plan's pods, retrying PDB refusals until `timeout`, then wait until they are gone."""
    start = clock()
    deadline = start + timeout
    pending = list(plan.evict)
    result = DrainResult(ok=False)
    delay = backoff
    last_refusal: dict[str, str] = {}
    while pending:
        for pod in list(pending):
            try:
                api.evict_pod(pod.namespace, pod.name, grace_period)
            except ApiException as exc:
                if exc.status == 404:  # already gone
                    pending.remove(pod)
                    continue
                if exc.status == 429:  # PodDisruptionBudget says not now
                    result.refusals[str(pod)] = result.refusals.get(str(pod), 0) + 1
                    last_refusal[str(pod)] = api_error_message(exc)
                    continue
                raise
            pending.remove(pod)
            result.evicted.append(str(pod))
        if not pending:
            break
        if clock() + delay > deadline:
            result.not_evicted = [str(p) for p in pending]
            result.elapsed = clock() - start
            reasons = "; ".join(f"{p}: refused {result.refusals.get(p, 0)} times ({last_refusal.get(p, '?')})"
                                for p in result.not_evicted)
            result.message = (f"drain of {node} timed out after {timeout:g}s: "
                              f"{len(pending)} pod(s) not evicted: {reasons}")
            return result
        sleep(delay)
        delay = min(delay * 2, max_backoff)

    if wait:
        evicted_uids = {p.uid or str(p) for p in plan.evict}
        delay = backoff
        while True:
            left = [p for p in api.list_pods_on_node(node)
                    if (p["metadata"].get("uid") or f"{p['metadata']['namespace']}/{p['metadata']['name']}")
                    in evicted_uids]
            if not left:
                break
            if clock() + delay > deadline:
                result.still_terminating = [str(pod_ref(p)) for p in left]
                result.elapsed = clock() - start
                result.message = (f"drain of {node} timed out after {timeout:g}s: {len(left)} evicted pod(s) "
                                  f"still terminating: {', '.join(result.still_terminating)}")
                return result
            sleep(delay)
            delay = min(delay * 2, max_backoff)
    result.ok = True
    result.elapsed = clock() - start
    result.message = f"drained {node}: {len(result.evicted)} pod(s) evicted"
    return result
