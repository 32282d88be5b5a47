"""Watches, bindings, Leases, Events, status subresources and GPUWorkloads: the emulator and gpufleet.kube.

Each test drives the real `kubernetes` client (through gpufleet.kube.client) over HTTP.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import urllib3
from gpufleet.kube.api import EVENTS, GPU_WORKLOADS, LEASES, NODES, PODS, KubeApi
from gpufleet.kube.client import api_client
from gpufleet.kube.watch import Watch, wait_for
from kubernetes.client.rest import ApiException


@pytest.fixture
def api(kube_api) -> KubeApi:
    return KubeApi(api_client(kubeconfig=kube_api.kubeconfig, request_timeout=10))


def raw_watch_lines(kube_api, path: str, **query) -> list[dict]:
    """A watch request as any client sends it; the stream ends at timeoutSeconds."""
    http = urllib3.PoolManager()
    response = http.request("GET", kube_api.url + path, fields=dict(watch="1", **query), timeout=10)
    return [json.loads(line) for line in response.data.splitlines() if line.strip()]


def collect(watch: Watch, count: int, timeout: float = 10) -> list:
    """The first `count` events of `watch` (iterated in a thread, stopped after)."""
    events: list = []
    done = threading.Event()

    def run() -> None:
        for event in watch:
            events.append(event)
            if len(events) >= count:
                break
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    done.wait(timeout)
    watch.stop()
    thread.join(5)
    return events


def test_watch_streams_changes_after_a_resource_version(kube_api, api):
    kube_api.add_node("gpu-1")
    _, version = api.list(NODES)

    def writer() -> None:
        time.sleep(0.3)
        kube_api.add_node("gpu-2")
        kube_api.update_object("nodes", "gpu-1", {"metadata": {"labels": {"x": "y"}}})
        kube_api.delete_object("nodes", "gpu-2")

    threading.Thread(target=writer, daemon=True).start()
    lines = raw_watch_lines(kube_api, "/api/v1/nodes", resourceVersion=version, timeoutSeconds="2")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [
        ("ADDED", "gpu-2"), ("MODIFIED", "gpu-1"), ("DELETED", "gpu-2")]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in lines]
    assert versions == sorted(versions) and versions[0] > int(version)


def test_watch_without_version_starts_with_the_current_objects_and_bookmarks(kube_api):
    kube_api.add_node("gpu-1")
    kube_api.set_bookmark_interval(0.2)
    lines = raw_watch_lines(kube_api, "/api/v1/nodes", allowWatchBookmarks="true", timeoutSeconds="1")
    assert lines[0]["type"] == "ADDED" and lines[0]["object"]["metadata"]["name"] == "gpu-1"
    bookmarks = [e for e in lines if e["type"] == "BOOKMARK"]
    assert bookmarks, lines
    assert bookmarks[-1]["object"]["metadata"]["resourceVersion"] == lines[0]["object"]["metadata"][
        "resourceVersion"]
    assert "spec" not in bookmarks[-1]["object"]


def test_watch_from_a_compacted_version_gets_an_error_event_410(kube_api, api):
    kube_api.add_node("gpu-1")
    _, version = api.list(NODES)
    kube_api.add_node("gpu-2")
    kube_api.compact()
    lines = raw_watch_lines(kube_api, "/api/v1/nodes", resourceVersion=version, timeoutSeconds="1")
    assert len(lines) == 1 and lines[0]["type"] == "ERROR"
    status = lines[0]["object"]
    assert status["code"] == 410 and status["reason"] == "Expired"
    assert status["message"].startswith(f"too old resource version: {version}")


def test_watch_selectors_turn_leaving_the_selection_into_deleted(kube_api):
    kube_api.add_pod("a", labels={"app": "k"}, phase="Pending")
    kube_api.add_pod("b", labels={"app": "other"}, phase="Pending")

    def writer() -> None:
        time.sleep(0.3)
        kube_api.update_object("pods", "a", {"metadata": {"labels": {"app": "gone"}}})
        kube_api.update_object("pods", "b", {"metadata": {"labels": {"app": "k"}}})

    threading.Thread(target=writer, daemon=True).start()
    lines = raw_watch_lines(kube_api, "/api/v1/namespaces/default/pods", labelSelector="app=k",
                            timeoutSeconds="2")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [
        ("ADDED", "a"), ("DELETED", "a"), ("ADDED", "b")]


def test_gpufleet_watch_lists_then_watches_with_bookmarks_and_a_deadline(kube_api, api):
    kube_api.set_bookmark_interval(0.1)
    kube_api.add_pod("k-1", labels={"app": "k"}, phase="Pending")
    watch = Watch(api, PODS, "default", label_selector="app=k", timeout_seconds=1)

    def writer() -> None:
        time.sleep(1.5)  # after the first watch request has ended at timeoutSeconds
        kube_api.update_object("pods", "k-1", {"status": {"phase": "Running"}})

    threading.Thread(target=writer, daemon=True).start()
    events = collect(watch, 2)
    assert [(e.type, e.name) for e in events] == [("ADDED", "k-1"), ("MODIFIED", "k-1")]
    assert events[1].object["status"]["phase"] == "Running"
    assert watch.lists == 1 and watch.watches >= 2 and watch.bookmarks >= 1
    watch_requests = [r for r in kube_api.requests if r.is_watch]
    assert all(r.query["allowWatchBookmarks"] == "true" and r.query["timeoutSeconds"] == "1"
               for r in watch_requests)
    # each reconnect resumed from a known version: no second LIST
    assert all(r.query.get("resourceVersion") for r in watch_requests)


def test_gpufleet_watch_relists_on_410_and_reports_what_it_missed(kube_api, api):
    kube_api.add_pod("a", labels={"app": "k"}, phase="Pending")
    kube_api.add_pod("b", labels={"app": "k"}, phase="Pending")
    _, old_version = api.list(PODS, "default")
    kube_api.delete_object("pods", "a")
    kube_api.update_object("pods", "b", {"status": {"phase": "Running"}})
    kube_api.add_pod("c", labels={"app": "k"}, phase="Pending")
    kube_api.compact()
    watch = Watch(api, PODS, "default", label_selector="app=k", resource_version=old_version,
                  timeout_seconds=2)
    watch.known = {("default", "a"): {"metadata": {"name": "a", "resourceVersion": "1"}},
                   ("default", "b"): {"metadata": {"name": "b", "resourceVersion": "1"}}}
    events = collect(watch, 3)
    assert sorted((e.type, e.name) for e in events) == [("ADDED", "c"), ("DELETED", "a"), ("MODIFIED", "b")]
    assert watch.lists == 1


def test_wait_for_watches_until_the_condition_without_polling(kube_api, api):
    kube_api.add_pod("p", phase="Pending")

    def later() -> None:
        time.sleep(0.5)
        kube_api.update_object("pods", "p", {"status": {"phase": "Running"}})

    threading.Thread(target=later, daemon=True).start()
    kube_api.clear_requests()
    pod = wait_for(api, PODS, "p", "default", lambda p: p["status"]["phase"] == "Running", timeout=10)
    assert pod["status"]["phase"] == "Running"
    assert [(r.method, r.is_watch) for r in kube_api.requests] == [("GET", False), ("GET", True)]
    with pytest.raises(TimeoutError):
        wait_for(api, PODS, "p", "default", lambda p: False, timeout=0.5)


def test_binding_assigns_the_node_once(kube_api, api):
    kube_api.add_node("gpu-1")
    pod = kube_api.add_pod("pending", phase="Pending")
    api.bind_pod("default", "pending", "gpu-1", uid=pod["metadata"]["uid"])
    bound = kube_api.get_pod("pending")
    assert bound["spec"]["nodeName"] == "gpu-1"
    assert {"type": "PodScheduled", "status": "True"}.items() <= bound["status"]["conditions"][0].items()
    with pytest.raises(ApiException) as refused:
        api.bind_pod("default", "pending", "gpu-2")
    assert refused.value.status == 409
    assert 'is already assigned to node "gpu-1"' in json.loads(refused.value.body)["message"]


def test_lease_create_and_replace_conflict(kube_api, api):
    lease = api.create_lease("kube-system", "gpufleet-scheduler",
                             {"holderIdentity": "a", "leaseDurationSeconds": 15})
    with pytest.raises(ApiException) as exists:
        api.create_lease("kube-system", "gpufleet-scheduler", {"holderIdentity": "b"})
    assert exists.value.status == 409
    renew = dict(lease["spec"], renewTime="2026-01-01T00:00:00.000000Z")
    renewed = api.replace_lease(dict(lease, spec=renew))
    assert renewed["metadata"]["resourceVersion"] != lease["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as stale:  # written from the old read: someone else renewed meanwhile
        api.replace_lease(dict(lease, spec=dict(lease["spec"], holderIdentity="b")))
    assert stale.value.status == 409
    assert api.get_lease("kube-system", "gpufleet-scheduler")["spec"]["holderIdentity"] == "a"
    assert api.get_lease("kube-system", "absent") is None


def test_events_in_both_apis_and_their_required_fields(kube_api, api):
    event = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
             "metadata": {"name": "gpu-1.fence", "namespace": "default"},
             "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "gpufleet.io/health",
             "reportingInstance": "gpufleet-health-gpu-1", "action": "Fence", "reason": "GpuFenced",
             "note": "Xid 79", "type": "Warning",
             "regarding": {"apiVersion": "v1", "kind": "Node", "name": "gpu-1"}}
    api.create_event(event)
    assert kube_api.get_object("events.events.k8s.io", "gpu-1.fence")["note"] == "Xid 79"
    with pytest.raises(ApiException) as invalid:
        api.create_event(dict(event, metadata={"name": "x", "namespace": "default"}, reportingController=""))
    assert invalid.value.status == 422
    assert "reportingController: Required value" in json.loads(invalid.value.body)["message"]
    api.create(EVENTS.__class__("v1", "events", True, "Event"),
               {"metadata": {"name": "core"}, "involvedObject": {"kind": "Node", "name": "gpu-1"},
                "reason": "GpuFenced"}, "default")
    assert kube_api.get_object("events", "core")["reason"] == "GpuFenced"


def test_node_status_subresource_only_changes_status(kube_api, api):
    kube_api.add_node("gpu-1")
    condition = {"type": "GpuHealthy", "status": "False", "reason": "REBOOT", "message": "Xid 79"}
    api.patch_node_status("gpu-1", {"status": {"conditions": [condition]},
                                    "metadata": {"labels": {"ignored": "yes"}}})
    node = kube_api.get_node("gpu-1")
    assert {c["type"] for c in node["status"]["conditions"]} == {"Ready", "GpuHealthy"}
    assert "ignored" not in node["metadata"]["labels"]
    api.patch_node("gpu-1", {"status": {"conditions": []}, "metadata": {"labels": {"kept": "yes"}}})
    node = kube_api.get_node("gpu-1")
    assert len(node["status"]["conditions"]) == 2 and node["metadata"]["labels"]["kept"] == "yes"


def test_gpuworkload_custom_resource_with_status(kube_api, api):
    created = api.create(GPU_WORKLOADS, {"apiVersion": "gpufleet.io/v1alpha1", "kind": "GPUWorkload",
                                         "metadata": {"name": "train"}, "spec": {"gpus": 8}}, "default")
    assert created["metadata"]["generation"] == 1
    api.patch(GPU_WORKLOADS, "train", {"status": {"phase": "Bound", "node": "gpu-1"}}, "default",
              subresource="status")
    api.patch(GPU_WORKLOADS, "train", {"spec": {"gpus": 4}, "status": {"phase": "Ignored"}}, "default")
    stored = kube_api.get_object("GPUWorkload", "train")
    assert stored["status"] == {"phase": "Bound", "node": "gpu-1"}
    assert stored["spec"]["gpus"] == 4 and stored["metadata"]["generation"] == 2
    assert [w["metadata"]["name"] for w in api.list(GPU_WORKLOADS, "default")[0]] == ["train"]
    assert api.get_or_none(LEASES, "train", "default") is None


@pytest.mark.parametrize("taint, field, words", [
    ({"key": "bad key", "effect": "NoSchedule"}, "spec.taints[0].key",
     'Invalid value: "bad key": name part must consist of alphanumeric characters'),
    ({"key": "ok", "value": "v" * 64, "effect": "NoSchedule"}, "spec.taints[0].value",
     "must be no more than 63 characters"),
    ({"key": "ok", "effect": "Sometimes"}, "spec.taints[0].effect",
     'Unsupported value: "Sometimes": supported values: "NoSchedule", "PreferNoSchedule", "NoExecute"'),
    ({"key": "ok"}, "spec.taints[0].effect", "Required value"),
])
def test_invalid_taints_get_422_with_the_apiserver_reason(kube_api, api, taint, field, words):
    kube_api.add_node("gpu-1")
    with pytest.raises(ApiException) as refused:
        api.patch_node("gpu-1", {"spec": {"taints": [taint]}})
    assert refused.value.status == 422
    body = json.loads(refused.value.body)
    assert body["reason"] == "Invalid"
    assert body["message"].startswith(f'Node "gpu-1" is invalid: {field}: ')
    assert words in body["message"]
    assert body["details"]["causes"][0]["field"] == field
    assert "taints" not in kube_api.get_node("gpu-1")["spec"]


def test_invalid_node_name_gets_422(kube_api, api):
    with pytest.raises(ApiException) as refused:
        api.create(NODES, {"metadata": {"name": "Bad_Name"}})
    assert refused.value.status == 422
    assert "a lowercase RFC 1123 subdomain must consist of" in json.loads(refused.value.body)["message"]
