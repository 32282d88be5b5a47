"""A thin, dict-based view of the Kubernetes API calls gpufleet makes.

Objects travel as the JSON the API server speaks (camelCase dicts), not as
the client's model classes: cheaper to list 1,000 nodes, and the pure logic
(taint merge, drain planner) is testable on plain data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import urllib3.exceptions
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

MERGE_PATCH = "application/merge-patch+json"


def apply_merge_patch(target, patch):
    """RFC 7386 merge patch (what the API does with MERGE_PATCH), to predict results in check mode."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


class KubeError(Exception):
    """An API failure worth reporting as is (status and the server's message)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# What talking to the API can raise (modules catch these and report them).
KUBE_ERRORS = (ApiException, KubeError, ConfigException, urllib3.exceptions.HTTPError, OSError)


def api_error_message(exc: ApiException) -> str:
    body = exc.body
    if body is None and getattr(exc, "data", None) is not None:
        body = exc.data
    try:
        return json.loads(body).get("message") or str(exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason or exc)


def describe_error(exc: Exception) -> str:
    """What to tell the user about a failed call: the API server's message when there is one."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {api_error_message(exc)}"
    return str(exc)


class KubeApi:
    """The calls gpufleet makes, each returning plain JSON dicts."""

    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)

    @staticmethod
    def _json(response) -> dict:
        return json.loads(response.data)

    # ---- nodes

    def list_nodes(self, label_selector: str | None = None) -> list[dict]:
        """All nodes in ONE request (no pagination for fleets that fit a single response)."""
        kwargs = {"label_selector": label_selector} if label_selector else {}
        return self._json(self.core.list_node(_preload_content=False, **kwargs))["items"]

    def get_node(self, name: str) -> dict:
        return self._json(self.core.read_node(name, _preload_content=False))

    def patch_node(self, name: str, patch: dict) -> dict:
        response = self.core.patch_node(name, patch, _content_type=MERGE_PATCH, _preload_content=False)
        return self._json(response)

    def delete_node(self, name: str) -> None:
        self.core.delete_node(name, _preload_content=False)

    # ---- pods

    def list_pods_on_node(self, node: str) -> list[dict]:
        response = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}",
                                                         _preload_content=False)
        return self._json(response)["items"]

    def list_pods(self) -> list[dict]:
        """Every pod in the cluster, in one request."""
        return self._json(self.core.list_pod_for_all_namespaces(_preload_content=False))["items"]

    def list_pods_in(self, namespace: str, label_selector: str | None = None) -> list[dict]:
        kwargs = {"label_selector": label_selector} if label_selector else {}
        return self._json(self.core.list_namespaced_pod(namespace, _preload_content=False, **kwargs))["items"]

    def evict_pod(self, namespace: str, name: str, grace_period: int | None = None) -> None:
        body = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": name, "namespace": namespace}}
        if grace_period is not None:
            body["deleteOptions"] = {"gracePeriodSeconds": grace_period}
        self.core.create_namespaced_pod_eviction(name, namespace, body, _preload_content=False)

    # ---- jobs

    def create_job(self, namespace: str, job: dict) -> dict:
        return self._json(self.batch.create_namespaced_job(namespace, job, _preload_content=False))

    def get_job(self, namespace: str, name: str) -> dict:
        return self._json(self.batch.read_namespaced_job(name, namespace, _preload_content=False))

    def delete_job(self, namespace: str, name: str) -> None:
        self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background",
                                         _preload_content=False)


def update_node(
    api: KubeApi,
    name: str,
    compute: Callable[[dict], dict | None],
    check_mode: bool = False,
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict, dict, bool]:
    """Read the node, let `compute(node)` return a merge patch (or None), apply it safely.

    The patch carries the resourceVersion that was read, so a concurrent writer
    (the health agent, another playbook) makes the API answer 409; we then read
    the fresh node and compute again, up to `attempts` times. Nothing is written
    when `compute` returns None/{} or in check mode.

    Returns (node before, node after — predicted in check mode, changed).
    """
    for attempt in range(attempts):
        node = api.get_node(name)
        patch = compute(node)
        if not patch:
            return node, node, False
        if check_mode:
            return node, apply_merge_patch(node, patch), True
        guarded = dict(patch)
        guarded["metadata"] = dict(patch.get("metadata") or {},
                                   resourceVersion=node["metadata"]["resourceVersion"])
        try:
            return node, api.patch_node(name, guarded), True
        except ApiException as exc:
            if exc.status != 409 or attempt == attempts - 1:
                raise KubeError(f"updating node {name}: {api_error_message(exc)}", exc.status) from exc
            sleep(min(0.1 * 2 ** attempt, 1.0))
    raise AssertionError("unreachable")  # pragma: no cover
