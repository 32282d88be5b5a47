"""Quarantine and release record Events (controller gpufleet-quarantine); no change, no Event."""

from __future__ import annotations

from gpufleet.kube.api import KubeApi
from gpufleet.kube.client import api_client
from gpufleet.kube.conditions import condition_patch
from gpufleet.kube.quarantine import quarantine_node, release_node


def events(kube_api) -> list[dict]:
    return sorted(kube_api.list_objects("events.events.k8s.io"), key=lambda e: e["eventTime"])


def test_quarantine_and_release_are_events_once_each(kube_api):
    kube_api.add_node("gpu-1")
    api = KubeApi(api_client(kubeconfig=kube_api.kubeconfig))
    quarantine_node(api, "gpu-1", reason="Xid 79", by="operator", check_mode=True)
    assert events(kube_api) == []  # check mode records nothing
    quarantine_node(api, "gpu-1", reason="Xid 79", by="operator")
    quarantine_node(api, "gpu-1", reason="Xid 79", by="operator")  # already so: no second Event
    [quarantined] = events(kube_api)
    assert (quarantined["reason"], quarantined["type"], quarantined["action"]) == (
        "NodeQuarantined", "Warning", "Quarantine")
    assert quarantined["note"] == "quarantined by operator: Xid 79"
    assert quarantined["reportingController"] == "gpufleet-quarantine"
    assert quarantined["regarding"] == {"apiVersion": "v1", "kind": "Node", "name": "gpu-1",
                                        "uid": kube_api.get_node("gpu-1")["metadata"]["uid"]}
    release_node(api, "gpu-1")
    release_node(api, "gpu-1")
    assert [e["reason"] for e in events(kube_api)] == ["NodeQuarantined", "NodeReleased"]


def test_condition_patch_only_on_change_and_transition_only_on_status_change():
    node = {"metadata": {"name": "n"}, "status": {"conditions": [
        {"type": "GpuHealthy", "status": "True", "reason": "PASS", "message": "ok",
         "lastTransitionTime": "2020-01-01T00:00:00Z"}]}}
    assert condition_patch(node, "GpuHealthy", "True", "PASS", "ok") is None
    same_status = condition_patch(node, "GpuHealthy", "True", "MONITOR", "watch it", now=0)
    assert same_status["status"]["conditions"][0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    flipped = condition_patch(node, "GpuHealthy", "False", "RESET", "bad", now=0)
    assert flipped["status"]["conditions"][0]["lastTransitionTime"] == "1970-01-01T00:00:00Z"
    assert condition_patch({"metadata": {"name": "n"}}, "GpuHealthy", "Unknown", "PASS", "x", now=0)
