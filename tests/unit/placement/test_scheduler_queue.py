"""The live scheduler's queue and model, without an API server."""

from __future__ import annotations

from gpufleet.placement.model import Decision, Request
from gpufleet.placement.serve import ClusterCache, PendingQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def requests_for(*specs):
    return {uid: Request(name=uid, priority=priority) for uid, priority in specs}


def test_priority_first_then_arrival_order():
    clock = FakeClock()
    queue = PendingQueue(aging_per_second=0.0, backoff_initial=1, backoff_max=8, clock=clock)
    requests = requests_for(("a", 0), ("b", 5), ("c", 0), ("d", 5))
    for uid in "abcd":
        queue.add(uid, {})
    assert queue.ready(requests) == ["b", "d", "a", "c"]


def test_aging_lifts_a_pod_that_waited_past_a_newer_higher_one():
    clock = FakeClock()
    queue = PendingQueue(aging_per_second=1.0, backoff_initial=1, backoff_max=8, clock=clock)
    queue.add("old-low", {})
    clock.now += 10  # waited 10 s: effective priority 10
    queue.add("new-high", {})
    requests = requests_for(("old-low", 0), ("new-high", 5))
    assert queue.ready(requests) == ["old-low", "new-high"]


def test_back_off_doubles_up_to_its_cap_and_room_retries_at_once():
    clock = FakeClock()
    queue = PendingQueue(aging_per_second=0.0, backoff_initial=1, backoff_max=4, clock=clock)
    queue.add("p", {})
    requests = requests_for(("p", 0))
    assert [queue.back_off("p") for _ in range(4)] == [1, 2, 4, 4]
    assert queue.ready(requests) == []
    assert queue.next_due() == 4
    clock.now += 4
    assert queue.ready(requests) == ["p"]
    queue.back_off("p")
    queue.retry_unschedulable()
    assert queue.ready(requests) == ["p"]


def test_removing_forgets_everything_about_a_pod():
    queue = PendingQueue(aging_per_second=0.0, backoff_initial=1, backoff_max=4, clock=FakeClock())
    queue.add("p", {"x": 1})
    queue.back_off("p")
    assert queue.remove("p") == {"x": 1}
    assert len(queue) == 0 and queue.next_due() is None


def node(name, gpus=1, **labels):
    return {"metadata": {"name": name, "labels": labels, "annotations": {}},
            "spec": {},
            "status": {"allocatable": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": str(gpus)}}}


def pod(name, node_name=None, uid=None, phase="Pending", scheduler="gpufleet"):
    spec = {"schedulerName": scheduler, "containers": [
        {"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "1"}}}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"metadata": {"name": name, "namespace": "default", "uid": uid or name, "annotations": {}},
            "spec": spec, "status": {"phase": phase}}


def test_cache_needs_a_rebuild_only_for_what_its_own_commits_did_not_count():
    cache = ClusterCache("gpufleet")
    cache.on_node("ADDED", node("n1"))
    placer = cache.placer("best_fit", 0)
    assert not cache.stale
    # A heartbeat-like change (no field placement reads) keeps the model.
    beat = node("n1")
    beat["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    cache.on_node("MODIFIED", beat)
    assert not cache.stale
    # Our own decision, then the watch confirming it: still no rebuild.
    decision = placer.decide(Request(name="p", num_gpu=1))
    placer.commit(decision)
    cache.assume(pod("p"), decision)
    cache.on_pod("MODIFIED", pod("p", node_name="n1"))
    assert not cache.stale and cache.bound["p"]["spec"]["nodeName"] == "n1"
    # Somebody else's pod appearing bound, and a pod going away, do need one.
    cache.on_pod("ADDED", pod("other", node_name="n1", scheduler="default-scheduler"))
    assert cache.stale
    cache.placer("best_fit", 0)
    cache.on_pod("DELETED", pod("p", node_name="n1"))
    assert cache.stale and cache.room_freed


def test_a_failed_binding_is_forgotten():
    cache = ClusterCache("gpufleet")
    cache.on_node("ADDED", node("n1"))
    placer = cache.placer("best_fit", 0)
    decision = placer.decide(Request(name="p", num_gpu=1))
    cache.assume(pod("p"), Decision(request=decision.request, node="n1", gpus=(0,)))
    assert "p" in cache.bound
    cache.forget("p")
    assert "p" not in cache.bound and cache.stale


def test_only_our_unbound_live_pods_are_pending():
    cache = ClusterCache("gpufleet")
    assert cache.is_ours_pending(pod("mine"))
    assert not cache.is_ours_pending(pod("theirs", scheduler="default-scheduler"))
    assert not cache.is_ours_pending(pod("bound", node_name="n1"))
    assert not cache.is_ours_pending(pod("done", phase="Succeeded"))
    doomed = pod("doomed")
    doomed["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not cache.is_ours_pending(doomed)
