"""What the agent publishes about a node, built from one NodeReport (pure, no I/O).

Labels (DESIGN.md): gpufleet.io/health, /severity, /last-check, /gpu-count,
/gpu-model. Annotations: gpufleet.io/health-report (compact JSON) and
gpufleet.io/gpus (the per-GPU inventory the placement engine reads:
[{index, uuid, model, memory_mib, health, nvlink_peers}]).

Nothing in the labels or annotations changes from cycle to cycle unless the
node's health does — the cycle time lives only in `last-check`, which the
Kubernetes sink rewrites when something else changes or when it gets old —
so an unchanged node costs no write.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass, field

from gpufleet.health.severity import HealthStatus, Severity

LABEL_HEALTH = "gpufleet.io/health"
LABEL_SEVERITY = "gpufleet.io/severity"
LABEL_LAST_CHECK = "gpufleet.io/last-check"
LABEL_GPU_COUNT = "gpufleet.io/gpu-count"
LABEL_GPU_MODEL = "gpufleet.io/gpu-model"
ANNOTATION_HEALTH_REPORT = "gpufleet.io/health-report"
ANNOTATION_GPUS = "gpufleet.io/gpus"
REPORT_SCHEMA = "gpufleet.io/health-report/v1"
MAX_REPORTED_FINDINGS = 32  # keeps the annotation far below the API's 256 KiB limit
LAST_CHECK_FORMAT = "%Y%m%dT%H%M%SZ"

GPU_HEALTH = {Severity.PASS: "pass", Severity.MONITOR: "warn"}  # RESET and worse: fail


@dataclass
class Publication:
    node: str
    time: float
    verdict: Severity
    status: HealthStatus
    labels: dict[str, str]
    annotations: dict[str, str]
    gpus: list[dict] = field(default_factory=list)


def label_time(seconds: float) -> str:
    """A time as a label value allows (no ':'): 20261122T055700Z (UTC)."""
    return time.strftime(LAST_CHECK_FORMAT, time.gmtime(seconds))


def parse_label_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(calendar.timegm(time.strptime(value, LAST_CHECK_FORMAT)))
    except (ValueError, OverflowError):
        return None


def label_value(text: str) -> str:
    """Make text a valid label value: [A-Za-z0-9._-], at most 63, alphanumeric at both ends."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


def gpu_health(report) -> dict[int, str]:
    """pass | warn | fail | unknown per GPU index, from the findings naming that GPU."""
    worst: dict[int, Severity] = {}
    for finding in report.findings:
        index, sep, _ = finding.gpu.partition(":")
        if sep and index.isdigit():
            worst[int(index)] = max(worst.get(int(index), Severity.PASS), finding.severity)
    result = {}
    for gpu in report.gpus:
        severity = worst.get(gpu["index"])
        if severity is None and report.status == HealthStatus.UNKNOWN:
            result[gpu["index"]] = "unknown"
        else:
            result[gpu["index"]] = GPU_HEALTH.get(severity or Severity.PASS, "fail")
    return result


def nvlink_peers(report, nvswitch: bool) -> dict[int, list[int]]:
    """GPUs reachable over NVLink. Through NVSwitch every GPU with an active link reaches every other
    one; without a switch the backend does not say which GPU a link goes to, so no peers are claimed."""
    linked = [g["index"] for g in report.gpus if g.get("nvlinks_active")]
    if not nvswitch:
        return {g["index"]: [] for g in report.gpus}
    return {
        g["index"]: [p for p in linked if p != g["index"]] if g["index"] in linked else []
        for g in report.gpus
    }


def build_publication(report, verdict_since: float, nvswitch: bool) -> Publication:
    health = gpu_health(report)
    peers = nvlink_peers(report, nvswitch)
    gpus = [
        {
            "index": g["index"],
            "uuid": g["uuid"],
            "model": g["model"],
            "memory_mib": g.get("memory_mib"),
            "health": health[g["index"]],
            "nvlink_peers": peers[g["index"]],
        }
        for g in report.gpus
    ]
    labels = {LABEL_HEALTH: report.status.value, LABEL_SEVERITY: report.verdict.name}
    annotations = {}
    if report.device_count is not None:  # the backend answered: the inventory is known
        labels[LABEL_GPU_COUNT] = str(len(report.gpus))
        models = sorted({g["model"] for g in report.gpus})
        if models:
            labels[LABEL_GPU_MODEL] = label_value(models[0] if len(models) == 1 else "mixed")
        annotations[ANNOTATION_GPUS] = compact(gpus)
    problems = [f for f in report.findings if f.severity > Severity.PASS]
    summary = {
        "schema": REPORT_SCHEMA,
        "verdict": report.verdict.name,
        "status": report.status.value,
        "since": round(verdict_since, 3),
        "profile": report.profile,
        "backend": report.backend,
        "gpus": report.device_count,
        "findings": [
            {"check": f.check, "gpu": f.gpu, "severity": f.severity.name, "message": f.message}
            for f in problems[:MAX_REPORTED_FINDINGS]
        ],
        "unknown": sorted({u["check"] for u in report.unknown}),
    }
    if len(problems) > MAX_REPORTED_FINDINGS:
        summary["more_findings"] = len(problems) - MAX_REPORTED_FINDINGS
    annotations[ANNOTATION_HEALTH_REPORT] = compact(summary)
    return Publication(report.node, report.time, report.verdict, report.status, labels, annotations, gpus)


def compact(data) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)
