"""The GPU health agent: `gpufleet health run` (gpufleet-health.service).

    agent = HealthAgent(load_config(path))
    agent.serve()                     # until SIGTERM/SIGINT; SIGHUP re-reads the config

One thread runs every cycle (the engine and its state are not shared):

* scheduled: lightweight checks every `interval`; every `periodic_interval`
  also the periodic checks, and the intensive ones (DCGM diagnostics) when no
  GPU pod runs on the node (or `intensive_when_busy`);
* at once: when the Xid watcher thread (blocked in the backend's
  `wait_xid_events`) hands over events — an injected critical Xid fences the
  node in tens of milliseconds.

The check loop never waits for an outside system. Each cycle hands its
verdict to the publisher thread (Kubernetes) through a one-slot mailbox: the
newest verdict replaces an unsent older one, so a hung or dead API server
delays the node's labels, never the checks or the next Xid. A publication the
API refused is retried with backoff (short while a fence is waiting). Redis
events go out from a thread of their own. Every outside call has a deadline
(Kubernetes requests `request_timeout`, NVML reads, dcgmi, journalctl), and a
monitor thread reports a cycle whose checks or publication overran its
deadline (`gpufleet_health_cycle_overruns_total`, a log line, /readyz false
until a cycle completes in time). `cycle()` called without the loop running
(tests, `--once`) publishes inline.

A check that did not run this cycle keeps its last result (a periodic
finding is not forgotten by the next lightweight cycle). After each cycle the
report goes to the sinks (Kubernetes node, state file, metrics). Stopping never
touches the node: a fence outlives stop, restart and upgrade.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet import service
from gpufleet.config_model import not_utf8
from gpufleet.gpu import open_backend
from gpufleet.gpu.base import BackendUnavailable, BlockingCallGuard, GpuBackend, XidEvent
from gpufleet.health.config import AgentConfig, ConfigError, load_config
from gpufleet.health.engine import HealthEngine, NodeReport
from gpufleet.health.fencing import FenceMemory
from gpufleet.health.metrics import HealthMetrics
from gpufleet.health.severity import Finding, Severity, health_status, node_verdict
from gpufleet.health.sinks.publication import Publication, build_publication
from gpufleet.health.sinks.state_file import STATE_CORRUPT, STATE_MISSING, load_state, write_state
from gpufleet.health.state import HealthState

log = logging.getLogger("gpufleet.health.agent")

SCHEDULED, PERIODIC, XID, RETRY = "interval", "periodic", "xid", "retry"
XID_WAIT = 1.0  # the Xid watcher wakes this often to notice a stop
BACKEND_RETRY = 5.0  # Xid watcher pause after the monitor failed
LIVENESS_SLACK = 120.0  # seconds past the expected end of a cycle before the agent counts as hung
CHECKS_DEADLINE = {XID: 60.0, SCHEDULED: 60.0, PERIODIC: 120.0}  # + dcgm_timeout when intensive
FIRST_BACKOFF = 0.5  # first wait before retrying a refused publication; doubles per failure
URGENT_RETRY_MAX = 2.0  # longest wait while a fence (or lift) is waiting for the API
MONITOR_TICK = (
    5.0  # how often a hung check stage is looked for (publications: the loop wakes at their deadline)
)
POD_LIST_DEADLINE = 5.0  # the intensive-checks gate waits this long for the pod list


@dataclass
class PublishJob:
    """One cycle's verdict on its way to the API (the publisher's mailbox holds the newest)."""

    publication: Publication
    report: NodeReport
    deadline: float  # monotonic time by which it should be on the node
    boot_id: str | None
    urgent: bool  # a fence or lift waits on it: retry quickly
    events: list[XidEvent] = field(default_factory=list)  # the Xids its cycle judged
    overran: bool = False


def describe_config_error(path: Path | str, exc: BaseException) -> str:
    """`file:line: what` for any error reading one file the config names."""
    mark = getattr(exc, "problem_mark", None)  # YAML errors know the line
    if mark is not None:
        problem = getattr(exc, "problem", None) or str(exc)
        return f"{path}:{mark.line + 1}: not valid YAML: {problem}"
    if isinstance(exc, UnicodeDecodeError):
        return not_utf8(path, exc)
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename or path}: no such file"
    if isinstance(exc, OSError):
        return f"{exc.filename or path}: {exc.strerror or exc}"
    if isinstance(exc, ConfigError):
        return str(exc)
    return f"{path}: {type(exc).__name__}: {exc}"


def load_named(path: Path | str, load: Callable):
    """Run `load()`; any failure becomes ConfigError naming `path` (and the line where known)."""
    try:
        return load()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - every kind of broken file must keep the old config
        raise ConfigError(describe_config_error(path, exc)) from exc


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
        saved, self.state_status = load_state(self.state_path)
        if self.state_status == STATE_CORRUPT:
            self.metrics.state_file_corrupt.inc()
        if self.state_status in (STATE_MISSING, STATE_CORRUPT):
            log.info(
                "no usable state: the fence on the node is the truth (a REBOOT fence lifts only after a "
                "reboot, ISOLATE only by an operator)",
                extra=fields(path=str(self.state_path), state=self.state_status),
            )
        self.engine_state = HealthState.from_dict(saved.get("engine") or {})
        self.fence = FenceMemory.from_dict(saved.get("fence"))
        self.carried: dict[str, list[Finding]] = {
            check: [Finding.from_dict(f) for f in found]
            for check, found in (saved.get("carried") or {}).items()
        }
        self.xid_counts: dict[str, int] = dict((saved.get("agent") or {}).get("xid_events") or {})
        self.last_intensive = float((saved.get("agent") or {}).get("last_intensive") or 0.0)
        self._fixed_kube_api = kube_api  # tests hand in an API; otherwise built from the config
        self.engine = self._build_engine(config)
        self.kube_sink = None
        self.redis_sink = None
        self.kube_status = "not started"
        self._kube_logged: str | None = None
        self.lock = threading.RLock()  # fence memory and the mailbox, shared with the publisher
        self.pending: PublishJob | None = None  # the newest verdict the API has not taken yet
        self.retry_at = 0.0
        self.backoff = FIRST_BACKOFF
        self.last_report: NodeReport | None = None
        self.ready = False
        self.in_time = True  # the last cycle's checks and publication met their deadlines
        self._cycle_deadline: tuple[float, str] | None = None  # (deadline, schedule) of the running cycle
        self._cycle_overran = False
        self._forget = threading.Event()  # an operator released our fence: forget held findings
        self._replay: list[XidEvent] = []  # Xids of the cycle that found the release: judged again
        self._applying: PublishJob | None = None
        self._redis_thread: threading.Thread | None = None
        self._publish_wake = threading.Event()
        self._redis_wake = threading.Event()
        self._threads_running = False  # run_loop's publisher is up: cycle() hands over, else inline
        self._pod_list_guard = BlockingCallGuard("pod list", POD_LIST_DEADLINE)
        self._last_reload_error: str | None = None
        self._events: list[XidEvent] = []
        self._events_lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._reload = False
        self._heartbeat = monotonic()
        self._busy_until: float | None = None

    # ---- construction and reload

    def _build_engine(self, config: AgentConfig) -> HealthEngine:
        """An engine for `config`, every file it names read and checked; ConfigError (file:line) if not.

        Builds nothing shared: the running engine stays untouched until the caller swaps it in."""
        from gpufleet.gpu.profiles import load_profiles
        from gpufleet.health.xid import XidCatalog

        b = config.backend
        overrides = Path(b.xid_overrides) if b.xid_overrides else None
        catalog = load_named(overrides or "xid catalog", lambda: XidCatalog.load(overrides))
        catalog.on_unknown = lambda code: self.metrics.xid_unknown.inc()
        for extra in b.profiles_files:  # one at a time, so an error names its file
            load_named(extra, lambda extra=extra: load_profiles([Path(extra)]))
        profiles = load_named(
            ", ".join(b.profiles_files) or "profiles",
            lambda: load_profiles([Path(p) for p in b.profiles_files]),
        )
        engine = load_named(
            config.source,
            lambda: HealthEngine(
                self.backend,
                profile=b.profile or getattr(self.backend, "profile_name", None),
                checks=list(b.checks) or None,
                state=self.engine_state,
                catalog=catalog,
                config=config.thresholds,
                node=self.node_name,
                profiles=profiles,
                clock=self.clock,
            ),
        )
        self.engine_state.keeper.window = b.keeper_window
        return engine

    def reload(self, path: Path | str) -> bool:
        """Re-read the config (SIGHUP), all or nothing: any error in any file it names keeps the
        running config (logged once with file and line; gpufleet_health_config_stale 1). Backend
        and HTTP changes need a restart."""
        try:
            new = load_named(path, lambda: load_config(path))
            engine = self._build_engine(new)
        except ConfigError as exc:
            self.metrics.config_stale.set(1)
            log.error(
                "config reload failed; keeping the running config",
                extra=fields(config=str(path), error=str(exc)),
            )
            self._last_reload_error = str(exc)
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
        self.engine = engine
        self.kube_sink, self.kube_status, self._kube_logged = None, "reloading", None
        self.metrics.config_stale.set(0)
        self._last_reload_error = None
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
        """Run the checks, judge, hand the verdict to the sinks, save the state."""
        started = self.monotonic()
        replay: list[XidEvent] = []
        if self._forget.is_set():
            replay = self._forget_held()
        costs = ["lightweight"]
        if schedule == PERIODIC:
            costs.append("periodic")
            if self._intensive_allowed():
                costs.append("intensive")
                self.last_intensive = self.clock()
        budget = CHECKS_DEADLINE.get(schedule, CHECKS_DEADLINE[SCHEDULED])
        if "intensive" in costs:
            budget += self.config.thresholds.dcgm_timeout
            self._busy_until = started + self.config.thresholds.dcgm_timeout + LIVENESS_SLACK
        with self.lock:
            self._cycle_deadline, self._cycle_overran = (started + budget, schedule), False
        for event in xid_events or []:
            self.xid_counts[str(event.xid)] = self.xid_counts.get(str(event.xid), 0) + 1
            self.metrics.observe_xid(event)
        events = replay + list(xid_events or [])
        released = False
        try:
            report = self._judge(costs, events, scheduled=schedule != XID)
            published, action = self._hand_over(report)
            if action == "released":  # an operator removed our fence: judge afresh at once
                released = True
                self._forget_held()
                report = self._judge(costs, events, scheduled=False)
                published, action = self._hand_over(report)
        finally:
            self._busy_until = None
            with self.lock:
                self._cycle_deadline = None
                overran = self._cycle_overran
        checks_seconds = self.monotonic() - started
        if not overran and checks_seconds > budget:
            self._overrun("checks", schedule, checks_seconds, budget)
        elif not overran and self._kube() is None:
            self.in_time = True  # nothing to publish: the checks in time are the whole cycle
        self.save_state()
        self.metrics.observe_report(
            report,
            report.checks + [c for c in self.carried if c not in report.checks],
            fence_level=self.config.kubernetes.taint_level,
        )
        self.metrics.healthy_streak.set(self.fence.healthy_streak)
        self.metrics.cycle_duration.labels(schedule).observe(checks_seconds)
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
                ms=round(checks_seconds * 1000, 1),
            ),
        )
        return CycleResult(report, schedule, published, action, released)

    def _judge(self, costs: list[str], events: list[XidEvent], scheduled: bool) -> NodeReport:
        """One engine run, the verdict with carried results, hysteresis; queues the publication."""
        boot_before = self.engine_state.boot_id
        report = self.engine.run(tuple(costs), xid_events=events)
        if boot_before is not None and self.engine_state.boot_id != boot_before:
            self.carried = {}  # a reboot: results of the old boot mean nothing
        report = self._with_carried(report)
        taint_level = self.config.kubernetes.taint_level
        with self.lock:
            self.fence.observe(
                report.verdict, report.status, report.time, scheduled=scheduled, taint_level=taint_level
            )
            self.last_report = report
            publication = build_publication(report, self.fence.verdict_since, self._nvswitch(report))
            urgent = (report.verdict >= taint_level) != (self.fence.fence_value is not None)
            deadline = self.monotonic() + 3 * self.config.kubernetes.request_timeout + 2.0
            older = self.pending
            job = PublishJob(publication, report, deadline, self.engine_state.boot_id, urgent, list(events))
            if older is not None:  # it replaces an unsent verdict: due when that one was
                job.deadline, job.overran = min(deadline, older.deadline), older.overran
            self.pending = job
            self.retry_at = self.monotonic()  # the newest verdict gets an attempt at once
        return report

    def _hand_over(self, report: NodeReport) -> tuple[bool | None, str | None]:
        """Inline (no loop running): publish now. In the loop: wake the publisher and return."""
        if self._threads_running:
            self._publish_wake.set()
            return None, None
        return self.publish_pending()

    def _forget_held(self) -> list[XidEvent]:
        """An operator returned the node to service: held findings and Xids of this boot are forgotten,
        except the Xids of the cycle that found the release (they may be newer than the release);
        returns those, to be judged again."""
        with self.lock:
            self._forget.clear()
            replay, self._replay = self._replay, []
        self.engine_state.keeper.clear()
        self.engine_state.xids = {}
        self.carried = {}
        return replay

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

        try:  # on a worker with a short deadline: a hung API must not hold up the cycle
            pods = self._pod_list_guard.call(sink.api.list_pods_on_node, self.node_name)
        except (*KUBE_ERRORS, BackendUnavailable) as exc:
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
        """Hand the pending verdict to the Kubernetes sink now; True when the API took it."""
        return bool(self.publish_pending()[0])

    def publish_pending(self) -> tuple[bool | None, str | None]:
        """(published, fence action) for the newest pending verdict; None: no Kubernetes sink.

        Runs on the publisher thread (or inline); a failure schedules a retry with backoff."""
        with self.lock:
            job = self.pending
            memory = copy.copy(self.fence)
        if job is None:
            return None, None
        sink = self._kube()
        if sink is None:
            with self.lock:
                if self.pending is job:
                    self.pending = None  # nothing to retry without a sink (it is looked for again)
            self._queue_event(job.report, None)
            return None, None
        from gpufleet.kube.api import KUBE_ERRORS, describe_error

        attempt_started = self.monotonic()
        try:
            result = sink.publish(job.publication, memory, boot_id=job.boot_id)
        except KUBE_ERRORS as exc:
            self.metrics.api_errors.inc()
            took = self.monotonic() - attempt_started
            with self.lock:
                # A fence waiting retries quickly while the API fails fast (down, refusing); an API that
                # is slow (timeouts: overloaded) is backed off from like any other, so a burst of
                # agents does not turn into a retry storm.
                quick = job.urgent and took < 1.0
                limit = (
                    URGENT_RETRY_MAX if quick else min(self.config.kubernetes.retry_max, self.config.interval)
                )
                wait = min(max(self.backoff, took if not quick else 0.0), limit)
                wait *= random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not security
                self.retry_at = self.monotonic() + wait
                self.backoff = min(self.backoff * 2, limit)
            log.warning(
                "Kubernetes API failed; will retry",
                extra=fields(node=self.node_name, error=describe_error(exc), retry_in=round(wait, 1)),
            )
            self.kube_status = f"API error: {describe_error(exc)}"
            self._queue_event(job.report, None)
            return False, None
        with self.lock:
            if self.pending is job:
                self.pending = None  # else a newer verdict arrived meanwhile: it goes next
            self.backoff = FIRST_BACKOFF
            self._applying = job
            self._apply_decision(result.decision)
            self._applying = None
            on_time = self.monotonic() <= job.deadline and not job.overran
            if on_time and self._cycle_deadline is None:
                self.in_time = True
        self.kube_status = f"enabled for node {self.node_name}"
        action = result.decision.action
        self._queue_event(job.report, action)
        return True, action

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
            self.fence.healthy_streak = 0
            self._replay = list(self._applying.events) if self._applying else []
            self._forget.set()  # the check loop forgets held findings (it owns the engine state)
            self.wake.set()
        if decision.action in (
            "fence",
            "update",
            "lift",
            "suppressed",
            "isolate_held",
            "reboot_held",
            "released",
        ):
            if (
                decision.action not in ("suppressed", "isolate_held", "reboot_held")
                or previous != decision.action
            ):
                self.metrics.fence_actions.labels(decision.action).inc()
                level = logging.ERROR if decision.action == "suppressed" else logging.WARNING
                log.log(
                    level,
                    decision.reason,
                    extra=fields(
                        node=self.node_name, action=decision.action, taint=decision.value, **decision.fleet
                    ),
                )

    def _queue_event(self, report: NodeReport, fence_action: str | None) -> None:
        """The optional Redis event sink (off unless redis.url is set): queue, then send (inline,
        or on the Redis thread so a slow Redis delays nothing else)."""
        if not self.config.redis.url:
            return
        if self.redis_sink is None:
            from gpufleet.health.sinks.redis_events import RedisEventSink

            self.redis_sink = RedisEventSink(
                self.config.redis.url,
                self.node_name,
                self.config.redis.stream,
                on_drop=self.metrics.redis_dropped.inc,
            )
        self.redis_sink.queue(report, fence_action)
        if self._threads_running:
            if self._redis_thread is None:  # Redis was configured by a reload
                self._start_redis_sender().start()
            self._redis_wake.set()
        else:
            self.redis_sink.flush()
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
                    "config_stale": self._last_reload_error,
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
        """Ready after the first cycle, and while the last cycle met its deadlines."""
        ready = self.ready and self.in_time
        detail = {
            "ready": ready,
            "node": self.node_name,
            "kubernetes": self.kube_status,
            "cycle_in_time": self.in_time,
            "config_stale": self._last_reload_error is not None,
        }
        if self.last_report is not None:
            detail.update(status=self.last_report.status.value, verdict=self.last_report.verdict.name)
        return ready, detail

    def _overrun(self, stage: str, schedule: str, seconds: float, budget: float) -> None:
        self.in_time = False
        self.metrics.cycle_overruns.labels(stage).inc()
        log.warning(
            "cycle overran its deadline",
            extra=fields(
                node=self.node_name,
                stage=stage,
                schedule=schedule,
                seconds=round(seconds, 1),
                deadline=budget,
            ),
        )

    def check_deadlines(self) -> None:
        """Report a running cycle or a publication past its deadline (once each); monitor thread."""
        now = self.monotonic()
        with self.lock:
            running, job = self._cycle_deadline, self.pending
            late_checks = running is not None and now > running[0] and not self._cycle_overran
            if late_checks:
                self._cycle_overran = True
            late_job = job is not None and now > job.deadline and not job.overran
            if late_job:
                job.overran = True
        if late_checks:
            self._overrun("checks", running[1], now - running[0] + CHECKS_DEADLINE[SCHEDULED], running[0])
        if late_job:
            self._overrun("publish", "publication", now - job.deadline, job.deadline)

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

    def _publisher(self) -> None:
        """Sends the newest verdict to the API; waits for the next one or the retry time."""
        while not self.stopping.is_set():
            with self.lock:
                job, due = self.pending, self.retry_at
            now = self.monotonic()
            if job is None or now < due:
                self._publish_wake.wait(None if job is None else due - now)  # woken by a new verdict or stop
                self._publish_wake.clear()
                continue
            try:
                self.publish_pending()
            except Exception:  # noqa: BLE001 - the publisher must outlive a bug in one attempt
                log.exception("publication failed")
                with self.lock:
                    self.retry_at = self.monotonic() + URGENT_RETRY_MAX

    def _start_redis_sender(self) -> threading.Thread:
        self._redis_thread = threading.Thread(target=self._redis_sender, name="redis-sender", daemon=True)
        return self._redis_thread

    def _redis_sender(self) -> None:
        """Sends queued Redis events; a slow or dead Redis delays only this thread."""
        wait = FIRST_BACKOFF
        while not self.stopping.is_set():
            self._redis_wake.wait(wait)
            self._redis_wake.clear()
            sink = self.redis_sink
            if sink is None or not sink.buffer:
                continue
            sent = sink.flush()
            self.metrics.redis_pending.set(len(sink.buffer))
            wait = FIRST_BACKOFF if sent else min(wait * 2, 10.0)
            if not sent:
                self._redis_wake.clear()

    def _monitor(self) -> None:
        while not self.stopping.wait(MONITOR_TICK):
            self.check_deadlines()

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
        helpers = [
            threading.Thread(target=self._publisher, name="publisher", daemon=True),
            threading.Thread(target=self._monitor, name="deadline-monitor", daemon=True),
        ]
        if self.config.redis.url:
            helpers.append(self._start_redis_sender())
        self._threads_running = True
        for helper in helpers:
            if not helper.is_alive():
                helper.start()
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
                    elif now >= next_scheduled or self._forget.is_set():
                        self.cycle(SCHEDULED if now >= next_scheduled else XID)
                        next_scheduled = self.monotonic() + self.config.interval
                except Exception:  # noqa: BLE001 - one bad cycle must not end the agent
                    log.exception("cycle failed")
                    next_scheduled = self.monotonic() + self.config.interval
                if first:
                    first = False
                    service.notify(f"READY=1\nSTATUS=watching {self.node_name}\nMAINPID={os.getpid()}")
                self._heartbeat = self.monotonic()
                self.check_deadlines()
                due = min(next_scheduled, next_periodic)
                with self.lock:
                    if self.pending is not None and not self.pending.overran:
                        due = min(due, self.pending.deadline + 0.01)  # report a late publication
                self.wake.wait(max(0.0, due - self.monotonic()))
                self.wake.clear()
        finally:
            service.notify("STOPPING=1")
            self.stopping.set()
            self._publish_wake.set()
            self._redis_wake.set()
            xid_thread.join(XID_WAIT + 1)
            for helper in [*helpers, self._redis_thread]:
                if helper is not None and helper.is_alive():
                    helper.join(1.0)  # a publisher stuck in a request is a daemon thread: not waited for
            self._redis_thread = None
            self._threads_running = False
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
