"""Quarantine and return to service of a GPU node.

Quarantine: cordon (remembering whether the node was cordoned already), record
`gpufleet.io/quarantine` = {reason, since, by, cordoned-by-us}, optionally
drain through the Eviction API, then add the quarantine taint
(gpufleet.io/quarantine:NoExecute, owned by "gpufleet-quarantine").

The taint comes AFTER the drain on purpose: a NoExecute taint makes the
kubelet's taint manager delete every non-tolerating pod at once, ignoring
PodDisruptionBudgets; the drain first moves workloads politely. Without a
drain, cordon, annotation and taint are one write.

Release: remove the quarantine and unhealthy taints that gpufleet owns,
uncordon only if the quarantine cordoned the node, label health `pass`, drop
the quarantine annotation (the last diagnostics result stays for history).

`max_quarantined` (a count, or "N%" of the GPU nodes) refuses a new
quarantine that would exceed it, unless forced: a bad health signal must not
take the whole fleet out.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
from dataclasses import dataclass, field

from gpufleet.kube.api import KUBE_ERRORS, KubeApi, apply_merge_patch, describe_error, update_node
from gpufleet.kube.drain import DrainResult, execute_drain, plan_drain
from gpufleet.kube.events import record_node_event
from gpufleet.kube.fleet import (
    ANNOTATION_QUARANTINE,
    ANNOTATION_QUARANTINE_RESULT,
    LABEL_HEALTH,
    gpu_count,
    is_gpu_node,
    load_json_annotation,
)
from gpufleet.kube.nodes import (
    annotations_patch,
    fence_label,
    is_cordoned,
    labels_patch,
    merge_node_patches,
    node_annotations,
    node_taint_change,
    taint_patch,
)
from gpufleet.kube.taints import (
    OWNED_TAINTS_ANNOTATION,
    TAINT_QUARANTINE,
    TAINT_UNHEALTHY,
    fenced_by_gpufleet_taints,
    format_owned,
    merge_taints,
    parse_owned,
)

log = logging.getLogger("gpufleet.kube.quarantine")

OWNER_QUARANTINE = "gpufleet-quarantine"
EVENT_SOURCE = OWNER_QUARANTINE  # the reporting controller of quarantine/release Events
OWNER_HEALTH = "gpufleet-health"  # the health agent's taints (its owner name)
QUARANTINE_TAINT = {"key": TAINT_QUARANTINE, "value": "true", "effect": "NoExecute"}
RELEASED_TAINTS = [{"key": TAINT_QUARANTINE}, {"key": TAINT_UNHEALTHY}]


class QuarantineRefused(Exception):
    """A quarantine that max_quarantined does not allow."""


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def quarantine_limit(max_quarantined: int | str | None, fleet_size: int) -> int | None:
    """The largest number of quarantined nodes allowed: an int, or "N%" of the fleet (rounded down, >= 1)."""
    if max_quarantined is None or max_quarantined == "":
        return None
    text = str(max_quarantined).strip()
    if text.endswith("%"):
        return max(1, math.floor(fleet_size * float(text[:-1]) / 100))
    return int(text)


def quarantine_record(node: dict) -> dict | None:
    return load_json_annotation(node_annotations(node), ANNOTATION_QUARANTINE)


def check_quarantine_limit(nodes: list[dict], name: str, max_quarantined, force: bool) -> dict:
    """Raise QuarantineRefused when quarantining `name` would exceed the limit; returns the counts."""
    fleet = [n for n in nodes if is_gpu_node(n)] or nodes
    quarantined = sorted(n["metadata"]["name"] for n in fleet if quarantine_record(n) is not None)
    limit = quarantine_limit(max_quarantined, len(fleet))
    counts = {"fleet": len(fleet), "quarantined": len(quarantined), "limit": limit}
    if name in quarantined or limit is None or force:
        return counts
    if len(quarantined) + 1 > limit:
        raise QuarantineRefused(
            f"refusing to quarantine {name}: {len(quarantined)} of {len(fleet)} GPU nodes are quarantined "
            f"already ({', '.join(quarantined) or 'none'}) and max_quarantined is {max_quarantined} "
            f"(= {limit} nodes); use force to override")
    return counts


@dataclass
class QuarantineResult:
    changed: bool
    before: dict
    after: dict
    drain: DrainResult | None = None
    drain_plan: dict | None = None
    counts: dict = field(default_factory=dict)
    diagnostics: dict | None = None
    failed: bool = False
    message: str = ""


def _quarantine_patch(node: dict, reason: str, by: str, with_taint: bool) -> dict | None:
    record = quarantine_record(node)
    if record is None:
        record = {"reason": reason, "since": now_iso(), "by": by, "cordoned-by-us": not is_cordoned(node)}
    elif reason and record.get("reason") != reason:
        record = dict(record, reason=reason)
    patches = [annotations_patch(node, {ANNOTATION_QUARANTINE: json.dumps(record, sort_keys=True)})]
    if not is_cordoned(node):
        patches.append({"spec": {"unschedulable": True}})
    if with_taint:
        patches.append(taint_patch(node_taint_change(node, [QUARANTINE_TAINT], "present", OWNER_QUARANTINE)))
    # An unchanged JSON record with keys re-ordered is still unchanged.
    if patches[0] and load_json_annotation(node_annotations(node), ANNOTATION_QUARANTINE) == record:
        patches[0] = None
    return merge_node_patches(*patches)


def quarantine_node(api: KubeApi, name: str, reason: str = "", by: str = "gpufleet", drain: bool = False,
                    drain_timeout: float = 300, grace_period: int | None = None,
                    delete_emptydir_data: bool = False, delete_unmanaged: bool = False,
                    max_quarantined=None, force: bool = False, check_mode: bool = False,
                    diagnostics: dict | None = None, sleep=None) -> QuarantineResult:
    counts = check_quarantine_limit(api.list_nodes(), name, max_quarantined, force)
    drain_kwargs = {"sleep": sleep} if sleep else {}
    before, after, changed = update_node(
        api, name, lambda node: _quarantine_patch(node, reason, by, with_taint=not drain),
        check_mode=check_mode)
    result = QuarantineResult(changed, before, after, counts=counts)
    if changed and not check_mode:
        _event(api, after, "NodeQuarantined", "Warning", "Quarantine",
               f"quarantined by {by}" + (f": {reason}" if reason else ""))
    if drain:
        plan = plan_drain(api.list_pods_on_node(name), delete_emptydir_data, delete_unmanaged)
        result.drain_plan = plan.as_dict()
        if not plan.ok:
            result.failed = True
            result.message = (f"cannot drain {name}: " + "; ".join(f"{p}: {why}" for p, why in plan.blocking)
                              + (" (node left cordoned and marked quarantined, without the taint)"
                                 if not check_mode else ""))
            return result
        if plan.evict and not check_mode:
            result.drain = execute_drain(api, name, plan, timeout=drain_timeout, grace_period=grace_period,
                                         **drain_kwargs)
            result.changed = result.changed or bool(result.drain.evicted)
            if not result.drain.ok:
                result.failed = True
                result.message = result.drain.message + " (node left cordoned and marked quarantined, " \
                                                        "without the taint)"
                return result
        elif plan.evict:
            result.changed = True
        if check_mode:
            predicted = _predict(result.after, reason, by)
            result.changed = result.changed or predicted != result.after
            result.after = predicted
        else:
            _, result.after, taint_changed = update_node(
                api, name, lambda node: _quarantine_patch(node, reason, by, with_taint=True))
            result.changed = result.changed or taint_changed
    if diagnostics is not None:
        _diagnose(api, name, result, diagnostics, check_mode, sleep)
    if not result.message:
        result.message = f"{name} quarantined" if result.changed else f"{name} already quarantined"
    return result


def _diagnose(api: KubeApi, name: str, result: QuarantineResult, options: dict, check_mode: bool,
              sleep) -> None:
    """Run the diagnostics Job once per quarantine (a result for this quarantine's `since` is kept)."""
    from gpufleet.kube.diagnostics import run_diagnostics

    since = (quarantine_record(result.after) or {}).get("since")
    previous = load_json_annotation(node_annotations(result.after), ANNOTATION_QUARANTINE_RESULT)
    if previous and previous.get("quarantine_since") == since and not options.get("rerun"):
        result.diagnostics = previous
        return
    result.changed = True
    if check_mode:
        result.diagnostics = {"verdict": "pending", "detail": "would run the diagnostics Job"}
        return
    passed = ("image", "command", "namespace", "timeout")
    kwargs = {k: options[k] for k in passed if options.get(k) is not None}
    if sleep:
        kwargs["sleep"] = sleep
    verdict = run_diagnostics(api, name, gpu_count(result.after), **kwargs)
    verdict["quarantine_since"] = since
    result.diagnostics = verdict
    _, result.after, _ = update_node(api, name, lambda node: annotations_patch(
        node, {ANNOTATION_QUARANTINE_RESULT: json.dumps(verdict, sort_keys=True)}))


def _predict(node: dict, reason: str, by: str) -> dict:
    """The node after the post-drain taint write (check mode)."""
    patch = _quarantine_patch(node, reason, by, with_taint=True)
    return apply_merge_patch(node, patch) if patch else node


def _release_patch(node: dict, owners: list[str], health_label: str | None) -> dict | None:
    taints = list((node.get("spec") or {}).get("taints") or [])
    owned = parse_owned(node_annotations(node))
    owned_before = dict(owned)
    for owner in owners:
        change = merge_taints(taints, RELEASED_TAINTS, state="absent", owner=owner, owned=owned)
        taints, owned = change.after, change.owned_after
    patches = []
    if taints != list((node.get("spec") or {}).get("taints") or []):
        patches.append({"spec": {"taints": taints}})
    if owned != owned_before:
        patches.append({"metadata": {"annotations": {OWNED_TAINTS_ANNOTATION: format_owned(owned)}}})
    patches.append(labels_patch(node, fence_label(fenced_by_gpufleet_taints(taints, owned))))
    record = quarantine_record(node)
    if record is not None:
        if record.get("cordoned-by-us") and is_cordoned(node):
            patches.append({"spec": {"unschedulable": None}})
        patches.append({"metadata": {"annotations": {ANNOTATION_QUARANTINE: None}}})
    if health_label:
        patches.append(labels_patch(node, {LABEL_HEALTH: health_label}))
    return merge_node_patches(*patches)


def _event(api: KubeApi, node: dict, reason: str, event_type: str, action: str, note: str) -> None:
    """Record the change as a Kubernetes Event; a refused event is logged, not a failed quarantine."""
    try:
        record_node_event(api, node, reason, note, action, EVENT_SOURCE, event_type)
    except KUBE_ERRORS as exc:
        log.warning("could not record the %s event for %s: %s", reason, node["metadata"]["name"],
                    describe_error(exc))


def release_node(api: KubeApi, name: str, owners: list[str] | None = None, health_label: str | None = "pass",
                 check_mode: bool = False) -> QuarantineResult:
    """Return a node to service (see the module doc); no write when it is in service already."""
    owners = owners or [OWNER_QUARANTINE, OWNER_HEALTH]
    before, after, changed = update_node(api, name, lambda node: _release_patch(node, owners, health_label),
                                         check_mode=check_mode)
    message = f"{name} returned to service" if changed else f"{name} already in service"
    if changed and not check_mode:
        _event(api, after, "NodeReleased", "Normal", "Release", "returned to service")
    if changed and is_cordoned(after):
        message += " (left cordoned: it was cordoned before the quarantine)"
    return QuarantineResult(changed, before, after, message=message)
