"""The fence decision table (pure): ownership, hysteresis, ISOLATE, unknown, circuit breaker."""

from __future__ import annotations

import json

import pytest
from gpufleet.health.fencing import FenceMemory, decide_fence, fleet_fence_count
from gpufleet.health.severity import HealthStatus, Severity

OURS = {"gpufleet.io/owned-taints": json.dumps({"gpufleet.io/unhealthy:NoSchedule": "gpufleet-health"})}


def node(value=None, owned=True, gpus=8, name="n"):
    taints = [{"key": "gpufleet.io/unhealthy", "value": value, "effect": "NoSchedule"}] if value else []
    return {
        "metadata": {
            "name": name,
            "annotations": dict(OURS) if value and owned else {},
            "labels": {"nvidia.com/gpu.present": "true"} if gpus else {},
        },
        "spec": {"taints": taints},
        "status": {"capacity": {"nvidia.com/gpu": str(gpus)} if gpus else {}},
    }


def no_fleet():
    raise AssertionError("the fleet is listed only before a new fence")


def decide(n, verdict, status=None, streak=0, lift_after=3, max_fenced="10%", fleet=no_fleet):
    status = status or {Severity.PASS: HealthStatus.PASS, Severity.MONITOR: HealthStatus.WARN}.get(
        verdict, HealthStatus.FAIL
    )
    return decide_fence(
        n, verdict, status, FenceMemory(healthy_streak=streak), Severity.RESET, lift_after, max_fenced, fleet
    )


def test_fence_when_at_or_above_the_threshold():
    decision = decide(node(), Severity.RESET, fleet=lambda: {"gpu_nodes": 100, "fenced": 3})
    assert decision.action == "fence" and decision.value == "RESET"
    assert decision.taint_change.added == [
        {"key": "gpufleet.io/unhealthy", "value": "RESET", "effect": "NoSchedule"}
    ]
    assert decision.taint_change.owned_after == {"gpufleet.io/unhealthy:NoSchedule": "gpufleet-health"}
    assert decide(node(), Severity.MONITOR).action == "none"


def test_value_follows_the_verdict_but_never_drops_from_isolate():
    assert decide(node("RESET"), Severity.REBOOT).action == "update"
    assert decide(node("RESET"), Severity.RESET).action == "hold"
    held = decide(node("ISOLATE"), Severity.RESET)
    assert held.action == "hold" and held.value == "ISOLATE"


@pytest.mark.parametrize("streak, action", [(0, "hold"), (2, "hold"), (3, "lift"), (9, "lift")])
def test_hysteresis(streak, action):
    assert decide(node("RESET"), Severity.PASS, streak=streak).action == action


def test_isolate_and_unknown_are_never_lifted():
    assert decide(node("ISOLATE"), Severity.PASS, streak=99).action == "isolate_held"
    assert decide(node("RESET"), Severity.PASS, HealthStatus.UNKNOWN, streak=99).action == "hold"


def test_unknown_never_fences():
    # an unknown status comes with verdict PASS, so it is below any threshold; a fail with a broken
    # part of the monitor is a real finding and fences
    assert decide(node(), Severity.PASS, HealthStatus.UNKNOWN).action == "none"


def test_a_foreign_unhealthy_taint_is_left_alone():
    decision = decide(node("manual", owned=False), Severity.RESET)
    assert decision.action == "foreign" and decision.taint_change is None
    assert decide(node("manual", owned=False), Severity.PASS, streak=9).action == "none"


def test_circuit_breaker():
    full = decide(node(), Severity.REBOOT, fleet=lambda: {"gpu_nodes": 50, "fenced": 5})
    assert full.action == "suppressed" and full.taint_change is None and full.fleet["limit"] == 5
    assert (
        decide(node(), Severity.REBOOT, max_fenced="6", fleet=lambda: {"gpu_nodes": 50, "fenced": 5}).action
        == "fence"
    )
    # a small fleet still may fence one node (10% of 3 rounds up to the minimum of 1)
    assert decide(node(), Severity.RESET, fleet=lambda: {"gpu_nodes": 3, "fenced": 0}).action == "fence"


def test_fleet_count_counts_gpufleet_fences_on_gpu_nodes_only():
    nodes = [
        node("RESET", name="a"),
        node("manual", owned=False, name="b"),
        node(name="c"),
        node("RESET", gpus=0, name="cpu"),
    ]
    assert fleet_fence_count(nodes) == {"gpu_nodes": 3, "fenced": 1}
    assert fleet_fence_count(nodes, exclude="a") == {"gpu_nodes": 3, "fenced": 0}


def test_memory_counts_scheduled_healthy_cycles_only():
    memory = FenceMemory()
    memory.observe(Severity.PASS, HealthStatus.PASS, 1.0, scheduled=True, taint_level=Severity.RESET)
    memory.observe(Severity.MONITOR, HealthStatus.WARN, 2.0, scheduled=True, taint_level=Severity.RESET)
    memory.observe(Severity.PASS, HealthStatus.PASS, 3.0, scheduled=False, taint_level=Severity.RESET)
    memory.observe(Severity.PASS, HealthStatus.UNKNOWN, 4.0, scheduled=True, taint_level=Severity.RESET)
    assert memory.healthy_streak == 2
    assert memory.verdict_since == 4.0 and memory.status == "unknown"
    memory.observe(Severity.RESET, HealthStatus.FAIL, 5.0, scheduled=False, taint_level=Severity.RESET)
    assert memory.healthy_streak == 0
    assert FenceMemory.from_dict(memory.to_dict()) == memory


def test_a_fence_removed_by_someone_else_is_a_release_not_a_reason_to_refence():
    memory = FenceMemory(fence_value="ISOLATE")
    released = decide_fence(
        node(), Severity.ISOLATE, HealthStatus.FAIL, memory, Severity.RESET, 3, "10%", no_fleet
    )
    assert released.action == "released" and released.taint_change is None and released.value is None
    # still there: nothing to release
    assert (
        decide_fence(
            node("ISOLATE"), Severity.ISOLATE, HealthStatus.FAIL, memory, Severity.RESET, 3, "10%", no_fleet
        ).action
        == "hold"
    )


def with_record(n, value, boot_id):
    from gpufleet.health.fencing import ANNOTATION_FENCE

    n["metadata"]["annotations"][ANNOTATION_FENCE] = json.dumps({"value": value, "boot_id": boot_id})
    return n


def decide_in_boot(n, verdict, boot_id, streak=5):
    status = HealthStatus.PASS if verdict == Severity.PASS else HealthStatus.FAIL
    return decide_fence(
        n,
        verdict,
        status,
        FenceMemory(healthy_streak=streak),
        Severity.RESET,
        3,
        "10%",
        no_fleet,
        boot_id=boot_id,
        now=100.0,
    )


def test_a_new_fence_records_its_value_and_boot_on_the_node():
    decision = decide_fence(
        node(),
        Severity.REBOOT,
        HealthStatus.FAIL,
        FenceMemory(),
        Severity.RESET,
        3,
        "10%",
        lambda: {"gpu_nodes": 10, "fenced": 0},
        boot_id="boot-a",
        now=100.0,
    )
    assert decision.action == "fence"
    assert json.loads(decision.annotations()["gpufleet.io/health-fence"]) == {
        "boot_id": "boot-a",
        "since": 100.0,
        "value": "REBOOT",
    }


def test_a_reboot_fence_holds_in_the_same_boot_whatever_the_memory_says():
    n = with_record(node("REBOOT"), "REBOOT", "boot-a")
    held = decide_in_boot(n, Severity.PASS, "boot-a", streak=50)
    assert held.action == "reboot_held" and held.value == "REBOOT" and held.taint_change is None
    assert decide_in_boot(n, Severity.RESET, "boot-a").action == "hold"  # not lowered to RESET
    assert decide_in_boot(n, Severity.PASS, None, streak=50).action == "reboot_held"  # boot unknown


def test_a_reboot_fence_without_its_record_counts_as_this_boot():
    held = decide_in_boot(node("REBOOT"), Severity.PASS, "boot-a", streak=50)
    assert held.action == "reboot_held"


def test_a_reboot_fence_lifts_in_a_new_boot_after_the_healthy_cycles():
    n = with_record(node("REBOOT"), "REBOOT", "boot-a")
    assert decide_in_boot(n, Severity.PASS, "boot-b", streak=1).action == "hold"
    lifted = decide_in_boot(n, Severity.PASS, "boot-b", streak=3)
    assert lifted.action == "lift" and lifted.annotations() == {"gpufleet.io/health-fence": None}
    updated = decide_in_boot(n, Severity.RESET, "boot-b")
    assert updated.action == "update" and updated.value == "RESET"  # a new boot: the verdict rules
