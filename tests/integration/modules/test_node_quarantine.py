"""node_quarantine through ansible-playbook against the emulated API server."""

from __future__ import annotations

import json
import threading

import pytest

pytestmark = [pytest.mark.ansible, pytest.mark.integration]

QUARANTINE_TAINT = {"key": "gpufleet.io/quarantine", "value": "true", "effect": "NoExecute"}


def quarantine_task(kube_api, task_name="quarantine", **params):
    params.setdefault("name", "gpu-a")
    params["kubeconfig"] = kube_api.kubeconfig
    return {"name": task_name, "gpufleet.cluster.node_quarantine": params}


def record(node):
    raw = node["metadata"].get("annotations", {}).get("gpufleet.io/quarantine")
    return json.loads(raw) if raw else None


@pytest.mark.cluster
def test_quarantine_then_release_round_trip_is_idempotent(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a", labels={"gpufleet.io/health": "fail"})
    first = ansible_playbook([quarantine_task(kube_api, reason="Xid 79", requested_by="alice")])
    assert first.returncode == 0, first.stdout
    task = first.task("quarantine")
    assert task["changed"] is True
    node = kube_api.get_node("gpu-a")
    assert node["spec"]["unschedulable"] is True
    assert node["spec"]["taints"] == [QUARANTINE_TAINT]
    assert {k: record(node)[k] for k in ("reason", "by", "cordoned-by-us")} == {
        "reason": "Xid 79", "by": "alice", "cordoned-by-us": True}
    assert task["node"]["quarantined"] is True and "quarantined" in task["node"]["states"]

    again = ansible_playbook([quarantine_task(kube_api, reason="Xid 79", requested_by="alice")])
    assert again.task("quarantine")["changed"] is False

    released = ansible_playbook([quarantine_task(kube_api, state="released")])
    assert released.task("quarantine")["changed"] is True
    node = kube_api.get_node("gpu-a")
    assert not node["spec"].get("unschedulable")
    assert not node["spec"].get("taints")
    assert record(node) is None
    assert node["metadata"]["labels"]["gpufleet.io/health"] == "pass"
    again = ansible_playbook([quarantine_task(kube_api, state="released")])
    assert again.task("quarantine")["changed"] is False


def test_release_leaves_a_preexisting_cordon_and_foreign_taints(kube_api, ansible_playbook):
    admin_taint = {"key": "gpufleet.io/unhealthy", "effect": "NoSchedule"}
    kube_api.add_node("gpu-a", unschedulable=True, taints=[admin_taint])
    ansible_playbook([quarantine_task(kube_api, reason="flaky NVLink")])
    assert record(kube_api.get_node("gpu-a"))["cordoned-by-us"] is False

    released = ansible_playbook([quarantine_task(kube_api, state="released")])
    assert released.task("quarantine")["changed"] is True
    assert "left cordoned" in released.task("quarantine")["message"]
    node = kube_api.get_node("gpu-a")
    assert node["spec"]["unschedulable"] is True
    assert node["spec"]["taints"] == [admin_taint]  # unhealthy taint not ours: stays


def test_release_removes_the_health_agents_unhealthy_taint(kube_api, ansible_playbook):
    unhealthy = {"key": "gpufleet.io/unhealthy", "value": "xid", "effect": "NoSchedule"}
    kube_api.add_node("gpu-a", taints=[unhealthy],
                      annotations={"gpufleet.io/owned-taints":
                                   json.dumps({"gpufleet.io/unhealthy:NoSchedule": "gpufleet-health"})})
    ansible_playbook([quarantine_task(kube_api, state="released")])
    node = kube_api.get_node("gpu-a")
    assert not node["spec"].get("taints")
    assert "gpufleet.io/owned-taints" not in node["metadata"]["annotations"]


def test_check_mode_sends_no_write_and_diff_shows_cordon_and_taint(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    kube_api.add_pod("train-0", node="gpu-a", gpus=8, owner_kind="Job")
    kube_api.clear_requests()
    result = ansible_playbook([quarantine_task(kube_api, reason="test", drain=True)], check=True, diff=True)
    task = result.task("quarantine")
    assert result.returncode == 0, result.stdout
    assert task["changed"] is True
    assert task["diff"]["before"]["unschedulable"] is False
    assert task["diff"]["after"]["unschedulable"] is True
    assert task["diff"]["after"]["taints"] == [QUARANTINE_TAINT]
    assert task["drain_plan"]["evict"] == ["default/train-0"]
    assert kube_api.writes() == []
    assert kube_api.get_pod("train-0") is not None


def test_drain_skips_daemonset_and_mirror_pods_and_evicts_the_rest(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    kube_api.add_pod("train-0", node="gpu-a", gpus=8, owner_kind="Job")
    kube_api.add_pod("exporter", namespace="kube-system", node="gpu-a", owner_kind="DaemonSet")
    kube_api.add_pod("static", namespace="kube-system", node="gpu-a", mirror=True, owner_kind="Node")
    kube_api.add_pod("elsewhere", node="gpu-b", owner_kind="ReplicaSet")
    result = ansible_playbook([quarantine_task(kube_api, reason="drain", drain=True, drain_timeout=30)])
    task = result.task("quarantine")
    assert result.returncode == 0, task
    assert task["drain"]["evicted"] == ["default/train-0"]
    assert {s["pod"]: s["reason"] for s in task["drain_plan"]["skipped"]} == {
        "kube-system/exporter": "DaemonSet pod",
        "kube-system/static": "mirror pod (static, managed by the kubelet)"}
    assert kube_api.get_pod("train-0") is None
    assert kube_api.get_pod("exporter", "kube-system") is not None
    assert kube_api.get_pod("elsewhere") is not None
    assert kube_api.get_node("gpu-a")["spec"]["taints"] == [QUARANTINE_TAINT]
    # evictions happen before the NoExecute taint is written
    paths = [r.path for r in kube_api.writes()]
    assert paths.index("/api/v1/namespaces/default/pods/train-0/eviction") < len(paths) - 1
    assert paths[-1] == "/api/v1/nodes/gpu-a"


def test_emptydir_pod_blocks_drain_unless_allowed(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    kube_api.add_pod("scratchy", node="gpu-a", owner_kind="ReplicaSet", empty_dir=True)
    blocked = ansible_playbook([quarantine_task(kube_api, reason="x", drain=True)])
    assert blocked.returncode != 0
    assert "default/scratchy: uses emptyDir" in blocked.task("quarantine")["msg"]
    assert kube_api.get_pod("scratchy") is not None

    allowed = ansible_playbook([quarantine_task(kube_api, reason="x", drain=True, delete_emptydir_data=True)])
    assert allowed.returncode == 0
    assert kube_api.get_pod("scratchy") is None


def test_pdb_refusal_is_retried_until_the_budget_allows(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    kube_api.add_pod("db-0", node="gpu-a", labels={"app": "db"}, owner_kind="StatefulSet")
    kube_api.add_pdb("db", selector={"app": "db"}, min_available=1)
    # another replica becomes ready elsewhere once the first eviction was refused, freeing the budget
    stop = threading.Event()

    def replica_arrives_after_a_refusal():
        while not stop.wait(0.1):
            if any(r.path.endswith("/db-0/eviction") for r in kube_api.writes()):
                kube_api.add_pod("db-1", node="gpu-b", labels={"app": "db"}, owner_kind="StatefulSet")
                return

    helper = threading.Thread(target=replica_arrives_after_a_refusal, daemon=True)
    helper.start()
    try:
        result = ansible_playbook([quarantine_task(kube_api, reason="x", drain=True, drain_timeout=60)])
    finally:
        stop.set()
        helper.join(5)
    task = result.task("quarantine")
    assert result.returncode == 0, task
    assert task["drain"]["refusals"]["default/db-0"] >= 1
    assert task["drain"]["evicted"] == ["default/db-0"]
    assert kube_api.get_pod("db-0") is None
    evictions = [r for r in kube_api.writes() if r.path.endswith("/db-0/eviction")]
    assert len(evictions) == task["drain"]["refusals"]["default/db-0"] + 1


def test_drain_timeout_is_reported_clearly(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    kube_api.add_pod("db-0", node="gpu-a", labels={"app": "db"}, owner_kind="StatefulSet")
    kube_api.add_pdb("db", selector={"app": "db"}, min_available=1)
    result = ansible_playbook([quarantine_task(kube_api, reason="x", drain=True, drain_timeout=3)])
    task = result.task("quarantine")
    assert result.returncode != 0
    assert "timed out after 3s" in task["msg"]
    assert "default/db-0: refused" in task["msg"] and "disruption budget" in task["msg"]
    assert task["drain"]["not_evicted"] == ["default/db-0"]
    node = kube_api.get_node("gpu-a")
    assert node["spec"]["unschedulable"] is True  # cordoned, recorded...
    assert not node["spec"].get("taints")  # ...but no NoExecute taint to force the pod out


def test_drain_waits_for_evicted_pods_to_terminate(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    kube_api.add_pod("slow", node="gpu-a", owner_kind="ReplicaSet")
    kube_api.set_termination_seconds(2)
    result = ansible_playbook([quarantine_task(kube_api, reason="x", drain=True, drain_timeout=30)])
    task = result.task("quarantine")
    assert result.returncode == 0, task
    assert task["drain"]["elapsed"] >= 1.5
    pod_lists = [r for r in kube_api.requests if r.method == "GET" and r.path == "/api/v1/pods"]
    assert len(pod_lists) >= 2  # planned once, then polled until gone


def test_max_quarantined_refuses_then_force_overrides(kube_api, ansible_playbook):
    for index in range(4):
        kube_api.add_node(f"gpu-{index}")
    kube_api.add_node("cpu-0", gpus=0)  # not counted in the GPU fleet
    ok = ansible_playbook([quarantine_task(kube_api, name="gpu-0", reason="x", max_quarantined="25%")])
    assert ok.returncode == 0
    assert ok.task("quarantine")["counts"] == {"fleet": 4, "quarantined": 0, "limit": 1}

    refused = ansible_playbook([quarantine_task(kube_api, name="gpu-1", reason="x", max_quarantined="25%")])
    assert refused.returncode != 0
    assert refused.task("quarantine")["refused"] is True
    assert "1 of 4 GPU nodes are quarantined already (gpu-0)" in refused.task("quarantine")["msg"]
    assert record(kube_api.get_node("gpu-1")) is None

    # the node already quarantined may be re-run; force goes beyond the limit
    assert ansible_playbook([quarantine_task(kube_api, name="gpu-0", reason="x",
                                             max_quarantined="1")]).returncode == 0
    forced = ansible_playbook([quarantine_task(kube_api, name="gpu-1", reason="x", max_quarantined="1",
                                               force=True)])
    assert forced.returncode == 0
    assert record(kube_api.get_node("gpu-1"))["reason"] == "x"


def test_diagnostics_job_verdict_is_stored_once_per_quarantine(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a", gpus=8)
    verdict = {"verdict": "fail", "severity": "ISOLATE",
               "findings": [{"check": "dcgm", "detail": "row remap"}]}
    kube_api.start_job_controller(lambda job: (False, json.dumps(verdict)))
    task = quarantine_task(kube_api, reason="ECC", diagnostics={"timeout": 30, "image": "health:test"})
    result = ansible_playbook([task])
    outcome = result.task("quarantine")
    assert result.returncode == 0, outcome
    assert outcome["diagnostics"]["recommendation"] == "replace"
    assert outcome["diagnostics"]["findings"] == verdict["findings"]
    job = kube_api.get_object("jobs", "gpufleet-diag-gpu-a", "kube-system")
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["nodeName"] == "gpu-a"
    assert pod_spec["containers"][0]["image"] == "health:test"
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {"key": "gpufleet.io/quarantine", "operator": "Exists"} in pod_spec["tolerations"]
    annotations = kube_api.get_node("gpu-a")["metadata"]["annotations"]
    stored = json.loads(annotations["gpufleet.io/quarantine-result"])
    assert stored["severity"] == "ISOLATE"
    assert stored["quarantine_since"] == record(kube_api.get_node("gpu-a"))["since"]

    kube_api.clear_requests()
    again = ansible_playbook([task])
    assert again.task("quarantine")["changed"] is False
    assert again.task("quarantine")["diagnostics"]["recommendation"] == "replace"
    assert kube_api.writes() == []
