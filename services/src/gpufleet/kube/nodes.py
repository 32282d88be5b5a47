"""Node writes: taints (through the one merge in taints.py), cordon, labels, annotations.

Each function reads the node, computes a merge patch and applies it with the
resourceVersion read (update_node retries on 409 with the fresh node). When
nothing would change, nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.dicts import deep_merge
from gpufleet.kube.api import KubeApi, update_node
from gpufleet.kube.taints import (
    LABEL_FENCED,
    OWNED_TAINTS_ANNOTATION,
    TaintChange,
    fenced_by_gpufleet_taints,
    format_owned,
    merge_taints,
    parse_owned,
)
from gpufleet.kube.validation import check_node_name, check_taints


def node_taints(node: dict) -> list[dict]:
    return list((node.get("spec") or {}).get("taints") or [])


def node_annotations(node: dict) -> dict:
    return dict((node.get("metadata") or {}).get("annotations") or {})


def node_labels(node: dict) -> dict:
    return dict((node.get("metadata") or {}).get("labels") or {})


def is_cordoned(node: dict) -> bool:
    return bool((node.get("spec") or {}).get("unschedulable"))


def taint_patch(change: TaintChange) -> dict | None:
    """The merge patch that turns the node's taints and ownership record into `change`'s."""
    if not change.changed:
        return None
    patch: dict = {}
    if change.taints_changed:
        patch["spec"] = {"taints": change.after}
    if change.owned_before != change.owned_after:
        patch["metadata"] = {"annotations": {OWNED_TAINTS_ANNOTATION: format_owned(change.owned_after)}}
    fenced = fenced_by_gpufleet_taints(change.after, change.owned_after)
    if fenced != fenced_by_gpufleet_taints(change.before, change.owned_before):
        # the fence label changes in the same write as the fence (see LABEL_FENCED)
        patch.setdefault("metadata", {})["labels"] = fence_label(fenced)
    return patch


def fence_label(fenced: bool) -> dict:
    """The LABEL_FENCED part of a merge patch: set while a gpufleet fence is on the node."""
    return {LABEL_FENCED: "true" if fenced else None}


def merge_node_patches(*patches: dict | None) -> dict | None:
    """Combine merge patches (later ones win) into one write."""
    merged: dict = {}
    for patch in patches:
        if patch:
            merged = deep_merge(merged, patch)
    return merged or None


def node_taint_change(node: dict, taints: list[dict], state: str, owner: str, force: bool = False,
                      replace: bool = False) -> TaintChange:
    """The taint merge applied to a node's current taints and ownership record."""
    return merge_taints(node_taints(node), taints, state=state, owner=owner,
                        owned=parse_owned(node_annotations(node)), force=force, replace=replace)


@dataclass
class NodeUpdate:
    before: dict
    after: dict
    changed: bool
    taint_change: TaintChange | None = None


def set_taints(api: KubeApi, name: str, taints: list[dict], state: str = "present", owner: str = "gpufleet",
               force: bool = False, replace: bool = False, check_mode: bool = False) -> NodeUpdate:
    """Make `taints` present/absent on node `name`; one write at most (none if already so).

    Names and taints are checked against Kubernetes' rules first: bad input
    raises InvalidInput before any request.
    """
    check_node_name(name)
    check_taints(taints, state)
    decided: dict = {}

    def compute(node: dict) -> dict | None:
        decided["change"] = node_taint_change(node, taints, state, owner, force, replace)
        return taint_patch(decided["change"])

    before, after, changed = update_node(api, name, compute, check_mode=check_mode)
    return NodeUpdate(before, after, changed, decided["change"])


def set_cordon(api: KubeApi, name: str, cordoned: bool, check_mode: bool = False) -> NodeUpdate:
    def compute(node: dict) -> dict | None:
        if is_cordoned(node) == cordoned:
            return None
        return {"spec": {"unschedulable": True if cordoned else None}}

    return NodeUpdate(*update_node(api, name, compute, check_mode=check_mode))


def labels_patch(node: dict, labels: dict) -> dict | None:
    """Merge patch setting labels (value None removes), or None if already so."""
    current = node_labels(node)
    wanted = {k: v for k, v in labels.items() if current.get(k) != v and not (v is None and k not in current)}
    return {"metadata": {"labels": wanted}} if wanted else None


def annotations_patch(node: dict, annotations: dict) -> dict | None:
    current = node_annotations(node)
    wanted = {k: v for k, v in annotations.items()
              if current.get(k) != v and not (v is None and k not in current)}
    return {"metadata": {"annotations": wanted}} if wanted else None
