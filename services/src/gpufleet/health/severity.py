"""Severity, findings, the node verdict and the health status.

Severity order: PASS < MONITOR < RESET < REBOOT < ISOLATE. A node's verdict is
the maximum severity of its findings. The health status shown on the node
(label ``gpufleet.io/health``) follows from it:

==========  ===========================================================
status      when
==========  ===========================================================
``pass``    verdict PASS and every check could run
``warn``    verdict MONITOR
``fail``    verdict RESET, REBOOT or ISOLATE
``unknown`` verdict PASS but a check could not run because the monitor
            itself is broken (NVML cannot start, driver not loaded, ...)
==========  ===========================================================

``unknown`` never means a GPU fault and never fences a node; a real finding
(for example an Xid from the kernel log while NVML is down) still wins.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.IntEnum):
    PASS = 0
    MONITOR = 1
    RESET = 2
    REBOOT = 3
    ISOLATE = 4

    @classmethod
    def parse(cls, value: str | int | Severity) -> Severity:
        if isinstance(value, Severity):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            raise ValueError(f"unknown severity {value!r}; one of {', '.join(s.name for s in cls)}") from None


class HealthStatus(str, enum.Enum):
    PASS = "pass"  # noqa: S105 - a status, not a password
    WARN = "warn"
    FAIL = "fail"
    UNKNOWN = "unknown"


NODE = "node"  # the `gpu` of a finding about the whole node


@dataclass
class Finding:
    check: str
    gpu: str  # "<index>:<uuid>" of one GPU, or "node"
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, str]:
        return (self.check, self.gpu)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "gpu": self.gpu,
            "severity": self.severity.name,
            "message": self.message,
            "evidence": self.evidence,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            check=data["check"],
            gpu=data["gpu"],
            severity=Severity.parse(data["severity"]),
            message=data["message"],
            evidence=dict(data.get("evidence", {})),
            time=float(data.get("time", 0.0)),
        )


def node_verdict(findings: list[Finding]) -> Severity:
    return max((f.severity for f in findings), default=Severity.PASS)


def health_status(verdict: Severity, monitor_broken: bool) -> HealthStatus:
    """The one mapping from a verdict to the node's health status (see the module docstring)."""
    if verdict >= Severity.RESET:
        return HealthStatus.FAIL
    if verdict == Severity.MONITOR:
        return HealthStatus.WARN
    return HealthStatus.UNKNOWN if monitor_broken else HealthStatus.PASS


class VerdictKeeper:
    """Remembers the worst finding per (check, gpu) for ``window`` seconds.

    A later, milder finding for the same check and GPU (a PASS from the next
    cycle, or a MONITOR after a RESET) never hides the earlier severe one
    while it is within its window; an equal or worse finding replaces it and
    restarts the window. Only non-PASS findings are remembered.
    """

    def __init__(self, window: float = 3600.0):
        self.window = window
        self._held: dict[tuple[str, str], Finding] = {}

    def observe(self, findings: list[Finding], now: float | None = None) -> list[Finding]:
        """The findings to report: the new ones, with held severe ones kept in place of milder ones."""
        now = time.time() if now is None else now
        self._expire(now)
        result: dict[tuple[str, str], Finding] = {}
        for finding in findings:
            held = self._held.get(finding.key)
            if held is not None and held.severity > finding.severity:
                result[finding.key] = held
                continue
            if finding.severity > Severity.PASS:
                self._held[finding.key] = finding
            result[finding.key] = worst(result.get(finding.key), finding)
        # Held findings whose check said nothing about that GPU this time stay visible too.
        for key, held in self._held.items():
            result.setdefault(key, held)
        ordered = list(result.values())
        # A check's node-level PASS next to its own held failure is noise.
        failing_checks = {f.check for f in ordered if f.severity > Severity.PASS}
        return [f for f in ordered if f.severity > Severity.PASS or f.check not in failing_checks]

    def _expire(self, now: float) -> None:
        for key in [k for k, f in self._held.items() if now - f.time > self.window]:
            del self._held[key]

    def held(self) -> list[Finding]:
        return list(self._held.values())

    def clear(self, check: str | None = None, gpu: str | None = None) -> int:
        """Forget held findings (e.g. after a GPU reset or a reboot); returns how many."""
        keys = [k for k in self._held if (check is None or k[0] == check) and (gpu is None or k[1] == gpu)]
        for key in keys:
            del self._held[key]
        return len(keys)

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "held": [f.to_dict() for f in self._held.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerdictKeeper:
        keeper = cls(float(data.get("window", 3600.0)))
        for raw in data.get("held", []):
            finding = Finding.from_dict(raw)
            keeper._held[finding.key] = finding
        return keeper


def worst(a: Finding | None, b: Finding) -> Finding:
    return b if a is None or b.severity >= a.severity else a
