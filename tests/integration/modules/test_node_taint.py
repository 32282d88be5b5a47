"""node_taint through ansible-playbook against the emulated API server."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.ansible, pytest.mark.integration]

MAINTENANCE = {"key": "gpufleet.io/maintenance", "value": "sweep", "effect": "NoSchedule"}


def taint_task(kube_api, task_name="taint", **params):
    params.setdefault("name", "gpu-a")
    params.setdefault("taints", [MAINTENANCE])
    return {"name": task_name, "gpufleet.cluster.node_taint": dict(params, kubeconfig=kube_api.kubeconfig)}


def owned(node):
    return json.loads(node["metadata"]["annotations"].get("gpufleet.io/owned-taints", "{}"))


@pytest.mark.cluster
def test_present_adds_once_then_is_idempotent_without_writes(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    first = ansible_playbook([taint_task(kube_api)])
    assert first.returncode == 0, first.stdout
    assert first.task("taint")["changed"] is True
    assert kube_api.get_node("gpu-a")["spec"]["taints"] == [MAINTENANCE]
    assert owned(kube_api.get_node("gpu-a")) == {"gpufleet.io/maintenance:NoSchedule": "gpufleet.cluster"}

    if kube_api.emulated:
        kube_api.clear_requests()
    second = ansible_playbook([taint_task(kube_api)])
    assert second.task("taint")["changed"] is False
    if kube_api.emulated:
        assert kube_api.writes() == []


def test_value_updated_in_place_matching_key_and_effect(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a", taints=[
        {"key": "dedicated", "value": "a", "effect": "NoSchedule"},
        {"key": "gpufleet.io/maintenance", "value": "old", "effect": "NoSchedule"},
        {"key": "gpufleet.io/maintenance", "value": "x", "effect": "NoExecute"},
    ])
    result = ansible_playbook([taint_task(kube_api)])
    assert result.task("taint")["changed"] is True
    assert result.task("taint")["updated"] == [MAINTENANCE]
    assert kube_api.get_node("gpu-a")["spec"]["taints"] == [
        {"key": "dedicated", "value": "a", "effect": "NoSchedule"},
        MAINTENANCE,
        {"key": "gpufleet.io/maintenance", "value": "x", "effect": "NoExecute"},
    ]


def test_absent_removes_only_owned_unless_forced(kube_api, ansible_playbook):
    operator_taint = {"key": "gpufleet.io/unhealthy", "effect": "NoSchedule"}
    kube_api.add_node("gpu-a", taints=[operator_taint])
    ansible_playbook([taint_task(kube_api)])  # ours: maintenance

    absent = ansible_playbook([taint_task(kube_api, state="absent",
                                          taints=[{"key": "gpufleet.io/maintenance"},
                                                  {"key": "gpufleet.io/unhealthy"}])])
    task = absent.task("taint")
    assert task["changed"] is True
    assert task["removed"] == [MAINTENANCE]
    assert task["kept_not_owned"] == [operator_taint]
    assert kube_api.get_node("gpu-a")["spec"]["taints"] == [operator_taint]
    assert "gpufleet.io/owned-taints" not in kube_api.get_node("gpu-a")["metadata"]["annotations"]

    forced = ansible_playbook([taint_task(kube_api, state="absent", force=True,
                                          taints=[{"key": "gpufleet.io/unhealthy", "effect": "NoSchedule"}])])
    assert forced.task("taint")["removed"] == [operator_taint]
    assert not kube_api.get_node("gpu-a")["spec"].get("taints")


def test_check_mode_sends_no_write_and_diff_shows_change(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    kube_api.clear_requests()
    result = ansible_playbook([taint_task(kube_api)], check=True, diff=True)
    task = result.task("taint")
    assert task["changed"] is True
    assert task["taints_after"] == [MAINTENANCE]
    assert task["diff"]["before"]["taints"] == []
    assert task["diff"]["after"]["taints"] == [MAINTENANCE]
    assert kube_api.writes() == []
    assert [r.method for r in kube_api.requests] == ["GET"]
    assert not kube_api.get_node("gpu-a")["spec"].get("taints")


def test_replace_drops_other_owned_taints_but_not_foreign_ones(kube_api, ansible_playbook):
    foreign = {"key": "dedicated", "value": "a", "effect": "NoSchedule"}
    kube_api.add_node("gpu-a", taints=[foreign])
    ansible_playbook([taint_task(kube_api, taints=[{"key": "one", "effect": "NoSchedule"}])])
    result = ansible_playbook([taint_task(kube_api, replace=True,
                                          taints=[{"key": "two", "effect": "NoSchedule"}])])
    assert result.task("taint")["removed"] == [{"key": "one", "effect": "NoSchedule"}]
    assert kube_api.get_node("gpu-a")["spec"]["taints"] == [foreign, {"key": "two", "effect": "NoSchedule"}]


def test_conflict_is_retried_on_fresh_state(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    kube_api.fail_next("PATCH", r"/api/v1/nodes/gpu-a$", 409)
    result = ansible_playbook([taint_task(kube_api)])
    assert result.task("taint")["changed"] is True
    assert [r.method for r in kube_api.requests] == ["GET", "PATCH", "GET", "PATCH"]
    assert kube_api.get_node("gpu-a")["spec"]["taints"] == [MAINTENANCE]


def test_missing_node_fails_clearly(kube_api, ansible_playbook):
    result = ansible_playbook([taint_task(kube_api, name="nope")])
    assert result.returncode != 0
    assert "nope" in result.task("taint")["msg"] and "not found" in result.task("taint")["msg"]
