"""The health agent's Prometheus metrics (one registry per agent, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gpufleet.health.severity import HealthStatus, Severity

UNKNOWN_CHECK = -1  # gpufleet_health_check_status of a check that could not run


class HealthMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.check_status = Gauge(
            "gpufleet_health_check_status",
            "Worst severity of each check's last result: 0 PASS, 1 MONITOR, 2 RESET, 3 REBOOT, 4 ISOLATE, "
            "-1 could not run",
            ["check"],
            registry=r,
        )
        self.node_severity = Gauge(
            "gpufleet_health_node_severity", "The node verdict: 0 PASS .. 4 ISOLATE", registry=r
        )
        self.node_status = Gauge(
            "gpufleet_health_node_status", "1 for the node's current health status", ["status"], registry=r
        )
        self.xid_events = Counter(
            "gpufleet_health_xid_events", "Xid events received, by code", ["xid"], registry=r
        )
        self.cycle_duration = Histogram(
            "gpufleet_health_cycle_duration_seconds",
            "Wall time of a check cycle (checks and sinks)",
            ["schedule"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
        )
        self.fence_actions = Counter(
            "gpufleet_health_fence_actions",
            "Fence decisions applied: fence, update, lift, suppressed (circuit breaker), isolate_held, "
            "released (removed by an operator)",
            ["action"],
            registry=r,
        )
        self.fenced = Gauge(
            "gpufleet_health_fenced", "1 while this node carries the agent's taint", registry=r
        )
        self.circuit_breaker_open = Gauge(
            "gpufleet_health_circuit_breaker_open",
            "1 while a fence is withheld because max_fenced nodes are already fenced",
            registry=r,
        )
        self.api_errors = Counter(
            "gpufleet_health_kube_api_errors", "Failed Kubernetes API publications", registry=r
        )
        self.last_cycle = Gauge(
            "gpufleet_health_last_cycle_timestamp_seconds",
            "Unix time of the last completed check cycle",
            registry=r,
        )
        self.healthy_streak = Gauge(
            "gpufleet_health_healthy_streak", "Consecutive healthy scheduled cycles (hysteresis)", registry=r
        )
        self.redis_pending = Gauge(
            "gpufleet_health_redis_events_pending", "Redis events waiting for Redis to answer", registry=r
        )
        # -- reliability (issue 14): deadlines, stale config, unknown Xids, lost state, dropped events
        self.cycle_overruns = Counter(
            "gpufleet_health_cycle_overruns",
            "Cycles that overran their deadline, by stage: checks (the checks took too long) or publish "
            "(the verdict did not reach the API in time)",
            ["stage"],
            registry=r,
        )
        self.config_stale = Gauge(
            "gpufleet_health_config_stale",
            "1 while the last config reload failed and the agent runs on the previous config",
            registry=r,
        )
        self.xid_unknown = Counter(
            "gpufleet_health_xid_unknown", "Xid events whose code is not in the catalog", registry=r
        )
        self.state_file_corrupt = Counter(
            "gpufleet_health_state_file_corrupt",
            "State files found unreadable at start (kept aside as health.json.corrupt-<time>)",
            registry=r,
        )
        self.redis_dropped = Counter(
            "gpufleet_health_redis_events_dropped",
            "Redis events dropped because the buffer was full while Redis was down (oldest first)",
            registry=r,
        )
        for stage in ("checks", "publish"):
            self.cycle_overruns.labels(stage)
        for status in HealthStatus:
            self.node_status.labels(status.value).set(0)
        for action in ("fence", "update", "lift", "suppressed", "isolate_held", "reboot_held", "released"):
            self.fence_actions.labels(action)

    def observe_report(self, report, checks_run: list[str]) -> None:
        worst: dict[str, int] = {check: int(Severity.PASS) for check in checks_run}
        for finding in report.findings:
            worst[finding.check] = max(worst.get(finding.check, 0), int(finding.severity))
        for item in report.unknown:
            if worst.get(item["check"], 0) == 0:
                worst[item["check"]] = UNKNOWN_CHECK
        for check, value in worst.items():
            self.check_status.labels(check).set(value)
        self.node_severity.set(int(report.verdict))
        for status in HealthStatus:
            self.node_status.labels(status.value).set(1 if report.status == status else 0)
        self.last_cycle.set(report.time)

    def render(self) -> bytes:
        return generate_latest(self.registry)
