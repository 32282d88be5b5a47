"""The Kubernetes node sink: labels, annotations and the fence taint of this node, its GpuHealthy
condition, and an Event on every fence and lift.

One publication is one GET of the node and at most one PATCH (a JSON merge
patch carrying the resourceVersion read, so a concurrent writer makes it 409
and `update_node` recomputes on the fresh node). Nothing is written when the
node already shows the publication; `last-check` alone is refreshed only when
older than `report_refresh`. Placing a NEW fence also makes a LIST for the
circuit breaker — of the fenced nodes only — before the PATCH and again after
it (`_recount`); with a "N%" limit two small LISTs count the GPU nodes after a
publication every ~10 min (BreakerCount). Taints go through
THE taint merge (gpufleet.kube.taints), which keeps the fence label with them.
The GpuHealthy condition is one more PATCH (status subresource) only when its
status, reason or message change; a fence, fence change or lift is one POST
of an Event. All of it through gpufleet.kube (one client factory; every
request bounded by `request_timeout`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpufleet.health.config import KubernetesSettings
from gpufleet.health.fencing import (
    ANNOTATION_FENCE,
    FENCE_EFFECT,
    FenceDecision,
    FenceMemory,
    decide_fence,
    fence_order,
    fenced_by_gpufleet,
    our_fence,
)
from gpufleet.health.sinks.publication import (
    ANNOTATION_HEALTH_REPORT,
    LABEL_LAST_CHECK,
    Publication,
    label_time,
    parse_label_time,
)
from gpufleet.kube.api import KUBE_ERRORS, KubeApi, describe_error, update_node
from gpufleet.kube.client import connect
from gpufleet.kube.conditions import set_node_condition
from gpufleet.kube.events import record_node_event
from gpufleet.kube.fleet import LABEL_GPU_COUNT, is_gpu_node
from gpufleet.kube.nodes import (
    annotations_patch,
    fence_label,
    labels_patch,
    merge_node_patches,
    node_labels,
    node_taint_change,
    taint_patch,
)
from gpufleet.kube.quarantine import OWNER_HEALTH
from gpufleet.kube.taints import LABEL_FENCED, TAINT_UNHEALTHY, fenced_by_gpufleet_taints

log = logging.getLogger("gpufleet.health.kube")


class SinkUnavailable(Exception):
    """No credentials to reach the API (the sink is off, with this reason)."""


@dataclass
class PublishResult:
    changed: bool
    decision: FenceDecision
    patch: dict | None


def open_kube_api(settings: KubernetesSettings) -> KubeApi:
    """A KubeApi from the kubeconfig (k3s's by default) or the in-cluster service account.

    Through gpufleet.kube's one client factory: `request_timeout` bounds every
    request, so a hung API server cannot stall the checks. Raises
    SinkUnavailable when there are no credentials at all.
    """
    kubeconfig = settings.kubeconfig
    if kubeconfig and Path(kubeconfig).is_file() and not settings.in_cluster:
        return connect(request_timeout=settings.request_timeout, kubeconfig=kubeconfig)
    if settings.in_cluster or os.environ.get("KUBERNETES_SERVICE_HOST"):
        return connect(request_timeout=settings.request_timeout)  # no kubeconfig: in-cluster first
    raise SinkUnavailable(
        f"no kubeconfig at {kubeconfig or '(none configured)'} and no in-cluster service account"
    )


GPU_COUNT_REFRESH = 600.0  # seconds between counts of the GPU nodes (+-25 %: agents spread out)


class BreakerCount:
    """The circuit breaker's numbers in small requests, never a LIST of every node.

    Fenced nodes, before every new fence: one LIST with the labelSelector
    `gpufleet.io/fenced` (the label the taint merge writes in the same PATCH as a
    gpufleet fence), so the answer holds the fenced nodes only; each is still
    checked for the fence itself (a label left without its taint does not count).

    GPU nodes, only for a "N%" limit: all nodes (a LIST of one node: the server
    says how many remain) minus those without GPUs (a LIST of the nodes without
    the agent's `gpufleet.io/gpu-count` label — the control plane, CPU nodes —
    each checked). A fleet's size changes slowly: counted after the agent's first
    publication and again when GPU_COUNT_REFRESH has passed, always after a
    publication (`refresh`), so a fence waits for one LIST only; inline only when
    never counted.

    Fleet-wide the count is not a lock: agents whose LIST and fence PATCH
    overlap all see the same count. KubeNodeSink._recount counts again after
    the PATCH and withdraws a fence that `limit` earlier ones are ahead of, and
    once more a few request deadlines later, when no earlier-decided fence can
    still be in flight: past the limit only until then.
    """

    def __init__(self, api: KubeApi, node_name: str, max_fenced: str,
                 clock: Callable[[], float] = time.monotonic):
        self.api = api
        self.node_name = node_name
        self.percent = str(max_fenced).strip().endswith("%")
        self.clock = clock
        self.gpu_nodes: int | None = None
        self.count_due = 0.0

    def count_gpu_nodes(self) -> int:
        without_label = self.api.list_nodes(f"!{LABEL_GPU_COUNT}")
        self.gpu_nodes = self.api.count_nodes() - sum(1 for n in without_label if not is_gpu_node(n))
        self.count_due = self.clock() + GPU_COUNT_REFRESH * random.uniform(0.75, 1.25)
        return self.gpu_nodes

    def refresh(self) -> None:
        """Count the GPU nodes when due (a "N%" limit only); called after a publication."""
        if self.percent and (self.gpu_nodes is None or self.clock() >= self.count_due):
            self.count_gpu_nodes()

    def fenced(self) -> list[dict]:
        """The other GPU nodes carrying a gpufleet fence (one LIST, by the fence label)."""
        return [n for n in self.api.list_nodes(LABEL_FENCED)
                if n["metadata"]["name"] != self.node_name and is_gpu_node(n) and fenced_by_gpufleet(n)]

    def ahead_of(self, node: dict) -> int:
        """How many of the fenced nodes were fenced before `node` (fence_order)."""
        mine = fence_order(node)
        return sum(1 for n in self.fenced() if fence_order(n) < mine)

    def __call__(self) -> dict[str, int]:
        fenced = self.fenced()
        if not self.percent:  # a number of nodes: the size of the fleet does not matter (-1: not counted)
            gpu_nodes = -1
        else:
            gpu_nodes = self.gpu_nodes if self.gpu_nodes is not None else self.count_gpu_nodes()
        return {"gpu_nodes": gpu_nodes, "fenced": len(fenced)}


class KubeNodeSink:
    def __init__(self, api: KubeApi, node_name: str, settings: KubernetesSettings):
        self.api = api
        self.node_name = node_name
        self.settings = settings
        self.breaker = BreakerCount(api, node_name, settings.max_fenced)
        # (limit, time) of our fence until its second count (see _recount); None: nothing to count.
        self._unconfirmed: tuple[int, float] | None = None

    def publish(
        self, publication: Publication, memory: FenceMemory, boot_id: str | None = None
    ) -> PublishResult:
        """Make the node show `publication` and the fence decision; raises KUBE_ERRORS on API failure."""
        settings = self.settings
        decided: dict = {}

        def compute(node: dict) -> dict | None:
            decision = decide_fence(
                node,
                publication.verdict,
                publication.status,
                memory,
                settings.taint_level,
                settings.lift_after,
                settings.max_fenced,
                self.breaker,
                boot_id=boot_id,
                now=publication.time,
            )
            decided["decision"] = decision
            change = decision.taint_change if decision.writes else None
            fenced = (fenced_by_gpufleet_taints(change.after, change.owned_after) if change
                      else fenced_by_gpufleet(node))
            content = merge_node_patches(
                # the fence label follows the fence on this node whoever wrote it (a fence from an
                # agent that predates the label gets it here)
                labels_patch(node, {**publication.labels, **fence_label(fenced)}),
                annotations_patch(node, {**publication.annotations, **decision.annotations()}),
                taint_patch(decision.taint_change) if decision.writes else None,
            )
            last_check = parse_label_time(node_labels(node).get(LABEL_LAST_CHECK))
            stale = last_check is None or publication.time - last_check >= settings.report_refresh
            if content or stale:
                content = merge_node_patches(
                    content, {"metadata": {"labels": {LABEL_LAST_CHECK: label_time(publication.time)}}}
                )
            decided["patch"] = content
            return content

        _, node, changed = update_node(self.api, self.node_name, compute)
        decision = decided["decision"]
        if changed and decision.action == "fence":
            node, decision = self._recount(node, decision)
            limit = decision.fleet.get("limit", -1)
            placed = decision.action == "fence" and limit >= 0
            self._unconfirmed = (limit, publication.time) if placed else None
        elif self._unconfirmed is not None and publication.time - self._unconfirmed[1] >= self.settle_seconds:
            limit, self._unconfirmed = self._unconfirmed[0], None
            if decision.value is not None and our_fence(node) is not None:
                standing = FenceDecision("fence", "second count", decision.value, fleet={"limit": limit})
                node, counted = self._recount(node, standing, second=True)
                if counted.action == "suppressed":
                    decision, changed = counted, True
        self._condition(node, publication)
        if changed and decision.action in FENCE_EVENTS:
            self._event(node, decision)
        try:
            self.breaker.refresh()  # after the fence, not before it
        except KUBE_ERRORS as exc:  # counted at the next publication (or inline before a fence)
            log.warning("could not count the GPU nodes: %s", describe_error(exc))
        return PublishResult(changed, decision, decided.get("patch"))

    @property
    def settle_seconds(self) -> float:
        """How long a fence decided before ours can still be in flight: its GET, LIST and PATCH,
        each within the request deadline."""
        return 3 * self.settings.request_timeout

    def _recount(self, node: dict, decision: FenceDecision,
                 second: bool = False) -> tuple[dict, FenceDecision]:
        """Count again once our fence is in: agents that counted at the same time as we did may have
        fenced too. If `limit` fences were placed before ours (fence_order), ours is withdrawn at once.

        That leaves past the limit only fences whose recount missed one placed before them (fence_order
        is the agent's time of decision) but still in flight — its PATCH slowed by a busy node or API.
        So each fence is counted a second time at the agent's first publication `settle_seconds`
        after it, when every fence decided before it has landed or failed, and withdrawn then under
        the same rule: the limit holds exactly from there on (`second`: that count)."""
        limit = decision.fleet.get("limit", -1)
        if limit < 0:
            return node, decision
        try:
            ahead = self.breaker.ahead_of(node)
        except KUBE_ERRORS as exc:  # the fence stays (a fence too many, not a fault unfenced)
            log.warning("could not count the fences again: %s", describe_error(exc))
            return node, decision
        if ahead < limit:
            return node, decision

        def withdraw(current: dict) -> dict | None:
            if our_fence(current) is None:
                return None
            ours = [{"key": TAINT_UNHEALTHY, "effect": FENCE_EFFECT}]
            change = node_taint_change(current, ours, "absent", OWNER_HEALTH)
            record = annotations_patch(current, {ANNOTATION_FENCE: None})
            return merge_node_patches(taint_patch(change), record)

        _, node, _ = update_node(self.api, self.node_name, withdraw)
        return node, FenceDecision(
            "suppressed",
            f"circuit breaker open: {ahead} GPU nodes were fenced before this one by agents deciding at "
            f"the same time (limit {limit}); fence withdrawn" + (" at its second count" if second else ""),
            None,
            fleet=dict(decision.fleet, fenced=ahead),
        )

    # The condition and the events say what the labels and taint already say, for the tools that read
    # those (kubectl describe, autoscalers, remediation controllers). A failure to write them is logged
    # and does not fail the publication: the next cycle writes the condition again if it still differs.

    def _condition(self, node: dict, publication: Publication) -> None:
        status, reason, message = gpu_healthy_condition(publication)
        try:
            set_node_condition(self.api, node, CONDITION_GPU_HEALTHY, status, reason, message,
                               now=publication.time)
        except KUBE_ERRORS as exc:
            log.warning("could not set the %s condition: %s", CONDITION_GPU_HEALTHY, describe_error(exc))

    def _event(self, node: dict, decision: FenceDecision) -> None:
        reason, event_type, action = FENCE_EVENTS[decision.action]
        note = f"{decision.reason} (taint {TAINT_UNHEALTHY}={decision.value})" if decision.value \
            else decision.reason
        try:
            record_node_event(self.api, node, reason, note, action, EVENT_SOURCE, event_type)
        except KUBE_ERRORS as exc:
            log.warning("could not record the %s event: %s", reason, describe_error(exc))


CONDITION_GPU_HEALTHY = "GpuHealthy"
EVENT_SOURCE = "gpufleet-health"
# fence decision -> (event reason, type, action)
FENCE_EVENTS = {
    "fence": ("GpuFenced", "Warning", "Fence"),
    "update": ("GpuFenceUpdated", "Warning", "Fence"),
    "lift": ("GpuFenceLifted", "Normal", "Lift"),
}
TOP_FINDINGS = 3


def gpu_healthy_condition(publication: Publication) -> tuple[str, str, str]:
    """(status, reason = severity, message = the top findings) of the GpuHealthy condition."""
    status = {"pass": "True", "warn": "True", "fail": "False"}.get(publication.status.value, "Unknown")
    try:
        report = json.loads(publication.annotations.get(ANNOTATION_HEALTH_REPORT) or "{}")
    except ValueError:
        report = {}
    findings = report.get("findings") or []
    # a finding's gpu is "<index>:<uuid>"; the index is what an operator reads
    parts = [(f"GPU {str(f['gpu']).partition(':')[0]}: " if f.get("gpu") is not None else "")
             + f"{f['check']} {f['severity']}: {f['message']}" for f in findings[:TOP_FINDINGS]]
    more = len(findings) - TOP_FINDINGS + int(report.get("more_findings") or 0)
    if more > 0:
        parts.append(f"and {more} more")
    if not parts:
        parts = ["GPU health unknown: the checks could not run"] if status == "Unknown" \
            else ["all GPU checks passed"]
    return status, publication.verdict.name, "; ".join(parts)
