"""Node summaries and states as fleet_health_info reports them."""

from __future__ import annotations

import json

from gpufleet.kube.fleet import fleet_counts, node_summary


def node(labels=None, annotations=None, taints=None, unschedulable=False, ready=True, gpus=8):
    return {"metadata": {"name": "n", "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"capacity": {"nvidia.com/gpu": str(gpus)},
                       "allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_healthy_schedulable_node():
    summary = node_summary(node(labels={"gpufleet.io/health": "pass", "gpufleet.io/severity": "PASS"}))
    assert summary["states"] == ["healthy", "schedulable"]
    assert summary["gpu_count"] == 8 and summary["severity"] == "PASS"


def test_missing_labels_mean_unknown_never_pass():
    summary = node_summary(node(labels={"gpufleet.io/health": "fail"}))
    assert summary["severity"] == "UNKNOWN"
    assert node_summary(node())["states"] == ["unknown", "schedulable"]


def test_quarantined_cordoned_not_ready_node():
    summary = node_summary(node(
        annotations={"gpufleet.io/quarantine": json.dumps({"reason": "x"}),
                     "gpufleet.io/quarantine-result": "{broken"},
        taints=[{"key": "gpufleet.io/unhealthy", "effect": "NoSchedule"}], unschedulable=True, ready=False))
    assert summary["states"] == ["unknown", "unhealthy", "quarantined", "cordoned", "not_ready"]
    assert summary["quarantine"] == {"reason": "x"}
    assert summary["quarantine_result"] == {"unparsable": "{broken"}


def test_counts():
    summaries = [node_summary(node(labels={"gpufleet.io/health": "pass"})), node_summary(node(gpus=4))]
    counts = fleet_counts(summaries)
    assert counts["total"] == 2 and counts["gpus"] == 12 and counts["healthy"] == 1 and counts["unknown"] == 1
