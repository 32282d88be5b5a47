"""workload_placement through ansible-playbook against the emulated API server."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.ansible, pytest.mark.integration]

GPUS_ANNOTATION = "gpufleet.io/gpus"


def inventory(count=8, model="NVIDIA-H100-80GB-HBM3", health="pass", peers=None):
    return json.dumps(
        [
            {
                "index": i,
                "uuid": f"GPU-{i}",
                "model": model,
                "memory_mib": 81559,
                "health": health,
                "nvlink_peers": (peers or {}).get(i, []),
            }
            for i in range(count)
        ]
    )


def job(name, gpus=1, priority=None, namespace="default", annotations=None):
    metadata = {"name": name, "namespace": namespace, "annotations": dict(annotations or {})}
    if priority is not None:
        metadata["annotations"]["gpufleet.io/priority"] = str(priority)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox:stable",
                            "command": ["true"],
                            "resources": {
                                "requests": {"cpu": "4", "memory": "16Gi"},
                                "limits": {"nvidia.com/gpu": str(gpus)},
                            },
                        }
                    ],
                },
            },
        },
    }


def place_task(kube_api, workload, task_name="place", **params):
    return {
        "name": task_name,
        "gpufleet.cluster.workload_placement": dict(
            params, workload=workload, kubeconfig=kube_api.kubeconfig
        ),
    }


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


@pytest.fixture
def two_gpu_nodes(kube_api):
    # gpu-a: 8 free GPUs; gpu-b: 6 of 8 GPUs busy (a running pod pinned to 0-5). best_fit → gpu-b.
    kube_api.add_node("gpu-a", annotations={GPUS_ANNOTATION: inventory()})
    kube_api.add_node("gpu-b", annotations={GPUS_ANNOTATION: inventory()})
    kube_api.add_pod(
        "busy", node="gpu-b", gpus=6, cpu="8", annotations={"gpufleet.io/assigned-gpus": "0,1,2,3,4,5"}
    )
    return kube_api


def test_places_a_job_then_is_idempotent(two_gpu_nodes, ansible_playbook):
    kube_api = two_gpu_nodes
    first = ansible_playbook([place_task(kube_api, job("train", gpus=2), visible_devices=True)])
    assert first.returncode == 0, first.stdout
    result = first.task("place")
    assert result["changed"] is True
    assert (result["node"], result["gpus"]) == ("gpu-b", [6, 7])
    assert result["runner_up"]["node"] == "gpu-a"
    assert result["score"] > result["runner_up"]["score"]
    created = kube_api.get_object("Job", "train")
    assert pod_spec(created)["nodeSelector"] == {"kubernetes.io/hostname": "gpu-b"}
    assert created["metadata"]["annotations"]["gpufleet.io/assigned-gpus"] == "6,7"
    assert created["spec"]["template"]["metadata"]["annotations"]["gpufleet.io/assigned-gpus"] == "6,7"
    assert pod_spec(created)["containers"][0]["env"] == [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "6,7"}]

    kube_api.clear_requests()
    second = ansible_playbook([place_task(kube_api, job("train", gpus=2), visible_devices=True)])
    assert second.returncode == 0, second.stdout
    assert second.task("place")["changed"] is False
    assert (second.task("place")["node"], second.task("place")["gpus"]) == ("gpu-b", [6, 7])
    assert kube_api.writes() == []


def test_check_mode_returns_the_decision_and_writes_nothing(two_gpu_nodes, ansible_playbook):
    kube_api = two_gpu_nodes
    kube_api.clear_requests()
    result = ansible_playbook([place_task(kube_api, job("train", gpus=1))], check=True)
    assert result.returncode == 0, result.stdout
    task = result.task("place")
    assert task["changed"] is True
    assert task["node"] == "gpu-b" and len(task["gpus"]) == 1
    assert task["placements"][0]["action"] == "would create"
    assert kube_api.writes() == []
    assert kube_api.get_object("Job", "train") is None


def test_patches_an_existing_unplaced_deployment(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a", annotations={GPUS_ANNOTATION: inventory()})
    deployment = job("serve", gpus=1)
    deployment.update(apiVersion="apps/v1", kind="Deployment")
    deployment["spec"] = {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "serve"}},
        "template": {
            "metadata": {"labels": {"app": "serve"}},
            "spec": {"containers": deployment["spec"]["template"]["spec"]["containers"]},
        },
    }
    kube_api.add_object("Deployment", deployment)
    result = ansible_playbook([place_task(kube_api, deployment, pin="node_affinity")])
    assert result.returncode == 0, result.stdout
    assert result.task("place")["placements"][0]["action"] == "patched"
    patched = kube_api.get_object("Deployment", "serve")
    terms = pod_spec(patched)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["gpu-a"]
    assert [m for m in kube_api.writes() if m.method == "PATCH"]


def test_nothing_fits_fails_with_the_reason_per_filter(kube_api, ansible_playbook):
    kube_api.add_node("gpu-sick", labels={"gpufleet.io/health": "fail"})
    kube_api.add_node("gpu-quarantined", taints=[{"key": "gpufleet.io/quarantine", "effect": "NoExecute"}])
    kube_api.add_node("gpu-cordoned", unschedulable=True)
    kube_api.add_node("gpu-small", gpus=4)
    kube_api.clear_requests()
    result = ansible_playbook([place_task(kube_api, job("huge", gpus=8))])
    assert result.returncode != 0
    task = result.task("place")
    assert task["failed"] is True
    assert task["msg"] == "no node fits Job/default/huge: health removed 3, resources removed 1"
    assert task["filters"][0]["workload"] == "Job/default/huge"
    assert kube_api.writes() == []


def test_batch_is_placed_in_priority_order(kube_api, ansible_playbook):
    # One node with 2 GPUs: the two highest priorities get a GPU each,
    # so the lowest priority (listed first) fits nowhere and the task fails writing nothing.
    kube_api.add_node("gpu-a", gpus=2, annotations={GPUS_ANNOTATION: inventory(2)})
    batch = [job("low", priority=1), job("high", priority=9), job("mid", priority=5)]
    planned = ansible_playbook([place_task(kube_api, batch)], check=True)
    assert planned.returncode != 0
    assert "no node fits Job/default/low" in planned.task("place")["msg"]

    ok = ansible_playbook([place_task(kube_api, batch[1:] + [job("cpu-only", gpus=0, priority=0)])])
    assert ok.returncode == 0, ok.stdout
    order = [(p["workload"], p["gpus"]) for p in ok.task("place")["placements"]]
    assert order == [("Job/default/high", [0]), ("Job/default/mid", [1]), ("Job/default/cpu-only", [])]
    assert kube_api.get_object("Job", "high")["metadata"]["annotations"]["gpufleet.io/assigned-gpus"] == "0"


def test_resource_request_is_decided_not_written(two_gpu_nodes, ansible_playbook):
    kube_api = two_gpu_nodes
    kube_api.clear_requests()
    request = {"name": "infer", "cpu": 2, "memory": "8Gi", "gpu_milli": 250}
    result = ansible_playbook([place_task(kube_api, request, strategy="fgd")])
    assert result.returncode == 0, result.stdout
    task = result.task("place")
    assert task["changed"] is False
    assert task["node"] in ("gpu-a", "gpu-b") and len(task["gpus"]) == 1
    assert kube_api.writes() == []
