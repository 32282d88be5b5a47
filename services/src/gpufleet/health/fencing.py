"""When the health agent fences a node, and when it lifts the fence — pure decisions, no I/O.

The fence is the taint `gpufleet.io/unhealthy=<SEVERITY>:NoSchedule`, placed
and removed through THE taint merge (gpufleet.kube.taints) as owner
`gpufleet-health`, so ownership is recorded in `gpufleet.io/owned-taints`.

Rules (each has a test in tests/integration/health_daemon/):

* fence when the verdict is at or above `taint_severity`; `unknown` (a broken
  monitor, verdict PASS) never fences;
* ownership: only a taint we placed is ever updated or lifted; a taint with
  the same key that someone else placed, other taints and cordons are left
  alone;
* hysteresis: a fence is lifted only after `lift_after` consecutive healthy
  *scheduled* cycles (Xid-triggered extra cycles do not count), and never
  while its value is ISOLATE (an operator returns the node to service);
* the node is the memory: the fence annotation `gpufleet.io/health-fence`
  ({value, boot_id, since}) is written with the taint. A REBOOT fence lifts
  only in a later boot than the one it was placed in, and its value is not
  lowered in the same boot — whatever the local state file remembers or
  forgot (a truncated state file, a new disk). Without the annotation the
  fence counts as placed in the running boot;
* circuit breaker: a new fence is withheld (recorded and alerted) when
  `max_fenced` GPU nodes already carry a gpufleet fence (counted by the label
  `gpufleet.io/fenced` that every fence write sets with the taint: see
  gpufleet.health.sinks.kube.BreakerCount); agents placing fences at the same
  time count again afterwards and the later ones (fence_order) withdraw;
* an operator's release is honoured: when our fence disappears without the
  agent lifting it, held findings are forgotten and the node judged afresh
  (a fault that is still there fences it again);
* nothing here runs on stop or restart: the fence is state on the node.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpufleet.health.severity import HealthStatus, Severity
from gpufleet.kube.fleet import is_gpu_node
from gpufleet.kube.nodes import node_annotations, node_taint_change, node_taints
from gpufleet.kube.quarantine import OWNER_HEALTH, quarantine_limit
from gpufleet.kube.taints import (
    TAINT_UNHEALTHY,
    TaintChange,
    fenced_by_gpufleet_taints,
    parse_owned,
    taint_id,
)

FENCE_EFFECT = "NoSchedule"
FENCE_ID = f"{TAINT_UNHEALTHY}:{FENCE_EFFECT}"
ANNOTATION_FENCE = "gpufleet.io/health-fence"  # {value, boot_id, since} of our fence


@dataclass
class FenceMemory:
    """What the agent remembers between cycles about its fence (persisted in the state file)."""

    healthy_streak: int = 0  # consecutive healthy scheduled cycles
    fence_value: str | None = None  # our taint's value as last seen (None: no fence of ours)
    suppressed: bool = False  # the circuit breaker withheld our fence at the last decision
    last_action: str = "none"
    verdict: str = "PASS"
    status: str = "unknown"
    verdict_since: float = 0.0  # when the current verdict/status started

    def observe(
        self, verdict: Severity, status: HealthStatus, now: float, scheduled: bool, taint_level: Severity
    ) -> None:
        """Count the cycle for hysteresis: healthy scheduled cycles add one, an unhealthy one resets."""
        if (verdict.name, status.value) != (self.verdict, self.status):
            self.verdict, self.status, self.verdict_since = verdict.name, status.value, now
        if verdict >= taint_level:
            self.healthy_streak = 0
        elif status != HealthStatus.UNKNOWN and scheduled:
            self.healthy_streak += 1
        # unknown: neither healthy nor unhealthy — the streak stands still

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> FenceMemory:
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class FenceDecision:
    # none | fence | update | hold | lift | suppressed | isolate_held | reboot_held | foreign | released
    action: str
    reason: str
    value: str | None = None  # the taint value after the decision (None: no fence of ours)
    taint_change: TaintChange | None = None
    fleet: dict[str, int] = field(default_factory=dict)  # circuit breaker numbers when consulted
    record: dict[str, Any] | None = None  # the fence annotation to write (None: leave it)
    drop_record: bool = False  # remove the fence annotation (the fence is lifted)

    @property
    def writes(self) -> bool:
        return self.taint_change is not None and self.taint_change.changed

    def annotations(self) -> dict[str, str | None]:
        """The fence annotation change this decision makes ({} when none)."""
        if self.drop_record:
            return {ANNOTATION_FENCE: None}
        if self.record is not None:
            return {ANNOTATION_FENCE: json.dumps(self.record, separators=(",", ":"), sort_keys=True)}
        return {}


def fence_record(node: dict) -> dict[str, Any] | None:
    """Our fence annotation ({value, boot_id, since}); None when absent or unreadable."""
    raw = node_annotations(node).get(ANNOTATION_FENCE)
    try:
        record = json.loads(raw) if raw else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def reboot_pending(mine: dict | None, record: dict | None, boot_id: str | None) -> bool:
    """Our REBOOT fence was placed in the boot still running (or we cannot tell: no record/boot id)."""
    if mine is None or mine.get("value") != Severity.REBOOT.name:
        return False
    placed_in = (record or {}).get("boot_id")
    return not placed_in or not boot_id or placed_in == boot_id


def our_fence(node: dict) -> dict | None:
    """The unhealthy taint on the node that this agent placed (by the ownership record)."""
    owned = parse_owned(node_annotations(node))
    if owned.get(FENCE_ID) != OWNER_HEALTH:
        return None
    return next((t for t in node_taints(node) if taint_id(t) == FENCE_ID), None)


def foreign_fence(node: dict) -> dict | None:
    """An unhealthy taint someone else placed (an operator, another tool): never touched."""
    if our_fence(node) is not None:
        return None
    return next((t for t in node_taints(node) if t.get("key") == TAINT_UNHEALTHY), None)


def fenced_by_gpufleet(node: dict) -> bool:
    """Carries an unhealthy or quarantine taint that a gpufleet component placed."""
    return fenced_by_gpufleet_taints(node_taints(node), parse_owned(node_annotations(node)))


def fence_order(node: dict) -> tuple[float, str]:
    """Where a fence stands in the breaker's queue: placed earlier first (`since` of the fence
    record; a fence without one — a quarantine, an older agent's — counts as first), then by name."""
    record = fence_record(node) or {}
    try:
        since = float(record.get("since") or 0.0)
    except (TypeError, ValueError):
        since = 0.0
    return since, node["metadata"]["name"]


def fleet_fence_count(nodes: list[dict], exclude: str | None = None) -> dict[str, int]:
    """GPU nodes and how many of them gpufleet has fenced (`exclude`: this node)."""
    gpu_nodes = [n for n in nodes if is_gpu_node(n)]
    fenced = sum(1 for n in gpu_nodes if n["metadata"]["name"] != exclude and fenced_by_gpufleet(n))
    return {"gpu_nodes": len(gpu_nodes), "fenced": fenced}


def decide_fence(
    node: dict,
    verdict: Severity,
    status: HealthStatus,
    memory: FenceMemory,
    taint_level: Severity,
    lift_after: int,
    max_fenced: str,
    fleet: Callable[[], dict[str, int]],
    boot_id: str | None = None,
    now: float = 0.0,
) -> FenceDecision:
    """The fence action for this cycle. `fleet()` is called only before placing a new fence; it gives
    {"gpu_nodes", "fenced"} (gpu_nodes -1: not counted, the limit is a number of nodes).

    `boot_id`: the running boot (None: unknown, so a REBOOT fence never lifts)."""
    mine = our_fence(node)
    record = fence_record(node)
    if mine is None and memory.fence_value is not None:
        # We had fenced the node and did not lift it: someone (an operator's return to service)
        # removed it. Honour that: the agent forgets past findings and judges the node afresh.
        return FenceDecision(
            "released",
            f"our fence ({memory.fence_value}) was removed by someone else (return to service): "
            "forgetting held findings and judging the node afresh",
            drop_record=record is not None,
        )
    # What the node says outranks what this agent remembers: ISOLATE stays until an operator
    # releases it; REBOOT stays (and is not lowered) until the node has rebooted.
    floor = Severity.PASS
    if mine is not None and mine.get("value") == Severity.ISOLATE.name:
        floor = Severity.ISOLATE
    elif reboot_pending(mine, record, boot_id):
        floor = Severity.REBOOT
    want_fence = verdict >= taint_level and status != HealthStatus.UNKNOWN
    if want_fence:
        value = max(verdict, floor).name
        new_record = {"value": value, "boot_id": boot_id, "since": round(now, 3)}
        if mine is not None:
            if mine.get("value") == value:
                keep = record if record and record.get("value") == value else None
                return FenceDecision(
                    "hold",
                    f"verdict {verdict.name}: fence {value} stays",
                    value,
                    record=None if keep else new_record,
                )
            change = node_taint_change(node, [fence_taint(value)], "present", OWNER_HEALTH)
            return FenceDecision(
                "update",
                f"verdict {verdict.name}: fence value {mine.get('value')} -> {value}",
                value,
                change,
                record=new_record,
            )
        other = foreign_fence(node)
        if other is not None:
            return FenceDecision(
                "foreign",
                f"verdict {verdict.name}: node already carries {TAINT_UNHEALTHY}="
                f"{other.get('value', '')}:{other.get('effect')} placed by someone else; "
                "left alone",
            )
        numbers = fleet()
        limit = quarantine_limit(max_fenced, numbers["gpu_nodes"])
        if limit is not None and numbers["fenced"] >= limit:
            return FenceDecision(
                "suppressed",
                f"verdict {verdict.name}: circuit breaker open, {numbers['fenced']} "
                + (f"of {numbers['gpu_nodes']} " if numbers["gpu_nodes"] >= 0 else "")
                + "GPU nodes already fenced by gpufleet "
                f"(max_fenced {max_fenced} = {limit}); not fencing this one",
                None,
                fleet=dict(numbers, limit=limit),
            )
        change = node_taint_change(node, [fence_taint(value)], "present", OWNER_HEALTH)
        return FenceDecision(
            "fence",
            f"verdict {verdict.name} >= {taint_level.name}: fencing",
            value,
            change,
            fleet=dict(numbers, limit=limit if limit is not None else -1),
            record=new_record,
        )
    if mine is None:
        return FenceDecision("none", f"verdict {verdict.name}, status {status.value}: no fence")
    if floor == Severity.ISOLATE:
        return FenceDecision(
            "isolate_held",
            "fence ISOLATE is lifted only by an operator (return to service)",
            mine.get("value"),
        )
    if floor == Severity.REBOOT:
        placed_in = (record or {}).get("boot_id") or "unknown (no fence record)"
        return FenceDecision(
            "reboot_held",
            f"fence REBOOT lifts only after a reboot (placed in boot {placed_in}, "
            f"running {boot_id or 'unknown'})",
            mine.get("value"),
        )
    if status == HealthStatus.UNKNOWN:
        return FenceDecision(
            "hold", "status unknown: the fence stays until the monitor works again", mine.get("value")
        )
    if memory.healthy_streak < lift_after:
        return FenceDecision(
            "hold",
            f"healthy for {memory.healthy_streak} of {lift_after} cycles: fence stays",
            mine.get("value"),
        )
    change = node_taint_change(
        node, [{"key": TAINT_UNHEALTHY, "effect": FENCE_EFFECT}], "absent", OWNER_HEALTH
    )
    return FenceDecision(
        "lift",
        f"healthy for {memory.healthy_streak} cycles: lifting the fence",
        None,
        change,
        drop_record=record is not None,
    )


def fence_taint(value: str) -> dict:
    return {"key": TAINT_UNHEALTHY, "value": value, "effect": FENCE_EFFECT}
