"""Kubernetes Events (events.k8s.io/v1) about nodes: what `kubectl describe node` and
`kubectl events` show, and what remediation tools watch.

gpufleet records one on every fence, lift, quarantine and release, with the
reporting controller naming who acted (`gpufleet-health`, `gpufleet-quarantine`)
and the pre-events.k8s.io `source` fields filled for older readers. Node
events live in the `default` namespace, as the kubelet's do.
"""

from __future__ import annotations

import datetime
import socket
import time

from gpufleet.kube.api import KubeApi

NODE_EVENT_NAMESPACE = "default"
MAX_NOTE = 1024


def micro_time(seconds: float | None = None) -> str:
    moment = datetime.datetime.fromtimestamp(time.time() if seconds is None else seconds,
                                             datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_event(node: dict | str, reason: str, note: str, action: str, controller: str,
               event_type: str = "Normal", instance: str | None = None, now: float | None = None) -> dict:
    """An events.k8s.io/v1 Event regarding a node (by object as read, or by name)."""
    name = node if isinstance(node, str) else node["metadata"]["name"]
    uid = None if isinstance(node, str) else node["metadata"].get("uid")
    now = time.time() if now is None else now
    regarding = {"apiVersion": "v1", "kind": "Node", "name": name}
    if uid:
        regarding["uid"] = uid
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        # client-go's naming: <object>.<unix nanoseconds in hex>
        "metadata": {"name": f"{name}.{int(now * 1e9):x}", "namespace": NODE_EVENT_NAMESPACE},
        "eventTime": micro_time(now), "type": event_type, "reason": reason, "action": action,
        "note": note[:MAX_NOTE], "regarding": regarding,
        "reportingController": controller,
        "reportingInstance": (instance or f"{controller}-{socket.gethostname()}")[:128],
        "deprecatedSource": {"component": controller, "host": name},
    }


def record_node_event(api: KubeApi, node: dict | str, reason: str, note: str, action: str, controller: str,
                      event_type: str = "Normal", instance: str | None = None) -> dict:
    return api.create_event(node_event(node, reason, note, action, controller, event_type, instance))
