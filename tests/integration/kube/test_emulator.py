"""The kube_api fixture behaves like kube-apiserver where gpufleet relies on it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException


@pytest.mark.cluster
def test_typed_client_reads_seeded_gpu_nodes_and_selects_pods_by_node(kube_api):
    kube_api.add_node("gpu-a", gpus=8)
    kube_api.add_node("cpu-a", gpus=0)
    kube_api.add_pod("train-0", node="gpu-a", gpus=8, labels={"app": "train"}, owner_kind="Job")
    kube_api.add_pod("web-0", node="cpu-a", labels={"app": "web"})
    core = client.CoreV1Api(kube_api.api_client)

    gpu_nodes = core.list_node(label_selector="nvidia.com/gpu.present=true").items
    assert [n.metadata.name for n in gpu_nodes] == ["gpu-a"]
    assert gpu_nodes[0].status.allocatable["nvidia.com/gpu"] == "8"

    on_gpu_a = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=gpu-a").items
    assert [p.metadata.name for p in on_gpu_a] == ["train-0"]
    assert on_gpu_a[0].metadata.owner_references[0].kind == "Job"
    not_train = core.list_namespaced_pod("default", label_selector="app!=train").items
    assert [p.metadata.name for p in not_train] == ["web-0"]


def test_stale_resource_version_gets_409_and_fresh_one_succeeds(kube_api):
    kube_api.add_node("gpu-a")
    core = client.CoreV1Api(kube_api.api_client)
    stale = core.read_node("gpu-a")
    core.patch_node("gpu-a", {"metadata": {"labels": {"other": "writer"}}})

    stale.metadata.labels["mine"] = "x"
    with pytest.raises(ApiException) as conflict:
        core.replace_node("gpu-a", stale)
    assert conflict.value.status == 409

    fresh = core.read_node("gpu-a")
    fresh.metadata.labels["mine"] = "x"
    core.replace_node("gpu-a", fresh)
    assert kube_api.get_node("gpu-a")["metadata"]["labels"]["mine"] == "x"
    assert kube_api.get_node("gpu-a")["metadata"]["labels"]["other"] == "writer"


def test_patch_types_on_node_taints(kube_api):
    kube_api.add_node("gpu-a", taints=[{"key": "a", "effect": "NoSchedule"}])
    core = client.CoreV1Api(kube_api.api_client)
    # strategic merge (the client's default for dict bodies): taints have no merge key -> replaced
    core.patch_node("gpu-a", {"spec": {"taints": [{"key": "b", "effect": "NoExecute"}]}})
    assert kube_api.get_node("gpu-a")["spec"]["taints"] == [{"key": "b", "effect": "NoExecute"}]
    # JSON patch (the client picks it for list bodies)
    core.patch_node("gpu-a", [{"op": "add", "path": "/spec/taints/-",
                               "value": {"key": "c", "effect": "NoSchedule"}}])
    assert [t["key"] for t in kube_api.get_node("gpu-a")["spec"]["taints"]] == ["b", "c"]
    # a failed JSON patch test op changes nothing
    with pytest.raises(ApiException) as invalid:
        core.patch_node("gpu-a", [{"op": "test", "path": "/spec/unschedulable", "value": True},
                                  {"op": "replace", "path": "/spec/taints", "value": []}])
    assert invalid.value.status == 422
    assert len(kube_api.get_node("gpu-a")["spec"]["taints"]) == 2


def test_eviction_refused_by_pdb_with_429_then_allowed(kube_api):
    kube_api.add_node("gpu-a")
    kube_api.add_pod("db-0", node="gpu-a", labels={"app": "db"}, owner_kind="StatefulSet")
    kube_api.add_pdb("db", selector={"app": "db"}, min_available=1)
    core = client.CoreV1Api(kube_api.api_client)
    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name="db-0", namespace="default"))

    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod_eviction("db-0", "default", eviction)
    assert refused.value.status == 429
    assert "disruption budget" in json.loads(refused.value.body)["message"]

    kube_api.add_pod("db-1", node="gpu-b", labels={"app": "db"}, owner_kind="StatefulSet")
    core.create_namespaced_pod_eviction("db-0", "default", eviction)
    assert kube_api.get_pod("db-0") is None
    assert [r.path for r in kube_api.writes()] == ["/api/v1/namespaces/default/pods/db-0/eviction"] * 2


def test_request_log_and_injected_failure(kube_api):
    kube_api.add_node("gpu-a")
    kube_api.fail_next("PATCH", r"/nodes/gpu-a$", 500)
    core = client.CoreV1Api(kube_api.api_client)
    core.list_node()
    with pytest.raises(ApiException) as failed:
        core.patch_node("gpu-a", {"metadata": {"labels": {"x": "1"}}})
    assert failed.value.status == 500
    core.patch_node("gpu-a", {"metadata": {"labels": {"x": "1"}}})
    assert [(r.method, r.path) for r in kube_api.requests] == [
        ("GET", "/api/v1/nodes"), ("PATCH", "/api/v1/nodes/gpu-a"), ("PATCH", "/api/v1/nodes/gpu-a")]
    assert kube_api.requests[2].body == {"metadata": {"labels": {"x": "1"}}}
    assert kube_api.requests[2].content_type == "application/strategic-merge-patch+json"
    kube_api.clear_requests()
    assert kube_api.writes() == []


def test_kubeconfig_works_from_another_process(kube_api):
    kube_api.add_node("gpu-a", gpus=4, gpu_model="NVIDIA-A100-SXM4-80GB")
    script = ("import sys, kubernetes\n"
              "kubernetes.config.load_kube_config(sys.argv[1])\n"
              "n = kubernetes.client.CoreV1Api().read_node('gpu-a')\n"
              "print(n.metadata.labels['nvidia.com/gpu.product'], n.status.capacity['nvidia.com/gpu'])\n")
    out = subprocess.run([sys.executable, "-c", script, kube_api.kubeconfig], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["NVIDIA-A100-SXM4-80GB", "4"]


def test_generic_crud_for_jobs_and_discovery(kube_api):
    batch = client.BatchV1Api(kube_api.api_client)
    batch.create_namespaced_job("default", {"metadata": {"name": "diag"}, "spec": {"template": {"spec": {
        "containers": [{"name": "c", "image": "x"}], "restartPolicy": "Never"}}}})
    assert [j.metadata.name for j in batch.list_namespaced_job("default").items] == ["diag"]
    batch.delete_namespaced_job("diag", "default")
    assert batch.list_namespaced_job("default").items == []
    namespaces = client.CoreV1Api(kube_api.api_client).list_namespace().items
    assert {"default", "kube-system"} <= {n.metadata.name for n in namespaces}
    assert client.VersionApi(kube_api.api_client).get_code().major == "1"


def test_set_based_selectors_merge_patch_nulls_and_dry_run(kube_api):
    kube_api.add_node("a", labels={"tier": "gold"}, annotations={"x": "1"})
    kube_api.add_node("b", labels={"tier": "silver"})
    kube_api.add_node("c", gpus=0)
    core = client.CoreV1Api(kube_api.api_client)

    def names(**selector):
        return [n.metadata.name for n in core.list_node(**selector).items]

    assert names(label_selector="tier in (gold,silver)") == ["a", "b"]
    assert names(label_selector="!tier") == ["c"]
    assert names(field_selector="metadata.name!=a") == ["b", "c"]

    core.patch_node("a", {"metadata": {"annotations": {"x": None}}},
                    _content_type="application/merge-patch+json")
    assert "x" not in kube_api.get_node("a")["metadata"]["annotations"]
    revision = kube_api.get_node("a")["metadata"]["resourceVersion"]
    core.patch_node("a", {"spec": {"unschedulable": True}}, dry_run="All")
    assert kube_api.get_node("a")["metadata"]["resourceVersion"] == revision
    assert not kube_api.get_node("a")["spec"].get("unschedulable")


def test_label_selected_lists_follow_every_write(kube_api):
    """LISTs by `key=value` and `key` answer from the label index: each write path must keep it exact."""
    kube_api.add_node("a", labels={"fenced": "true"})
    kube_api.add_node("b")
    kube_api.add_pod("p", labels={"fenced": "true"})  # another resource with the same label
    core = client.CoreV1Api(kube_api.api_client)

    def names(selector):
        return [n.metadata.name for n in core.list_node(label_selector=selector).items]

    assert names("fenced") == names("fenced=true") == ["a"]
    assert names("fenced=") == []
    core.patch_node("b", {"metadata": {"labels": {"fenced": "true"}}},
                    _content_type="application/merge-patch+json")
    assert names("fenced,fenced=true") == ["a", "b"]
    core.patch_node("a", [{"op": "replace", "path": "/metadata/labels/fenced", "value": ""}])
    assert names("fenced") == ["a", "b"] and names("fenced=true") == ["b"] and names("fenced=") == ["a"]
    node = core.read_node("b")
    node.metadata.labels.pop("fenced")
    core.replace_node("b", node)
    assert names("fenced") == ["a"]
    core.patch_node_status("a", {"metadata": {"labels": {"fenced": None}}, "status": {"phase": "Running"}})
    assert names("fenced") == ["a"]  # the status subresource leaves the labels alone
    kube_api.update_object("nodes", "b", {"metadata": {"labels": {"fenced": "true"}}})
    assert names("fenced=true") == ["b"]
    core.delete_node("b")
    assert names("fenced=true") == []
    kube_api.add_node("b")
    assert names("fenced") == ["a"] and names("!fenced") == ["b"]
    pods = core.list_namespaced_pod("default", label_selector="fenced").items
    assert [p.metadata.name for p in pods] == ["p"]


def test_evicted_pods_linger_while_terminating(kube_api):
    import time

    kube_api.add_pod("slow", node="n", owner_kind="ReplicaSet")
    kube_api.set_termination_seconds(0.5)
    core = client.CoreV1Api(kube_api.api_client)
    core.create_namespaced_pod_eviction("slow", "default", client.V1Eviction(
        metadata=client.V1ObjectMeta(name="slow", namespace="default")))
    assert kube_api.get_pod("slow")["metadata"]["deletionTimestamp"]
    time.sleep(0.6)
    assert kube_api.get_pod("slow") is None
