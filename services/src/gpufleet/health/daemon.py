"""The GPU health agent: `gpufleet health run` (gpufleet-health.service).

    agent = HealthAgent(load_config(path))
    agent.serve()                     # until SIGTERM/SIGINT; SIGHUP re-reads the config

One thread runs every cycle (the engine and its state are not shared):

* scheduled: lightweight checks every `interval`; every `periodic_interval`
  also the periodic checks, and the intensive ones (DCGM diagnostics) when no
  GPU pod runs on the node (or `intensive_when_busy`);
* at once: when the Xid watcher thread (blocked in the backend's
  `wait_xid_events`) hands over events — an injected critical Xid fences the
  node in tens of milliseconds;
* retry: a publication the API refused is retried with backoff while the
  checks go on.

A check that did not run this cycle keeps its last result (a periodic
finding is not forgotten by the next lightweight cycle). After each cycle the
report goes to the sinks (Kubernetes node, state file, metrics). Stopping never
touches the node: a fence outlives stop, restart and upgrade.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpufleet import service
from gpufleet.gpu import open_backend
from gpufleet.gpu.base import BackendUnavailable, GpuBackend, XidEvent
from gpufleet.health.config import AgentConfig, ConfigError, load_config
from gpufleet.health.engine import HealthEngine, NodeReport
from gpufleet.health.fencing import FenceMemory
from gpufleet.health.metrics import HealthMetrics
from gpufleet.health.severity import Finding, Severity, health_status, node_verdict
from gpufleet.health.sinks.publication import build_publication
from gpufleet.health.sinks.state_file import read_state, write_state
from gpufleet.health.state import HealthState

log = logging.getLogger("gpufleet.health.agent")

SCHEDULED, PERIODIC, XID, RETRY = "interval", "periodic", "xid", "retry"
XID_WAIT = 1.0  # the Xid watcher wakes this often to notice a stop
BACKEND_RETRY = 5.0  # Xid watcher pause after the monitor failed
LIVENESS_SLACK = 120.0  # seconds past the expected end of a cycle before the agent counts as hung


def fields(**kw) -> dict:
    return {"fields": kw}


@dataclass
class CycleResult:
    report: NodeReport
    schedule: str
    published: bool | None  # None: no Kubernetes sink
    fence_action: str | None
    released: bool = False  # an operator had removed our fence; the node was judged afresh


def open_configured_backend(config: AgentConfig) -> GpuBackend:
    b = config.backend
    if b.type == "simulated":
        return open_backend(
            "simulated",
            node=b.node or None,
            fleet_spec=Path(b.fleet_spec) if b.fleet_spec else None,
            faults=Path(b.faults) if b.faults else None,
        )
    return open_backend("nvml")


class HealthAgent:
    def __init__(
        self,
        config: AgentConfig,
        backend: GpuBackend | None = None,
        kube_api=None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.clock, self.monotonic = clock, monotonic
        self.metrics = HealthMetrics()
        self.backend = backend or open_configured_backend(config)
        self.node_name = (
            config.node_name or getattr(self.backend, "node", None) or config.resolved_node_name()
        )
        self.state_path = Path(config.state_file)
        saved = read_state(self.state_path)
        self.engine_state = HealthState.from_dict(saved.get("engine") or {})
        self.fence = FenceMemory.from_dict(saved.get("fence"))
        self.carried: dict[str, list[Finding]] = {
            check: [Finding.from_dict(f) for f in found]
            for check, found in (saved.get("carried") or {}).items()
        }
        self.xid_counts: dict[str, int] = dict((saved.get("agent") or {}).get("xid_events") or {})
        self.last_intensive = float((saved.get("agent") or {}).get("last_intensive") or 0.0)
        self._fixed_kube_api = kube_api  # tests hand in an API; otherwise built from the config
        self.engine = self._build_engine()
        self.kube_sink = None
        self.redis_sink = None
        self.kube_status = "not started"
        self._kube_logged: str | None = None
        self.pending = None  # a publication the API has not taken yet
        self.retry_at = 0.0
        self.backoff = 1.0
        self.last_report: NodeReport | None = None
        self.ready = False
        self._events: list[XidEvent] = []
        self._events_lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._reload = False
        self._heartbeat = monotonic()
        self._busy_until: float | None = None

    # ---- construction and reload

    def _build_engine(self) -> HealthEngine:
        from gpufleet.health.profiles import load_profiles
        from gpufleet.health.xid import XidCatalog

        b = self.config.backend
        self.engine_state.keeper.window = b.keeper_window
        return HealthEngine(
            self.backend,
            profile=b.profile or getattr(self.backend, "profile_name", None),
            checks=list(b.checks) or None,
            state=self.engine_state,
            catalog=XidCatalog.load(Path(b.xid_overrides) if b.xid_overrides else None),
            config=self.config.thresholds,
            node=self.node_name,
            profiles=load_profiles([Path(p) for p in b.profiles_files]),
            clock=self.clock,
        )

    def reload(self, path: Path | str) -> bool:
        """Re-read the config (SIGHUP). A bad file keeps the running config; backend and HTTP changes
        need a restart."""
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("config reload failed; keeping the running config", extra=fields(error=str(exc)))
            return False
        if (new.backend.type, new.backend.fleet_spec, new.backend.node, new.backend.faults) != (
            self.config.backend.type,
            self.config.backend.fleet_spec,
            self.config.backend.node,
            self.config.backend.faults,
        ) or new.http != self.config.http:
            log.warning("backend and http settings change only on restart", extra=fields(config=str(path)))
            new.backend.type, new.backend.fleet_spec = (
                self.config.backend.type,
                self.config.backend.fleet_spec,
            )
            new.backend.node, new.backend.faults = self.config.backend.node, self.config.backend.faults
            new.http = self.config.http
        if new.redis != self.config.redis:
            self.redis_sink = None
        self.config = new
        self.engine = self._build_engine()
        self.kube_sink, self.kube_status, self._kube_logged = None, "reloading", None
        log.info("config reloaded", extra=fields(config=str(path), interval=new.interval))
        return True

    # ---- the Kubernetes sink (opened lazily, so a kubeconfig that appears later is picked up)

    def _kube(self):
        if self.kube_sink is not None:
            return self.kube_sink
        settings = self.config.kubernetes
        if settings.enabled == "false":
            self._set_kube_status("disabled by config (kubernetes.enabled = false)", logging.INFO)
            return None
        from gpufleet.health.sinks.kube import KubeNodeSink, SinkUnavailable, open_kube_api

        try:
            api = self._fixed_kube_api or open_kube_api(settings)
        except SinkUnavailable as exc:
            level = logging.ERROR if settings.enabled == "true" else logging.WARNING
            self._set_kube_status(f"disabled: {exc}; checks, metrics and the state file go on", level)
            return None
        except Exception as exc:  # noqa: BLE001 - a broken kubeconfig must not stop the checks
            self._set_kube_status(f"cannot load Kubernetes credentials: {exc}", logging.ERROR)
            return None
        self.kube_sink = KubeNodeSink(api, self.node_name, settings)
        self._set_kube_status(f"enabled for node {self.node_name}", logging.INFO)
        return self.kube_sink

    def _set_kube_status(self, status: str, level: int) -> None:
        self.kube_status = status
        if self._kube_logged != status:  # say it once, not every cycle
            log.log(level, f"Kubernetes sink {status}", extra=fields(node=self.node_name))
            self._kube_logged = status

    # ---- one cycle

    def cycle(self, schedule: str = SCHEDULED, xid_events: list[XidEvent] | None = None) -> CycleResult:
        """Run the checks, judge, publish to every sink, save the state."""
        started = self.monotonic()
        costs = ["lightweight"]
        if schedule == PERIODIC:
            costs.append("periodic")
            if self._intensive_allowed():
                costs.append("intensive")
                self.last_intensive = self.clock()
        if "intensive" in costs:
            self._busy_until = started + self.config.thresholds.dcgm_timeout + LIVENESS_SLACK
        events = list(xid_events or [])
        for event in events:
            self.xid_counts[str(event.xid)] = self.xid_counts.get(str(event.xid), 0) + 1
            self.metrics.observe_xid(event)
        try:
            report, published, action = self._judge_and_publish(costs, events, scheduled=schedule != XID)
            released = action == "released"
            if released:  # an operator removed our fence: judge afresh at once (this cycle's Xids count)
                report, published, action = self._judge_and_publish(costs, events, scheduled=False)
        finally:
            self._busy_until = None
        self.save_state()
        self.metrics.observe_report(
            report,
            report.checks + [c for c in self.carried if c not in report.checks],
            fence_level=self.config.kubernetes.taint_level,
        )
        self.metrics.healthy_streak.set(self.fence.healthy_streak)
        self.metrics.cycle_duration.labels(schedule).observe(self.monotonic() - started)
        self.ready = True
        log.log(
            logging.INFO if schedule != SCHEDULED or report.verdict > Severity.PASS else logging.DEBUG,
            "cycle",
            extra=fields(
                schedule=schedule,
                node=self.node_name,
                verdict=report.verdict.name,
                status=report.status.value,
                findings=sum(1 for f in report.findings if f.severity > Severity.PASS),
                xids=",".join(str(e.xid) for e in events) or None,
                ms=round((self.monotonic() - started) * 1000, 1),
            ),
        )
        return CycleResult(report, schedule, published, action, released)

    def _judge_and_publish(self, costs: list[str], events: list[XidEvent], scheduled: bool):
        """One engine run, the verdict with carried results, hysteresis, the Kubernetes and Redis sinks."""
        boot_before = self.engine_state.boot_id
        report = self.engine.run(tuple(costs), xid_events=events)
        if boot_before is not None and self.engine_state.boot_id != boot_before:
            self.carried = {}  # a reboot: results of the old boot mean nothing
        report = self._with_carried(report)
        self.fence.observe(
            report.verdict,
            report.status,
            report.time,
            scheduled=scheduled,
            taint_level=self.config.kubernetes.taint_level,
        )
        self.last_report = report
        self.pending = build_publication(report, self.fence.verdict_since, self._nvswitch(report))
        action = None
        published = None
        if self._kube() is not None:
            published = self.publish()
        else:
            self.pending = None  # nothing to retry without a sink (it is looked for again next cycle)
        if published:
            action = self.fence.last_action
        self._emit_event(report, action)
        return report, published, action

    def _with_carried(self, report: NodeReport) -> NodeReport:
        """Add the last results of checks that did not run this cycle and re-judge the node."""
        ran = set(report.checks)
        for check in ran:
            self.carried.pop(check, None)
        for finding in report.findings:
            if (
                finding.check in ran
                and finding.severity > Severity.PASS
                and self._is_occasional(finding.check)
            ):
                self.carried.setdefault(finding.check, []).append(finding)
        extra = [f for check, found in self.carried.items() if check not in ran for f in found]
        if extra:
            report.findings = sorted(report.findings + extra, key=lambda f: (-f.severity, f.check, f.gpu))
            report.verdict = node_verdict(report.findings)
            report.status = health_status(report.verdict, monitor_broken=bool(report.unknown))
        return report

    @staticmethod
    def _is_occasional(check_id: str) -> bool:
        from gpufleet.health.checks import REGISTRY

        check = REGISTRY.get(check_id)
        return check is not None and check.cost != "lightweight"

    def _nvswitch(self, report: NodeReport) -> bool:
        profile = self.engine.profiles.get(report.profile)
        return bool(profile and profile.nvswitch)

    def _intensive_allowed(self) -> bool:
        """DCGM diagnostics load the GPUs: only while no GPU pod runs here, unless forced."""
        if self.config.intensive_when_busy:
            return True
        sink = self._kube()
        if sink is None:
            log.info(
                "skipping intensive checks: without Kubernetes the agent cannot tell whether GPUs are in "
                "use (set intensive_when_busy = true to run them anyway)"
            )
            return False
        from gpufleet.kube.api import KUBE_ERRORS, describe_error
        from gpufleet.kube.drain import pod_gpus

        try:
            pods = sink.api.list_pods_on_node(self.node_name)
        except KUBE_ERRORS as exc:
            log.warning(
                "skipping intensive checks: cannot list this node's pods",
                extra=fields(error=describe_error(exc)),
            )
            return False
        busy = [
            p["metadata"]["name"]
            for p in pods
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and pod_gpus(p)
        ]
        if busy:
            log.info("skipping intensive checks while GPU pods run", extra=fields(pods=",".join(busy[:5])))
        return not busy

    # ---- publishing (with retry) and state

    def publish(self) -> bool:
        """Hand the pending publication to the Kubernetes sink; on failure retry later with backoff."""
        sink = self._kube()
        if sink is None:
            self.pending = None  # no sink, nothing to retry
        if sink is None or self.pending is None:
            return False
        from gpufleet.kube.api import KUBE_ERRORS, describe_error

        try:
            result = sink.publish(self.pending, self.fence)
        except KUBE_ERRORS as exc:
            self.metrics.api_errors.inc()
            self.retry_at = self.monotonic() + self.backoff
            log.warning(
                "Kubernetes API failed; will retry",
                extra=fields(node=self.node_name, error=describe_error(exc), retry_in=round(self.backoff, 1)),
            )
            self.backoff = min(self.backoff * 2, self.config.kubernetes.retry_max, self.config.interval)
            self.kube_status = f"API error: {describe_error(exc)}"
            return False
        self.pending, self.backoff = None, 1.0
        self.kube_status = f"enabled for node {self.node_name}"
        self._apply_decision(result.decision)
        return True

    def _apply_decision(self, decision) -> None:
        previous = self.fence.last_action
        self.fence.last_action = decision.action
        self.fence.suppressed = decision.action == "suppressed"
        self.metrics.fenced.set(1 if decision.value else 0)
        self.metrics.circuit_breaker_open.set(1 if self.fence.suppressed else 0)
        self.fence.fence_value = decision.value
        if decision.action == "lift":
            self.fence.healthy_streak = 0
        if decision.action == "released":
            self.engine_state.keeper.clear()
            self.engine_state.xids = {}
            self.carried = {}
            self.fence.healthy_streak = 0
        if decision.action in ("fence", "update", "lift", "suppressed", "isolate_held", "released"):
            if decision.action not in ("suppressed", "isolate_held") or previous != decision.action:
                self.metrics.fence_actions.labels(decision.action).inc()
                level = logging.ERROR if decision.action == "suppressed" else logging.WARNING
                log.log(
                    level,
                    decision.reason,
                    extra=fields(
                        node=self.node_name, action=decision.action, taint=decision.value, **decision.fleet
                    ),
                )

    def _emit_event(self, report: NodeReport, fence_action: str | None) -> None:
        """The optional Redis event sink (off unless redis.url is set)."""
        if not self.config.redis.url:
            return
        if self.redis_sink is None:
            from gpufleet.health.sinks.redis_events import RedisEventSink

            self.redis_sink = RedisEventSink(self.config.redis.url, self.node_name, self.config.redis.stream)
        self.redis_sink.observe(report, fence_action)
        self.metrics.redis_pending.set(len(self.redis_sink.buffer))

    def save_state(self) -> None:
        write_state(
            self.state_path,
            {
                "engine": self.engine_state.to_dict(),
                "fence": self.fence.to_dict(),
                "carried": {c: [f.to_dict() for f in found] for c, found in self.carried.items()},
                "report": self.last_report.to_dict() if self.last_report else None,
                "agent": {
                    "node": self.node_name,
                    "pid": os.getpid(),
                    "updated": self.clock(),
                    "kubernetes": self.kube_status,
                    "pending_publication": self.pending is not None,
                    "xid_events": self.xid_counts,
                    "last_intensive": self.last_intensive,
                    "config": self.config.source,
                },
            },
        )

    # ---- liveness

    def liveness(self) -> tuple[bool, dict]:
        now = self.monotonic()
        limit = max(3 * self.config.interval, LIVENESS_SLACK)
        alive = now - self._heartbeat <= limit or (self._busy_until is not None and now <= self._busy_until)
        return alive, {"alive": alive, "last_loop_seconds_ago": round(now - self._heartbeat, 1)}

    def readiness(self) -> tuple[bool, dict]:
        detail = {"ready": self.ready, "node": self.node_name, "kubernetes": self.kube_status}
        if self.last_report is not None:
            detail.update(status=self.last_report.status.value, verdict=self.last_report.verdict.name)
        return self.ready, detail

    # ---- the loop

    def _watch_xids(self) -> None:
        while not self.stopping.is_set():
            try:
                events = self.backend.wait_xid_events(XID_WAIT)
            except BackendUnavailable as exc:
                log.debug("Xid stream unavailable", extra=fields(error=str(exc)))
                self.stopping.wait(BACKEND_RETRY)
                continue
            except Exception:  # noqa: BLE001 - keep watching; the scheduled cycles still run
                log.exception("Xid watcher failed")
                self.stopping.wait(BACKEND_RETRY)
                continue
            if events:
                with self._events_lock:
                    self._events.extend(events)
                self.wake.set()

    def _take_events(self) -> list[XidEvent]:
        with self._events_lock:
            events, self._events = self._events, []
        return events

    def _watchdog(self, interval: float) -> None:
        while not self.stopping.wait(interval):
            if self.liveness()[0]:
                service.notify("WATCHDOG=1")

    def request_reload(self) -> None:
        self._reload = True
        self.wake.set()

    def request_stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run_loop(self, config_path: Path | str | None = None) -> None:
        """Cycles until request_stop(); the first one (full: periodic) runs at once."""
        xid_thread = threading.Thread(target=self._watch_xids, name="xid-watcher", daemon=True)
        xid_thread.start()
        watchdog = service.watchdog_interval()
        if watchdog:
            threading.Thread(target=self._watchdog, args=(watchdog,), name="watchdog", daemon=True).start()
        now = self.monotonic()
        next_scheduled, next_periodic = now, now
        first = True
        try:
            while not self.stopping.is_set():
                self._heartbeat = now = self.monotonic()
                if self._reload:
                    self._reload = False
                    service.notify("RELOADING=1")
                    if config_path and self.reload(config_path):
                        next_scheduled = min(next_scheduled, now + self.config.interval)
                    service.notify("READY=1")
                events = self._take_events()
                try:
                    if events:
                        self.cycle(XID, events)
                    elif now >= next_periodic:
                        self.cycle(PERIODIC)
                        next_periodic = self.monotonic() + self.config.periodic_interval
                        next_scheduled = self.monotonic() + self.config.interval
                    elif now >= next_scheduled:
                        self.cycle(SCHEDULED)
                        next_scheduled = self.monotonic() + self.config.interval
                    elif self.pending is not None and now >= self.retry_at:
                        if self.publish():
                            self._emit_event(self.last_report, self.fence.last_action)
                        self.save_state()
                except Exception:  # noqa: BLE001 - one bad cycle must not end the agent
                    log.exception("cycle failed")
                    next_scheduled = self.monotonic() + self.config.interval
                if first:
                    first = False
                    service.notify(f"READY=1\nSTATUS=watching {self.node_name}\nMAINPID={os.getpid()}")
                self._heartbeat = self.monotonic()
                due = min(next_scheduled, next_periodic)
                if self.pending is not None:
                    due = min(due, self.retry_at)
                self.wake.wait(max(0.0, due - self.monotonic()))
                self.wake.clear()
        finally:
            service.notify("STOPPING=1")
            self.stopping.set()
            xid_thread.join(XID_WAIT + 1)
            self.save_state()
            log.info("stopped; the node keeps its labels and any fence", extra=fields(node=self.node_name))

    def serve(self, config_path: Path | str | None = None) -> None:
        """Run as the service: HTTP endpoint, signals, the loop; returns after SIGTERM/SIGINT."""
        from gpufleet.service import StatusHttpServer

        http = StatusHttpServer(self, self.config.http.address, self.config.http.port,
                                name="health-http").start()
        log.info(
            "health agent started",
            extra=fields(
                node=self.node_name,
                backend=self.backend.name,
                interval=self.config.interval,
                http=f"{self.config.http.address}:{http.port}",
                config=self.config.source,
            ),
        )
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        try:
            self.run_loop(config_path)
        finally:
            http.stop()
            self.backend.close()
