"""The GpuHealthy node condition and the fence/lift Events, written by the health agent's Kubernetes sink."""

from __future__ import annotations


def condition(kube_api, node="gpu-1") -> dict | None:
    conditions = kube_api.get_node(node)["status"]["conditions"]
    return next((c for c in conditions if c["type"] == "GpuHealthy"), None)


def events(kube_api) -> list[dict]:
    return sorted(kube_api.list_objects("events.events.k8s.io"), key=lambda e: e["eventTime"])


def test_condition_follows_the_verdict_and_transition_time_moves_only_on_status_change(fleet, kube_api):
    fleet.add("gpu-1")
    agent = fleet.agent("gpu-1")
    agent.cycle()
    healthy = condition(kube_api)
    assert (healthy["status"], healthy["reason"]) == ("True", "PASS")
    assert healthy["message"] == "all GPU checks passed"
    kubelets = [c for c in kube_api.get_node("gpu-1")["status"]["conditions"] if c["type"] == "Ready"]
    assert kubelets  # the kubelet's conditions are kept

    kube_api.update_object("nodes", "gpu-1", {"status": {"conditions": [
        dict(healthy, lastTransitionTime="2020-01-01T00:00:00Z")]}})  # make a move visible
    fleet.inject("gpu-1", gpu=3, settings={"remapped_rows.pending": True})
    agent.cycle()
    failing = condition(kube_api)
    assert (failing["status"], failing["reason"]) == ("False", "RESET")
    assert failing["message"].startswith("GPU 3: memory_remap RESET: ")
    assert failing["lastTransitionTime"] != "2020-01-01T00:00:00Z"

    kube_api.clear_requests()
    agent.cycle()  # nothing changed: no write at all
    assert kube_api.writes() == []


def test_same_status_new_message_keeps_the_transition_time(fleet, kube_api):
    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=3, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1")
    agent.cycle()
    first = condition(kube_api)
    kube_api.update_object("nodes", "gpu-1", {"status": {"conditions": [
        dict(first, lastTransitionTime="2020-01-01T00:00:00Z")]}})
    fleet.inject("gpu-1", gpu=5, settings={"remapped_rows.pending": True})
    agent.cycle()
    second = condition(kube_api)
    assert second["status"] == "False" and second["message"] != first["message"]
    assert second["lastTransitionTime"] == "2020-01-01T00:00:00Z"


def test_fence_and_lift_are_events_regarding_the_node(fleet, kube_api):
    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=2, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1", kubernetes={"lift_after": 1}, backend={"keeper_window": 0})
    agent.cycle()
    [fenced] = events(kube_api)
    assert (fenced["reason"], fenced["type"], fenced["action"]) == ("GpuFenced", "Warning", "Fence")
    assert fenced["regarding"]["kind"] == "Node" and fenced["regarding"]["name"] == "gpu-1"
    assert fenced["regarding"]["uid"] == kube_api.get_node("gpu-1")["metadata"]["uid"]
    assert fenced["reportingController"] == "gpufleet-health"
    assert fenced["deprecatedSource"] == {"component": "gpufleet-health", "host": "gpu-1"}
    assert "gpufleet.io/unhealthy=RESET" in fenced["note"]

    agent.cycle()
    assert len(events(kube_api)) == 1  # holding the fence is not news

    fleet.inject("gpu-1", clear=True)
    agent.cycle()
    reasons = [e["reason"] for e in events(kube_api)]
    assert reasons == ["GpuFenced", "GpuFenceLifted"]
    assert condition(kube_api)["status"] == "True"


def test_a_refused_event_does_not_fail_the_publication(fleet, kube_api):
    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=2, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1")
    kube_api.fail_next("POST", r"/events$", 403, message="events is forbidden")
    result = agent.cycle()
    assert result.published is True
    assert kube_api.get_node("gpu-1")["spec"]["taints"][0]["key"] == "gpufleet.io/unhealthy"
