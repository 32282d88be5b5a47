"""One health cycle: read the GPUs, run the chosen checks, judge the node.

    engine = HealthEngine(backend, profile=None, checks=None, state=HealthState())
    report = engine.run(("lightweight",))      # -> NodeReport
    report.verdict, report.status, report.findings, report.to_dict()

The engine owns no loop and no sinks: the daemon calls ``run`` on its schedule,
persists ``engine.state`` between calls, and publishes the report.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpufleet.gpu.base import BackendUnavailable, GpuBackend, NodeReading, XidEvent
from gpufleet.health.checks import REGISTRY, CheckConfig, CheckContext, CheckUnavailable, select_checks
from gpufleet.health.profiles import HardwareProfile, generic_profile, load_profiles, select_profile
from gpufleet.health.severity import Finding, HealthStatus, Severity, health_status, node_verdict
from gpufleet.health.state import HealthState
from gpufleet.health.xid import XidCatalog

REPORT_SCHEMA = "gpufleet.io/health-report/v1"


@dataclass
class NodeReport:
    node: str
    time: float
    verdict: Severity
    status: HealthStatus
    profile: str
    findings: list[Finding]
    unknown: list[dict[str, str]]  # checks that could not run: {"check", "reason"}
    checks: list[str]
    backend: str
    device_count: int | None
    driver_version: str | None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    duration_ms: float = 0.0
    reading: NodeReading | None = field(default=None, repr=False, compare=False)  # for metrics; not saved

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "node": self.node,
            "time": self.time,
            "verdict": self.verdict.name,
            "status": self.status.value,
            "profile": self.profile,
            "backend": self.backend,
            "device_count": self.device_count,
            "driver_version": self.driver_version,
            "checks": self.checks,
            "duration_ms": round(self.duration_ms, 3),
            "findings": [f.to_dict() for f in self.findings],
            "unknown": self.unknown,
            "gpus": self.gpus,
        }


class HealthEngine:
    def __init__(
        self,
        backend: GpuBackend,
        profile: HardwareProfile | str | None = None,
        checks: list[str] | None = None,
        state: HealthState | None = None,
        catalog: XidCatalog | None = None,
        config: CheckConfig | None = None,
        node: str | None = None,
        profiles: dict[str, HardwareProfile] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.backend = backend
        self.profile_choice = profile
        self.check_ids = checks
        self.state = state if state is not None else HealthState()
        self.catalog = catalog if catalog is not None else XidCatalog.load()
        self.config = config if config is not None else CheckConfig()
        self.node = node or getattr(backend, "node", None) or socket.gethostname()
        self.profiles = profiles if profiles is not None else load_profiles()
        self.host = backend.host_probe()
        self.clock = clock
        select_checks(checks)  # fail early on an unknown check id

    def resolve_profile(self, reading: NodeReading | None) -> HardwareProfile:
        """Explicit choice, else the profile remembered in state, else a match (then remembered)."""
        choice = self.profile_choice
        if isinstance(choice, HardwareProfile):
            return choice
        if choice:
            return select_profile(reading or NodeReading(0, []), choice, self.profiles)
        if self.state.profile in self.profiles:
            return self.profiles[self.state.profile]
        if reading is None:
            return generic_profile(NodeReading(0, []))
        profile = select_profile(reading, None, self.profiles)
        if not profile.generic:
            self.state.profile = profile.name
        return profile

    def run(
        self,
        cost_classes: tuple[str, ...] | list[str] = ("lightweight",),
        xid_events: list[XidEvent] | None = None,
    ) -> NodeReport:
        """One cycle. ``xid_events``: events the caller already collected (the daemon's Xid
        thread); when None the backend's queue is drained without waiting."""
        started_cpu, now = time.perf_counter(), self.clock()
        unknown: list[dict[str, str]] = []
        self.state.observe_boot(self.host.boot_id())
        reading: NodeReading | None = None
        read_started = time.perf_counter()
        try:
            reading = self.backend.read()
        except BackendUnavailable as exc:
            unknown.append({"check": "backend", "reason": str(exc)})
        read_seconds = time.perf_counter() - read_started
        if xid_events is None:
            xid_events = []
            if reading is not None:
                try:
                    xid_events = self.backend.wait_xid_events(0)
                except BackendUnavailable as exc:
                    unknown.append({"check": "xid-events", "reason": str(exc)})
        profile = self.resolve_profile(reading)
        ctx = CheckContext(
            reading=reading,
            profile=profile,
            state=self.state,
            config=self.config,
            host=self.host,
            backend=self.backend,
            catalog=self.catalog,
            now=now,
            xid_events=list(xid_events),
            read_seconds=read_seconds,
        )
        findings: list[Finding] = []
        checks = select_checks(self.check_ids, cost_classes)
        for check in checks:
            if check.needs_reading and reading is None:
                unknown.append({"check": check.id, "reason": "GPU backend unavailable"})
                continue
            try:
                findings.extend(check.run(ctx))
            except (CheckUnavailable, BackendUnavailable) as exc:
                unknown.append({"check": check.id, "reason": str(exc)})
            except Exception as exc:  # noqa: BLE001 - a buggy check must not hide the others' findings
                unknown.append({"check": check.id, "reason": f"check failed: {type(exc).__name__}: {exc}"})
        for finding in findings:
            finding.time = now
        # A later milder finding never hides an earlier severe one within its window.
        findings = self.state.keeper.observe(findings, now)
        findings.sort(key=lambda f: (-f.severity, f.check, f.gpu))
        verdict = node_verdict(findings)
        return NodeReport(
            node=self.node,
            time=now,
            verdict=verdict,
            status=health_status(verdict, monitor_broken=bool(unknown)),
            profile=profile.name,
            findings=findings,
            unknown=unknown,
            checks=[c.id for c in checks],
            backend=self.backend.name,
            device_count=reading.device_count if reading else None,
            driver_version=reading.driver_version if reading else None,
            gpus=[
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "model": g.model,
                    "pci_bus_id": g.pci_bus_id,
                    "memory_mib": g.memory_total_mib,
                    "nvlinks_active": sum(1 for link in g.nvlinks if link.active),
                }
                for g in (reading.gpus if reading else [])
            ],
            duration_ms=(time.perf_counter() - started_cpu) * 1000.0,
            reading=reading,
        )


def describe_checks() -> list[dict[str, str]]:
    return [{"id": c.id, "cost": c.cost, "description": c.description} for c in REGISTRY.values()]
