"""fleet_health_info through ansible-playbook against the emulated API server."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.ansible, pytest.mark.integration]


def info_task(kube_api, **params):
    params["kubeconfig"] = kube_api.kubeconfig
    return {"name": "info", "gpufleet.cluster.fleet_health_info": params}


def seed_fleet(kube_api):
    kube_api.add_node("gpu-ok", labels={"gpufleet.io/health": "pass", "gpufleet.io/severity": "PASS"},
                      annotations={"gpufleet.io/gpus": json.dumps([{"index": 0, "uuid": "GPU-1"}])})
    kube_api.add_node("gpu-bad", gpus=4, gpu_model="NVIDIA-A100-SXM4-80GB",
                      labels={"gpufleet.io/health": "fail", "gpufleet.io/severity": "ISOLATE"},
                      taints=[{"key": "gpufleet.io/unhealthy", "effect": "NoSchedule"}])
    kube_api.add_node("gpu-q", unschedulable=True, labels={"gpufleet.io/health": "fail"},
                      taints=[{"key": "gpufleet.io/quarantine", "value": "true", "effect": "NoExecute"}],
                      annotations={"gpufleet.io/quarantine": json.dumps({"reason": "Xid 79", "by": "bob"})})
    kube_api.add_node("gpu-new")
    kube_api.add_node("cpu-only", gpus=0)


@pytest.mark.cluster
def test_reports_every_gpu_node_from_one_list(kube_api, ansible_playbook):
    seed_fleet(kube_api)
    if kube_api.emulated:
        kube_api.clear_requests()
    result = ansible_playbook([info_task(kube_api)], check=True)
    task = result.task("info")
    assert result.returncode == 0, result.stdout
    assert task["changed"] is False
    seeded = ["gpu-bad", "gpu-new", "gpu-ok", "gpu-q"]
    # a real cluster has nodes of its own; the emulator has only ours
    assert [n for n in task["names"] if n in seeded + ["cpu-only"]] == seeded
    by_name = {n["name"]: n for n in task["nodes"]}
    assert by_name["gpu-bad"]["severity"] == "ISOLATE"
    assert by_name["gpu-bad"]["gpu_count"] == 4
    assert by_name["gpu-bad"]["gpu_model"] == "NVIDIA-A100-SXM4-80GB"
    assert by_name["gpu-q"]["quarantine"] == {"reason": "Xid 79", "by": "bob"}
    assert by_name["gpu-q"]["cordoned"] is True
    assert by_name["gpu-ok"]["gpus"] == [{"index": 0, "uuid": "GPU-1"}]
    assert by_name["gpu-new"]["health"] == "unknown"
    if kube_api.emulated:
        assert task["counts"]["total"] == 4 and task["counts"]["gpus"] == 28
        assert [(r.method, r.path) for r in kube_api.requests] == [("GET", "/api/v1/nodes")]


def test_filters_by_state_and_name(kube_api, ansible_playbook):
    seed_fleet(kube_api)
    result = ansible_playbook([
        info_task(kube_api, states=["quarantined"]) | {"name": "quarantined"},
        info_task(kube_api, states=["unhealthy"]) | {"name": "unhealthy"},
        info_task(kube_api, states=["schedulable"]) | {"name": "schedulable"},
        info_task(kube_api, names=["gpu-ok", "cpu-only"], gpu_only=False) | {"name": "named"},
    ])
    assert result.task("quarantined")["names"] == ["gpu-q"]
    assert result.task("unhealthy")["names"] == ["gpu-bad", "gpu-q"]
    assert result.task("schedulable")["names"] == ["gpu-bad", "gpu-new", "gpu-ok"]
    assert result.task("named")["names"] == ["cpu-only", "gpu-ok"]


def test_unreachable_api_fails_clearly(kube_api, ansible_playbook, tmp_path):
    kubeconfig = tmp_path / "dead"
    kubeconfig.write_text(open(kube_api.kubeconfig).read().replace(kube_api.url, "http://127.0.0.1:9"))
    result = ansible_playbook([{"name": "info", "gpufleet.cluster.fleet_health_info": {
        "kubeconfig": str(kubeconfig)}}])
    assert result.returncode != 0
    assert result.task("info")["msg"].startswith("listing the fleet:")


def test_include_workloads_reports_gpu_pods_and_idle_state(kube_api, ansible_playbook):
    seed_fleet(kube_api)
    kube_api.add_pod("train-0", node="gpu-ok", gpus=8, owner_kind="Job")
    kube_api.add_pod("done", node="gpu-new", gpus=8, owner_kind="Job", phase="Succeeded")
    kube_api.add_pod("plugin", namespace="kube-system", node="gpu-new", owner_kind="DaemonSet")
    kube_api.clear_requests()
    result = ansible_playbook([
        info_task(kube_api, states=["idle"]) | {"name": "idle"},
        info_task(kube_api, names=["gpu-ok"], include_workloads=True) | {"name": "one"},
    ])
    assert result.task("idle")["names"] == ["gpu-bad", "gpu-new", "gpu-q"]
    one = result.task("one")["nodes"][0]
    assert one["gpu_pods"] == ["default/train-0"] and one["gpus_in_use"] == 8 and "busy" in one["states"]
    assert [(r.method, r.path, r.query.get("fieldSelector")) for r in kube_api.requests] == [
        ("GET", "/api/v1/nodes", None), ("GET", "/api/v1/pods", None),
        ("GET", "/api/v1/nodes", None), ("GET", "/api/v1/pods", "spec.nodeName=gpu-ok")]
