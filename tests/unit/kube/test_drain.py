"""The drain planner (which pods, in what order, why not) and executor (retries, timeout)."""

from __future__ import annotations

import json

from gpufleet.kube.drain import PodRef, execute_drain, plan_drain
from kubernetes.client.rest import ApiException


def pod(name, namespace="default", owner="ReplicaSet", priority=None, mirror=False, empty_dir=False,
        phase="Running", terminating=False, uid=None):
    meta = {"name": name, "namespace": namespace, "uid": uid or name, "annotations": {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "o", "uid": "u", "controller": True}]
    if mirror:
        meta["annotations"]["kubernetes.io/config.mirror"] = "x"
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec = {"containers": [{"name": "c"}]}
    if priority is not None:
        spec["priority"] = priority
    if empty_dir:
        spec["volumes"] = [{"name": "s", "emptyDir": {}}]
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def test_plan_skips_daemonset_mirror_terminating_and_finished():
    plan = plan_drain([pod("ds", owner="DaemonSet"), pod("static", owner="Node", mirror=True),
                       pod("going", terminating=True), pod("done", owner="Job", phase="Succeeded"),
                       pod("work")])
    assert [str(p) for p in plan.evict] == ["default/work"]
    assert {str(p): why for p, why in plan.skipped} == {
        "default/ds": "DaemonSet pod", "default/static": "mirror pod (static, managed by the kubelet)",
        "default/going": "already terminating", "default/done": "finished"}
    assert plan.ok


def test_plan_blocks_on_emptydir_and_unmanaged_unless_allowed():
    pods = [pod("scratch", empty_dir=True), pod("bare", owner=None)]
    plan = plan_drain(pods)
    assert not plan.ok and plan.evict == []
    assert [str(p) for p, _ in plan.blocking] == ["default/scratch", "default/bare"]
    assert "emptyDir" in plan.blocking[0][1] and "controller" in plan.blocking[1][1]
    allowed = plan_drain(pods, delete_emptydir_data=True, delete_unmanaged=True)
    assert allowed.ok and [p.name for p in allowed.evict] == ["bare", "scratch"]


def test_plan_orders_by_priority_then_namespace_and_name():
    plan = plan_drain([pod("b", priority=100), pod("a", namespace="z"), pod("a", namespace="m"),
                       pod("critical", priority=2000000000), pod("low", priority=-5)])
    assert [str(p) for p in plan.evict] == ["default/low", "m/a", "z/a", "default/b", "default/critical"]


class FakeApi:
    """Evictions refused `refusals[name]` times (429), pods gone `linger` polls after eviction."""

    def __init__(self, refusals=None, linger=0):
        self.refusals = dict(refusals or {})
        self.linger = linger
        self.evicted: list[str] = []
        self.calls: list[str] = []
        self.on_node: dict[str, int] = {}

    def evict_pod(self, namespace, name, grace_period=None):
        self.calls.append(f"evict {name}")
        if self.refusals.get(name, 0) > 0:
            self.refusals[name] -= 1
            exc = ApiException(status=429, reason="Too Many Requests")
            message = "Cannot evict pod as it would violate the pod's disruption budget."
            exc.body = json.dumps({"message": message})
            raise exc
        self.evicted.append(name)
        self.on_node[name] = self.linger

    def list_pods_on_node(self, node):
        self.calls.append("list")
        left = []
        for name, polls in list(self.on_node.items()):
            if polls > 0:
                self.on_node[name] = polls - 1
                left.append({"metadata": {"name": name, "namespace": "default", "uid": name}})
        return left


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_executor_retries_pdb_refusals_with_backoff():
    api, clock = FakeApi(refusals={"db": 3}), FakeClock()
    plan = plan_drain([pod("db"), pod("web")])
    result = execute_drain(api, "n", plan, timeout=100, clock=clock, sleep=clock.sleep)
    assert result.ok
    assert result.evicted == ["default/web", "default/db"]
    assert result.refusals == {"default/db": 3}
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert api.calls.count("evict db") == 4 and api.calls.count("evict web") == 1


def test_executor_times_out_naming_the_refused_pod():
    api, clock = FakeApi(refusals={"db": 1000}), FakeClock()
    result = execute_drain(api, "n", plan_drain([pod("db")]), timeout=30, clock=clock, sleep=clock.sleep)
    assert not result.ok
    assert result.not_evicted == ["default/db"]
    assert "timed out after 30s" in result.message and "default/db: refused" in result.message
    assert "disruption budget" in result.message
    assert clock.now <= 30
    assert max(clock.sleeps) <= 10.0  # backoff is capped


def test_executor_waits_until_pods_are_gone_and_reports_stragglers():
    api, clock = FakeApi(linger=2), FakeClock()
    result = execute_drain(api, "n", plan_drain([pod("slow")]), timeout=60, clock=clock, sleep=clock.sleep)
    assert result.ok and api.calls.count("list") == 3

    api, clock = FakeApi(linger=1000), FakeClock()
    result = execute_drain(api, "n", plan_drain([pod("stuck")]), timeout=20, clock=clock, sleep=clock.sleep)
    assert not result.ok and result.still_terminating == ["default/stuck"]
    assert "still terminating" in result.message


def test_executor_without_wait_does_not_poll():
    api, clock = FakeApi(linger=5), FakeClock()
    result = execute_drain(api, "n", plan_drain([pod("x")]), wait=False, clock=clock, sleep=clock.sleep)
    assert result.ok and "list" not in api.calls


def test_pod_ref_counts_gpus():
    gpu_pod = pod("g")
    gpu_pod["spec"]["containers"] = [{"name": "a", "resources": {"limits": {"nvidia.com/gpu": "2"}}},
                                     {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]
    assert plan_drain([gpu_pod]).evict == [PodRef("default", "g", "g", 0, 3)]
