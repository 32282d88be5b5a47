"""The Kubernetes node sink: labels, annotations and the fence taint of this node.

One publication is one GET of the node and at most one PATCH (a JSON merge
patch carrying the resourceVersion read, so a concurrent writer makes it 409
and `update_node` recomputes on the fresh node). Nothing is written when the
node already shows the publication; `last-check` alone is refreshed only when
older than `report_refresh`. Placing a NEW fence also LISTs the nodes once, for
the circuit breaker. Taints go through THE taint merge (gpufleet.kube.taints).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gpufleet.health.config import KubernetesSettings
from gpufleet.health.fencing import FenceDecision, FenceMemory, decide_fence, fleet_fence_count
from gpufleet.health.sinks.publication import LABEL_LAST_CHECK, Publication, label_time, parse_label_time
from gpufleet.kube.api import KubeApi, update_node
from gpufleet.kube.nodes import annotations_patch, labels_patch, merge_node_patches, node_labels, taint_patch

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

    Raises SinkUnavailable when there are no credentials at all and the sink is `auto`.
    """
    from gpufleet.kube.client import api_client

    kubeconfig = settings.kubeconfig
    if kubeconfig and Path(kubeconfig).is_file() and not settings.in_cluster:
        client = api_client(kubeconfig=kubeconfig)
    elif settings.in_cluster or os.environ.get("KUBERNETES_SERVICE_HOST"):
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        configuration = k8s_client.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)
        client = k8s_client.ApiClient(configuration)
    else:
        raise SinkUnavailable(
            f"no kubeconfig at {kubeconfig or '(none configured)'} and no in-cluster service account"
        )
    # A hung API server must not stall the publisher for long: every request gets a deadline. The
    # client passes timeout=None per request unless `_request_timeout` is given, which overrides any
    # pool default, so the default is filled in where the client makes the request.
    timeout = (settings.request_timeout, settings.request_timeout)  # (connect, read)
    rest = client.rest_client
    unbounded = rest.request

    def request(*args, _request_timeout=None, **kwargs):
        return unbounded(*args, _request_timeout=_request_timeout or timeout, **kwargs)

    rest.request = request
    return KubeApi(client)


class KubeNodeSink:
    def __init__(self, api: KubeApi, node_name: str, settings: KubernetesSettings):
        self.api = api
        self.node_name = node_name
        self.settings = settings

    def publish(
        self, publication: Publication, memory: FenceMemory, boot_id: str | None = None
    ) -> PublishResult:
        """Make the node show `publication` and the fence decision; raises KUBE_ERRORS on API failure."""
        settings = self.settings
        decided: dict = {}

        def fleet() -> dict[str, int]:
            return fleet_fence_count(self.api.list_nodes(), exclude=self.node_name)

        def compute(node: dict) -> dict | None:
            decision = decide_fence(
                node,
                publication.verdict,
                publication.status,
                memory,
                settings.taint_level,
                settings.lift_after,
                settings.max_fenced,
                fleet,
                boot_id=boot_id,
                now=publication.time,
            )
            decided["decision"] = decision
            content = merge_node_patches(
                labels_patch(node, publication.labels),
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

        _, _, changed = update_node(self.api, self.node_name, compute)
        return PublishResult(changed, decided["decision"], decided.get("patch"))
