"""A thin, dict-based view of the Kubernetes API calls gpufleet makes.

Objects travel as the JSON the API server speaks (camelCase dicts), not as
the client's model classes: cheaper to list 1,000 nodes, and the pure logic
(taint merge, drain planner) is testable on plain data.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import urllib3.exceptions
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.utils import parse_quantity  # noqa: F401 — re-exported: "500m", "64Gi" -> Decimal

from gpufleet.kube.client import DEFAULT_REQUEST_TIMEOUT
from gpufleet.kube.validation import check_node_name

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


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


def is_timeout(exc: BaseException) -> bool:
    """Did the API server fail to answer within the request's deadline?"""
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        exc = exc.reason
    return isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError))


def describe_error(exc: Exception, timeout: float | None = None) -> str:
    """What to tell the user about a failed call: the API server's message when there is one."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {api_error_message(exc)}"
    if is_timeout(exc):
        within = f" within {timeout:g} s" if timeout else ""
        return f"timed out: the API server did not answer{within} (request_timeout)"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return f"cannot reach the API server: {exc.reason}"
    return str(exc)


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    api_version: str  # "v1" or "<group>/<version>"
    plural: str
    namespaced: bool
    kind: str

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name is not None:
            if not name:
                raise ValueError(f"a {self.kind} name must not be empty")
            parts.append(quote(name, safe=""))
            if subresource:
                parts.append(subresource)
        return "/".join(parts)


NODES = Resource("v1", "nodes", False, "Node")
NAMESPACES = Resource("v1", "namespaces", False, "Namespace")
PODS = Resource("v1", "pods", True, "Pod")
SERVICES = Resource("v1", "services", True, "Service")
CORE_EVENTS = Resource("v1", "events", True, "Event")
EVENTS = Resource("events.k8s.io/v1", "events", True, "Event")
JOBS = Resource("batch/v1", "jobs", True, "Job")
DEPLOYMENTS = Resource("apps/v1", "deployments", True, "Deployment")
LEASES = Resource("coordination.k8s.io/v1", "leases", True, "Lease")
GPU_WORKLOADS = Resource("gpufleet.io/v1alpha1", "gpuworkloads", True, "GPUWorkload")
RESOURCES = {r.kind: r for r in (NODES, NAMESPACES, PODS, SERVICES, JOBS, DEPLOYMENTS, LEASES, GPU_WORKLOADS)}
RESOURCES["Event"] = EVENTS


class KubeApi:
    """The calls gpufleet makes, each returning plain JSON dicts.

    Every request goes through `request`, so each carries the client's deadline
    and retry policy (gpufleet.kube.client.GpufleetApiClient).
    """

    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client

    @property
    def request_timeout(self) -> float:
        return float(getattr(self.api_client, "request_timeout", None) or DEFAULT_REQUEST_TIMEOUT)

    # ---- the one request path

    def send(self, method: str, path: str, query: dict | None = None, body=None,
             content_type: str | None = None, timeout=None):
        """Send one request; returns the raw (unread, streaming) urllib3 response of a 2xx answer."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        method_, url, headers, body, post = self.api_client.param_serialize(
            method=method, resource_path=path, query_params=params, header_params=headers, body=body,
            auth_settings=["BearerToken"])
        response = self.api_client.call_api(method_, url, header_params=headers, body=body, post_params=post,
                                            _request_timeout=timeout or self.request_timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

    def request(self, method: str, path: str, query: dict | None = None, body=None,
                content_type: str | None = None, timeout=None) -> dict:
        kept = getattr(self.api_client, "request_kept", None)
        if kept is not None and timeout is None:
            # the whole answer is read anyway: the client's lean keep-alive path (same auth, deadline
            # and retries), about half the CPU of call_api for a GET and a third less for a LIST
            params = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
            answer = kept(method, path, params, body, content_type or "application/json")
            if answer is not None:
                data = answer.read()
                if not 200 <= answer.status <= 299:
                    raise ApiException.from_response(http_resp=answer, body=None, data=None)
                return json.loads(data) if data else {}
        response = self.send(method, path, query, body, content_type, timeout)
        data = response.data
        return json.loads(data) if data else {}

    # ---- any resource

    def list(self, resource: Resource, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict], str]:
        """(items, the list's resourceVersion) in one request."""
        answer = self.request("GET", resource.path(namespace), {"labelSelector": label_selector,
                                                                "fieldSelector": field_selector})
        return answer.get("items") or [], str((answer.get("metadata") or {}).get("resourceVersion") or "")

    def get(self, resource: Resource, name: str, namespace: str | None = None) -> dict:
        return self.request("GET", resource.path(namespace, name))

    def get_or_none(self, resource: Resource, name: str, namespace: str | None = None) -> dict | None:
        try:
            return self.get(resource, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, resource: Resource, body: dict, namespace: str | None = None) -> dict:
        return self.request("POST", resource.path(namespace), body=body)

    def replace(self, resource: Resource, name: str, body: dict, namespace: str | None = None,
                subresource: str | None = None) -> dict:
        """PUT: carries body.metadata.resourceVersion, so a concurrent writer makes it 409."""
        return self.request("PUT", resource.path(namespace, name, subresource), body=body)

    def patch(self, resource: Resource, name: str, patch, namespace: str | None = None,
              subresource: str | None = None, content_type: str = MERGE_PATCH) -> dict:
        return self.request("PATCH", resource.path(namespace, name, subresource), body=patch,
                            content_type=content_type)

    def delete(self, resource: Resource, name: str, namespace: str | None = None,
               propagation: str | None = None, grace_seconds: int | None = None) -> dict:
        return self.request("DELETE", resource.path(namespace, name),
                            {"propagationPolicy": propagation, "gracePeriodSeconds": grace_seconds})

    def read_modify_write(self, resource: Resource, name: str, compute: Callable[[dict], dict | None],
                          namespace: str | None = None, subresource: str | None = None,
                          check_mode: bool = False, attempts: int = 5,
                          sleep: Callable[[float], None] = time.sleep) -> tuple[dict, dict, bool]:
        """Read, let `compute(obj)` return a merge patch (or None), write it guarded by the resourceVersion.

        A concurrent writer makes the API answer 409; we read again and recompute,
        up to `attempts` times, with backoff and jitter. Nothing is written when
        `compute` returns None/{} or in check mode. Returns (before, after — predicted
        in check mode, changed).
        """
        for attempt in range(attempts):
            current = self.get(resource, name, namespace)
            patch = compute(current)
            if not patch:
                return current, current, False
            if check_mode:
                return current, apply_merge_patch(current, patch), True
            guarded = dict(patch)
            guarded["metadata"] = dict(patch.get("metadata") or {},
                                       resourceVersion=current["metadata"]["resourceVersion"])
            try:
                return current, self.patch(resource, name, guarded, namespace, subresource), True
            except ApiException as exc:
                if exc.status != 409 or attempt == attempts - 1:
                    raise KubeError(f"updating {resource.kind.lower()} {name}: {api_error_message(exc)}",
                                    exc.status) from exc
                sleep(random.uniform(0, min(0.1 * 2 ** attempt, 1.0)))
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- nodes

    def list_nodes(self, label_selector: str | None = None) -> list[dict]:
        """All nodes in ONE request (no pagination for fleets that fit a single response)."""
        return self.list(NODES, label_selector=label_selector)[0]

    def count_nodes(self) -> int:
        """How many nodes there are, from a LIST of one node: the API server tells how many remain
        (remainingItemCount). A server that does not (older than 1.15) gets a LIST of all of them."""
        answer = self.request("GET", NODES.path(), {"limit": 1})
        metadata = answer.get("metadata") or {}
        items = len(answer.get("items") or [])
        if metadata.get("remainingItemCount") is not None:
            return items + int(metadata["remainingItemCount"])
        return items if not metadata.get("continue") else len(self.list_nodes())

    def get_node(self, name: str) -> dict:
        return self.get(NODES, name)

    def patch_node(self, name: str, patch: dict) -> dict:
        return self.patch(NODES, name, patch)

    def patch_node_status(self, name: str, patch: dict) -> dict:
        """A merge patch of the node's status subresource (conditions): nothing else changes."""
        return self.patch(NODES, name, patch, subresource="status", content_type=STRATEGIC_MERGE_PATCH)

    def delete_node(self, name: str) -> None:
        self.delete(NODES, name)

    # ---- pods

    def list_pods_on_node(self, node: str) -> list[dict]:
        return self.list(PODS, field_selector=f"spec.nodeName={node}")[0]

    def list_pods(self) -> list[dict]:
        """Every pod in the cluster, in one request."""
        return self.list(PODS)[0]

    def list_pods_in(self, namespace: str, label_selector: str | None = None) -> list[dict]:
        return self.list(PODS, namespace, label_selector=label_selector)[0]

    def get_pod(self, namespace: str, name: str) -> dict:
        return self.get(PODS, name, namespace)

    def create_pod(self, namespace: str, pod: dict) -> dict:
        return self.create(PODS, pod, namespace)

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> dict:
        return self.delete(PODS, name, namespace, grace_seconds=grace_seconds)

    def pod_log(self, namespace: str, name: str, tail_lines: int | None = None) -> str:
        response = self.send("GET", PODS.path(namespace, name, "log"), {"tailLines": tail_lines})
        return response.data.decode("utf-8", "replace")

    def bind_pod(self, namespace: str, name: str, node: str, uid: str | None = None,
                 annotations: dict[str, str] | None = None) -> None:
        """POST pods/<name>/binding (what a scheduler does); 409 if the pod is bound already.

        The API server copies the Binding's annotations onto the pod, so a placement
        detail (the GPUs chosen) lands with the binding in one request.
        """
        body: dict = {"apiVersion": "v1", "kind": "Binding",
                      "metadata": {"name": name, "namespace": namespace},
                      "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        if uid:
            body["metadata"]["uid"] = uid
        if annotations:
            body["metadata"]["annotations"] = dict(annotations)
        path = PODS.path(namespace, name, "binding")
        post_json = getattr(self.api_client, "post_json", None)
        if post_json is None:
            self.request("POST", path, body=body)
            return
        response = post_json(path, body)  # a scheduler's hottest call: the lean path
        response.read()  # the connection goes back to the pool
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)

    def evict_pod(self, namespace: str, name: str, grace_period: int | None = None) -> None:
        body = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": name, "namespace": namespace}}
        if grace_period is not None:
            body["deleteOptions"] = {"gracePeriodSeconds": grace_period}
        self.request("POST", PODS.path(namespace, name, "eviction"), body=body)

    # ---- services

    def create_service(self, namespace: str, service: dict) -> dict:
        return self.create(SERVICES, service, namespace)

    def delete_service(self, namespace: str, name: str) -> dict:
        return self.delete(SERVICES, name, namespace)

    # ---- jobs and deployments

    def create_job(self, namespace: str, job: dict) -> dict:
        return self.create(JOBS, job, namespace)

    def get_job(self, namespace: str, name: str) -> dict:
        return self.get(JOBS, name, namespace)

    def delete_job(self, namespace: str, name: str) -> None:
        self.delete(JOBS, name, namespace, propagation="Background")

    def get_deployment(self, namespace: str, name: str) -> dict:
        return self.get(DEPLOYMENTS, name, namespace)

    def create_deployment(self, namespace: str, deployment: dict) -> dict:
        return self.create(DEPLOYMENTS, deployment, namespace)

    # ---- leases

    def get_lease(self, namespace: str, name: str) -> dict | None:
        return self.get_or_none(LEASES, name, namespace)

    def create_lease(self, namespace: str, name: str, spec: dict) -> dict:
        """Create a Lease; 409 AlreadyExists when another holder created it first."""
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        return self.create(LEASES, lease, namespace)

    def replace_lease(self, lease: dict) -> dict:
        """PUT the Lease with the resourceVersion it was read at: 409 if someone else wrote it meanwhile."""
        meta = lease["metadata"]
        return self.replace(LEASES, meta["name"], lease, meta["namespace"])

    # ---- events

    def create_event(self, event: dict, namespace: str | None = None) -> dict:
        """Create an events.k8s.io/v1 Event (see gpufleet.kube.events for building one)."""
        return self.create(EVENTS, event, namespace or event["metadata"].get("namespace") or "default")


def _query_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def update_node(
    api: KubeApi,
    name: str,
    compute: Callable[[dict], dict | None],
    check_mode: bool = False,
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict, dict, bool]:
    """`read_modify_write` of a node (labels, annotations, taints — not its status).

    The patch carries the resourceVersion that was read, so a concurrent writer
    (the health agent, another playbook) makes the API answer 409; we then read
    the fresh node and compute again. Returns (node before, node after, changed).
    """
    check_node_name(name)
    return api.read_modify_write(NODES, name, compute, check_mode=check_mode, attempts=attempts, sleep=sleep)
