"""Node conditions (node-problem-detector's convention) written through the node's status subresource.

kubectl, cluster autoscalers and remediation controllers read `status.conditions`.
A condition is written only when its status, reason or message differ from
what the node shows; `lastTransitionTime` moves only when the status changes
(so "since when is this node unhealthy" stays true), `lastHeartbeatTime` is
the time of our last write. The patch is a strategic merge of the status
subresource (conditions merge by `type`), so the kubelet's conditions are untouched.
"""

from __future__ import annotations

import datetime

from gpufleet.kube.api import KubeApi

MAX_MESSAGE = 1024


def rfc3339(seconds: float | None = None) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc) if seconds is not None \
        else datetime.datetime.now(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def node_condition(node: dict, condition_type: str) -> dict | None:
    return next((c for c in (node.get("status") or {}).get("conditions") or []
                 if c.get("type") == condition_type), None)


def condition_patch(node: dict, condition_type: str, status: str, reason: str, message: str,
                    now: float | None = None) -> dict | None:
    """The status patch that makes the node show this condition, or None if it already does."""
    if status not in ("True", "False", "Unknown"):
        raise ValueError(f"a condition status is True, False or Unknown, not {status!r}")
    message = message[:MAX_MESSAGE]
    current = node_condition(node, condition_type)
    if current is not None and (current.get("status"), current.get("reason"), current.get("message")) \
            == (status, reason, message):
        return None
    stamp = rfc3339(now)
    transition = stamp if current is None or current.get("status") != status \
        else current.get("lastTransitionTime") or stamp
    return {"status": {"conditions": [{
        "type": condition_type, "status": status, "reason": reason, "message": message,
        "lastHeartbeatTime": stamp, "lastTransitionTime": transition}]}}


def set_node_condition(api: KubeApi, node: dict, condition_type: str, status: str, reason: str,
                       message: str, now: float | None = None) -> bool:
    """Patch the condition on `node` (as last read) if it differs; True when a write was made."""
    patch = condition_patch(node, condition_type, status, reason, message, now)
    if patch is None:
        return False
    api.patch_node_status(node["metadata"]["name"], patch)
    return True
