"""The day-2 playbooks end to end against the emulated API server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ansible, pytest.mark.integration]

PLAYBOOKS = Path(__file__).resolve().parents[3] / "playbooks"


def play(ansible_playbook, kube_api, name, **extra_vars):
    extra_vars["gpufleet_kubeconfig"] = kube_api.kubeconfig
    return ansible_playbook(PLAYBOOKS / name, extra_vars=extra_vars)


def annotation(kube_api, node, key):
    raw = kube_api.get_node(node)["metadata"].get("annotations", {}).get(key)
    return json.loads(raw) if raw else None


def test_quarantine_then_release_playbooks(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    kube_api.add_node("gpu-b")
    kube_api.add_pod("train-0", node="gpu-a", gpus=8, owner_kind="Job")
    kube_api.add_pod("exporter", namespace="kube-system", node="gpu-a", owner_kind="DaemonSet")

    quarantined = play(ansible_playbook, kube_api, "quarantine.yml", node="gpu-a", reason="Xid 79",
                       requested_by="carol")
    assert quarantined.returncode == 0, quarantined.stdout[-3000:]
    node = kube_api.get_node("gpu-a")
    assert node["spec"]["unschedulable"] is True
    assert {"key": "gpufleet.io/quarantine", "value": "true", "effect": "NoExecute"} in node["spec"]["taints"]
    assert annotation(kube_api, "gpu-a", "gpufleet.io/quarantine")["by"] == "carol"
    assert kube_api.get_pod("train-0") is None
    assert kube_api.get_pod("exporter", "kube-system") is not None

    released = play(ansible_playbook, kube_api, "release.yml", node="gpu-a")
    assert released.returncode == 0, released.stdout[-3000:]
    node = kube_api.get_node("gpu-a")
    assert not node["spec"].get("unschedulable") and not node["spec"].get("taints")
    assert node["metadata"]["labels"]["gpufleet.io/health"] == "pass"
    assert annotation(kube_api, "gpu-a", "gpufleet.io/quarantine") is None


def test_quarantine_playbook_needs_a_node(kube_api, ansible_playbook):
    result = play(ansible_playbook, kube_api, "quarantine.yml")
    assert result.returncode != 0
    assert "-e node=" in result.stdout


def test_health_sweep_taints_first_skips_busy_and_quarantines_failures(kube_api, ansible_playbook):
    for name in ("gpu-a", "gpu-b", "gpu-c", "gpu-busy"):
        kube_api.add_node(name)
    kube_api.add_node("gpu-sick", labels={"gpufleet.io/health": "fail"})
    kube_api.add_node("gpu-cordoned", unschedulable=True)
    kube_api.add_pod("train-0", node="gpu-busy", gpus=4, owner_kind="Job")
    kube_api.start_job_controller(lambda job: (job["spec"]["template"]["spec"]["nodeName"] != "gpu-c", None))

    result = play(ansible_playbook, kube_api, "health_sweep.yml", sweep_batch=2, sweep_timeout=60,
                  sweep_max_quarantined="50%")
    assert result.returncode == 0, result.stdout[-4000:]

    outcomes = {n: (annotation(kube_api, n, "gpufleet.io/last-sweep") or {}).get("result")
                for n in ("gpu-a", "gpu-b", "gpu-c", "gpu-busy", "gpu-sick", "gpu-cordoned")}
    assert outcomes == {"gpu-a": "pass", "gpu-b": "pass", "gpu-c": "fail", "gpu-busy": "skipped-busy",
                        "gpu-sick": None, "gpu-cordoned": None}
    assert annotation(kube_api, "gpu-busy", "gpufleet.io/last-sweep")["busy_pods"] == ["default/train-0"]
    # the maintenance taint is gone everywhere; the failed node is quarantined
    for name in ("gpu-a", "gpu-b", "gpu-busy"):
        assert not kube_api.get_node(name)["spec"].get("taints"), name
    assert [t["key"] for t in kube_api.get_node("gpu-c")["spec"]["taints"]] == ["gpufleet.io/quarantine"]
    assert kube_api.get_object("jobs", "gpufleet-diag-gpu-busy", "kube-system") is None
    assert kube_api.get_object("jobs", "gpufleet-diag-gpu-a", "kube-system") is not None

    # taint FIRST: each batch's node patches come before that batch's pod listing
    log = [(r.method, r.path) for r in kube_api.requests]
    first_pod_list = log.index(("GET", "/api/v1/pods"))
    tainted_before = {path.rsplit("/", 1)[1] for method, path in log[:first_pod_list] if method == "PATCH"}
    assert len(tainted_before) == 2 and tainted_before <= {"gpu-a", "gpu-b", "gpu-busy", "gpu-c"}


def test_replace_playbook_drains_and_marks_for_the_recycler(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    kube_api.add_pod("web-0", node="gpu-a", owner_kind="ReplicaSet")
    result = play(ansible_playbook, kube_api, "replace.yml", node="gpu-a", reason="GPU 3 off the bus")
    assert result.returncode == 0, result.stdout[-3000:]
    node = kube_api.get_node("gpu-a")
    assert node["metadata"]["labels"]["gpufleet.io/replace"] == "requested"
    assert annotation(kube_api, "gpu-a", "gpufleet.io/replace")["reason"] == "GPU 3 off the bus"
    assert kube_api.get_pod("web-0") is None

    deleted = play(ansible_playbook, kube_api, "replace.yml", node="gpu-a", replace_delete_node=True)
    assert deleted.returncode == 0, deleted.stdout[-3000:]
    assert kube_api.get_node("gpu-a") is None


def test_fleet_report_prints_a_table(kube_api, ansible_playbook, tmp_path):
    kube_api.add_node("gpu-a", labels={"gpufleet.io/health": "pass", "gpufleet.io/severity": "PASS"})
    kube_api.add_node("gpu-q", labels={"gpufleet.io/health": "fail"}, unschedulable=True,
                      annotations={"gpufleet.io/quarantine": json.dumps({"reason": "Xid 79"})})
    kube_api.add_pod("train-0", node="gpu-a", gpus=8, owner_kind="Job")
    report = tmp_path / "fleet.txt"
    result = play(ansible_playbook, kube_api, "fleet_report.yml", report_file=str(report))
    assert result.returncode == 0, result.stdout[-3000:]
    lines = report.read_text().splitlines()
    assert lines[0].split()[:3] == ["NODE", "HEALTH", "SEVERITY"]
    row_a = next(line.split() for line in lines if line.startswith("gpu-a"))
    assert row_a[:5] == ["gpu-a", "pass", "PASS", "yes", "no"] and row_a[6:8] == ["8", "8"]
    row_q = next(line for line in lines if line.startswith("gpu-q"))
    assert "Xid 79" in row_q and " yes " in row_q
    assert "totals: " in lines[-1] and "quarantined=1" in lines[-1]
