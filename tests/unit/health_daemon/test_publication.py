"""What the agent writes on the node, built from a report (pure)."""

from __future__ import annotations

import json

from gpufleet.health.engine import NodeReport
from gpufleet.health.severity import Finding, HealthStatus, Severity
from gpufleet.health.sinks.publication import (
    build_publication,
    label_time,
    label_value,
    nvlink_peers,
    parse_label_time,
)


def report(findings=(), status=HealthStatus.PASS, verdict=Severity.PASS, gpus=4, unknown=(), device_count=4):
    return NodeReport(
        node="n",
        time=1_763_790_000.0,
        verdict=verdict,
        status=status,
        profile="p",
        findings=list(findings),
        unknown=list(unknown),
        checks=["ecc"],
        backend="simulated",
        device_count=device_count,
        driver_version="x",
        gpus=[
            {
                "index": i,
                "uuid": f"GPU-{i}",
                "model": "NVIDIA A100-SXM4-80GB",
                "pci_bus_id": "b",
                "memory_mib": 81920,
                "nvlinks_active": 12 if i != 2 else 0,
            }
            for i in range(gpus)
        ],
    )


def test_label_time_is_label_safe_and_round_trips():
    text = label_time(1_763_790_000.4)
    assert text == "20251122T054000Z"
    assert parse_label_time(text) == 1_763_790_000.0
    assert parse_label_time("garbage") is None and parse_label_time(None) is None


def test_label_value_cleans_models():
    assert label_value("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert label_value(" (weird) model/name! ") == "weird-model-name"
    assert len(label_value("x" * 100)) == 63


def test_gpu_inventory_health_per_gpu():
    findings = [
        Finding("ecc", "1:GPU-1", Severity.RESET, "ue"),
        Finding("power", "3:GPU-3", Severity.MONITOR, "p"),
        Finding("gpu_count", "node", Severity.REBOOT, "lost one"),
    ]
    pub = build_publication(report(findings, HealthStatus.FAIL, Severity.REBOOT), 5.0, nvswitch=True)
    gpus = json.loads(pub.annotations["gpufleet.io/gpus"])
    assert [g["health"] for g in gpus] == ["pass", "fail", "pass", "warn"]
    assert gpus[0] == {
        "index": 0,
        "uuid": "GPU-0",
        "model": "NVIDIA A100-SXM4-80GB",
        "memory_mib": 81920,
        "health": "pass",
        "nvlink_peers": [1, 3],
    }
    assert gpus[2]["nvlink_peers"] == []  # no active link
    assert pub.labels == {
        "gpufleet.io/health": "fail",
        "gpufleet.io/severity": "REBOOT",
        "gpufleet.io/gpu-count": "4",
        "gpufleet.io/gpu-model": "NVIDIA-A100-SXM4-80GB",
    }
    summary = json.loads(pub.annotations["gpufleet.io/health-report"])
    assert summary["since"] == 5.0 and summary["verdict"] == "REBOOT"
    assert "time" not in summary  # an unchanged node must give an unchanged annotation


def test_unknown_status_marks_gpus_unknown_and_a_dead_backend_keeps_inventory_labels_out():
    pub = build_publication(
        report(status=HealthStatus.UNKNOWN, unknown=[{"check": "ecc", "reason": "x"}]), 0, nvswitch=False
    )
    assert {g["health"] for g in json.loads(pub.annotations["gpufleet.io/gpus"])} == {"unknown"}
    dead = build_publication(
        report(
            status=HealthStatus.UNKNOWN,
            gpus=0,
            device_count=None,
            unknown=[{"check": "backend", "reason": "no driver"}],
        ),
        0,
        nvswitch=False,
    )
    assert "gpufleet.io/gpu-count" not in dead.labels and "gpufleet.io/gpus" not in dead.annotations


def test_without_nvswitch_no_peers_are_claimed():
    assert nvlink_peers(report(), nvswitch=False) == {0: [], 1: [], 2: [], 3: []}


def test_long_reports_are_capped():
    findings = [Finding("ecc", f"{i}:GPU-{i}", Severity.MONITOR, "m") for i in range(50)]
    summary = json.loads(
        build_publication(report(findings, HealthStatus.WARN, Severity.MONITOR), 0, False).annotations[
            "gpufleet.io/health-report"
        ]
    )
    assert len(summary["findings"]) == 32 and summary["more_findings"] == 18
