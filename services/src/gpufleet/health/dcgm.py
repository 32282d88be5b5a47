"""Parsing ``dcgmi diag -j`` output of DCGM 3.x and 4.x.

DCGM 3.x: top key "DCGM GPU Diagnostic"; per-GPU results name the GPU in
"gpu_id"/"gpu_ids"; problems are under "warnings" with "error_severity".
DCGM 4.x: top key "DCGM Diagnostic"; results name an entity ("entity_group",
"entity_id"); problems under "warnings" (and a top-level "errors" list for
system-wide failures), with "error_severity" or "severity".

``error_severity`` is DCGM's dcgmErrorSeverity_t, mapped as:
0 NONE -> PASS, 1 MONITOR -> MONITOR, 2 ISOLATE -> ISOLATE, 3 UNKNOWN -> MONITOR,
4 TRIAGE -> MONITOR, 5 CONFIG -> MONITOR, 6 RESET -> RESET (drain and reset).
A failed test with no severity given is RESET (re-run after a reset).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gpufleet.health.severity import Severity

DCGM_SEVERITY = {
    0: Severity.PASS,
    1: Severity.MONITOR,
    2: Severity.ISOLATE,
    3: Severity.MONITOR,
    4: Severity.MONITOR,
    5: Severity.MONITOR,
    6: Severity.RESET,
}
DCGM_SEVERITY_NAMES = {
    0: "NONE",
    1: "MONITOR",
    2: "ISOLATE",
    3: "UNKNOWN",
    4: "TRIAGE",
    5: "CONFIG",
    6: "RESET",
}


class DcgmParseError(ValueError):
    pass


@dataclass
class DcgmProblem:
    test: str
    gpu: int | None  # None: not tied to one GPU
    status: str  # Fail | Warn
    severity: Severity
    message: str
    error_id: int | None = None
    dcgm_severity: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class DcgmResult:
    version: str  # "3" or "4" (format generation)
    dcgm_version: str | None
    tests_run: int
    problems: list[DcgmProblem]


def _gpus_of(result: dict[str, Any]) -> list[int | None]:
    if "entity_id" in result:
        if str(result.get("entity_group", "GPU")).upper() != "GPU":
            return [None]
        return [int(result["entity_id"])]
    for key in ("gpu_id", "gpu_ids"):
        if key in result:
            raw = result[key]
            values = raw if isinstance(raw, list) else str(raw).split(",")
            return [int(v) for v in values if str(v).strip() != ""] or [None]
    return [None]


def _severity_of(warning: dict[str, Any]) -> tuple[Severity | None, int | None]:
    raw = warning.get("error_severity", warning.get("severity"))
    if raw is None:
        return None, None
    try:
        code = int(raw)
    except (TypeError, ValueError):
        names = {v: k for k, v in DCGM_SEVERITY_NAMES.items()}
        code = names.get(str(raw).upper().removeprefix("DCGM_ERROR_"))
        if code is None:
            return Severity.MONITOR, None
    return DCGM_SEVERITY.get(code, Severity.MONITOR), code


def _message_of(warning: dict[str, Any] | str) -> str:
    if isinstance(warning, str):
        return warning
    return str(warning.get("warning") or warning.get("msg") or warning.get("message") or "")


def parse_dcgm_diag(text: str) -> DcgmResult:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DcgmParseError(f"dcgmi output is not JSON: {exc}") from exc
    if "DCGM Diagnostic" in data:
        version, body = "4", data["DCGM Diagnostic"]
    elif "DCGM GPU Diagnostic" in data:
        version, body = "3", data["DCGM GPU Diagnostic"]
    else:
        raise DcgmParseError(f"unrecognised dcgmi JSON (keys: {sorted(data)[:5]})")
    dcgm_version = body.get("version") or (data.get("metadata") or {}).get("version")
    problems: list[DcgmProblem] = []
    tests_run = 0
    for category in body.get("test_categories", []):
        for test in category.get("tests", []):
            name = str(test.get("name", "?"))
            tests_run += 1
            for result in test.get("results", []):
                status = str(result.get("status", "")).capitalize()
                if status not in ("Fail", "Warn"):
                    continue
                warnings = result.get("warnings") or result.get("errors") or []
                if isinstance(warnings, (dict, str)):
                    warnings = [warnings]
                for gpu in _gpus_of(result):
                    if not warnings:
                        default = Severity.RESET if status == "Fail" else Severity.MONITOR
                        problems.append(DcgmProblem(name, gpu, status, default, f"{name}: {status}"))
                    for warning in warnings:
                        severity, code = _severity_of(warning if isinstance(warning, dict) else {})
                        if severity is None:
                            severity = Severity.RESET if status == "Fail" else Severity.MONITOR
                        error_id = (
                            warning.get("error_id", warning.get("code"))
                            if isinstance(warning, dict)
                            else None
                        )
                        problems.append(
                            DcgmProblem(
                                name,
                                gpu,
                                status,
                                severity,
                                _message_of(warning),
                                error_id,
                                code,
                                {"category": category.get("category")},
                            )
                        )
    for error in data.get("errors", []) or body.get("errors", []) or []:
        severity, code = _severity_of(error)
        problems.append(
            DcgmProblem(
                str(error.get("test", "system")),
                None,
                "Fail",
                severity or Severity.MONITOR,
                _message_of(error),
                error.get("error_id", error.get("code")),
                code,
            )
        )
    return DcgmResult(version, dcgm_version, tests_run, problems)
