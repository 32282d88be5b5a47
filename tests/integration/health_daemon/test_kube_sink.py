"""The health agent against the emulated Kubernetes API, through the real `kubernetes` client over HTTP."""

from __future__ import annotations

import json
import threading
import time

import pytest
from gpufleet.health.daemon import FIRST_BACKOFF
from gpufleet.kube.client import RetryPolicy

OWNED = "gpufleet.io/owned-taints"
UNHEALTHY = "gpufleet.io/unhealthy"
FENCED = "gpufleet.io/fenced"
NODE_PATH = r"^/api/v1/nodes/gpu-1$"


def taints(node: dict) -> list[dict]:
    return [{k: t[k] for k in ("key", "value", "effect") if k in t} for t in node["spec"].get("taints") or []]


def owned(node: dict) -> dict:
    raw = node["metadata"].get("annotations", {}).get(OWNED)
    return json.loads(raw) if raw else {}


def fence_of(node: dict) -> list[dict]:
    return [t for t in taints(node) if t["key"] == UNHEALTHY]


def node_requests(kube_api, method: str | None = None) -> list:
    """Requests for the node object itself (not its status subresource: the GpuHealthy condition)."""
    return [r for r in kube_api.requests if "/nodes" in r.path and not r.path.endswith("/status")
            and (method is None or r.method == method)]


def status_patches(kube_api) -> list:
    return [r for r in kube_api.writes() if r.path == "/api/v1/nodes/gpu-1/status"]


def metric(agent, name: str, **labels) -> float | None:
    return agent.metrics.registry.get_sample_value(name, labels or None)


@pytest.mark.cluster
def test_failing_node_gets_labels_annotations_and_the_fence(fleet, kube_api):
    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=3, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1")

    result = agent.cycle()

    node = kube_api.get_node("gpu-1")
    labels, annotations = node["metadata"]["labels"], node["metadata"]["annotations"]
    assert result.report.verdict.name == "RESET"
    assert labels["gpufleet.io/health"] == "fail"
    assert labels["gpufleet.io/severity"] == "RESET"
    assert labels["gpufleet.io/gpu-count"] == "8"
    assert labels["gpufleet.io/gpu-model"] == "NVIDIA-H100-80GB-HBM3"
    assert len(labels["gpufleet.io/last-check"]) == 16 and labels["gpufleet.io/last-check"].endswith("Z")
    report = json.loads(annotations["gpufleet.io/health-report"])
    assert report["verdict"] == "RESET" and report["status"] == "fail"
    assert [f["check"] for f in report["findings"]] == ["memory_remap"]
    gpus = json.loads(annotations["gpufleet.io/gpus"])
    assert [g["index"] for g in gpus] == list(range(8))
    assert {g["index"]: g["health"] for g in gpus}[3] == "fail"
    assert all(g["health"] == "pass" for g in gpus if g["index"] != 3)
    assert set(gpus[0]) == {"index", "uuid", "model", "memory_mib", "health", "nvlink_peers"}
    assert gpus[0]["nvlink_peers"] == [1, 2, 3, 4, 5, 6, 7]  # NVSwitch: every GPU reaches every other
    assert fence_of(node) == [{"key": UNHEALTHY, "value": "RESET", "effect": "NoSchedule"}]
    assert owned(node) == {f"{UNHEALTHY}:NoSchedule": "gpufleet-health"}
    assert metric(agent, "gpufleet_health_fence_actions_total", action="fence") == 1
    assert metric(agent, "gpufleet_health_fenced") == 1


def test_one_get_and_one_patch_then_nothing_while_unchanged(fleet, kube_api):
    fleet.add("gpu-1")
    agent = fleet.agent("gpu-1")
    kube_api.clear_requests()

    agent.cycle()
    # ...and, after the first publication, the GPU nodes counted for the breaker's "10%" (again every
    # ~10 min): one node listed (the answer says how many remain) and the nodes without GPU labels
    assert [repr(r) for r in node_requests(kube_api)] == [
        "<GET /api/v1/nodes/gpu-1>",
        "<PATCH /api/v1/nodes/gpu-1>",
        "<GET /api/v1/nodes?labelSelector=!gpufleet.io/gpu-count>",
        "<GET /api/v1/nodes?limit=1>",
    ]
    assert len(status_patches(kube_api)) == 1  # the GpuHealthy condition appears
    kube_api.clear_requests()

    agent.cycle()
    agent.cycle()
    assert [r.method for r in node_requests(kube_api)] == ["GET", "GET"]
    assert kube_api.writes() == []
    assert kube_api.get_node("gpu-1")["metadata"]["labels"]["gpufleet.io/health"] == "pass"


def test_a_change_is_one_patch_with_the_fence_and_labels_together(fleet, kube_api):
    fleet.add("gpu-1")
    agent = fleet.agent("gpu-1")
    agent.cycle()
    kube_api.clear_requests()
    fleet.inject("gpu-1", gpu=0, settings={"ecc.volatile_uncorrected": 2})

    agent.cycle()

    patches = [r for r in kube_api.writes() if r.path == "/api/v1/nodes/gpu-1"]
    assert len(patches) == 1
    assert len(status_patches(kube_api)) == 1  # GpuHealthy turns False
    assert [r.path for r in kube_api.writes() if r.method == "POST"] == [
        "/apis/events.k8s.io/v1/namespaces/default/events"]  # the fence is an Event
    body = patches[0].body if isinstance(patches[0].body, dict) else json.loads(patches[0].body)
    assert body["spec"]["taints"][0]["key"] == UNHEALTHY
    assert body["metadata"]["labels"]["gpufleet.io/health"] == "fail"
    # the LISTs are the circuit breaker's count, made only around placing a new fence (before it, and
    # after it for agents that counted at the same time): of the fenced nodes (by the label the fence
    # carries), never of every node
    assert [repr(r) for r in node_requests(kube_api)] == [
        "<GET /api/v1/nodes/gpu-1>",
        f"<GET /api/v1/nodes?labelSelector={FENCED}>",
        "<PATCH /api/v1/nodes/gpu-1>",
        f"<GET /api/v1/nodes?labelSelector={FENCED}>",
    ]
    assert body["metadata"]["labels"][FENCED] == "true"  # the label in the same write as the taint


def test_conflict_is_retried_on_the_fresh_node(fleet, kube_api):
    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=1, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1")
    kube_api.fail_next("PATCH", NODE_PATH, 409)

    result = agent.cycle()

    assert result.published is True
    assert [r.method for r in node_requests(kube_api, "PATCH")] == ["PATCH", "PATCH"]
    assert fence_of(kube_api.get_node("gpu-1"))[0]["value"] == "RESET"


def test_api_outage_is_retried_with_backoff_while_checks_go_on(fleet, kube_api, tmp_path):
    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=1, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1")
    # Two publications fail: every attempt of each (the client retries a 503 itself) is answered 503.
    kube_api.fail_next("GET", NODE_PATH, 503, times=2 * RetryPolicy().attempts)

    first = agent.cycle()
    assert first.published is False and agent.pending is not None
    assert metric(agent, "gpufleet_health_kube_api_errors_total") == 1
    state = json.loads((tmp_path / "gpu-1.state.json").read_text())
    assert state["report"]["verdict"] == "RESET"  # the checks ran and were recorded anyway
    first_backoff = agent.backoff

    assert agent.publish() is False  # the second injected failure
    assert agent.backoff > first_backoff  # waits grow
    assert agent.publish() is True  # the API is back
    assert agent.pending is None and agent.backoff == FIRST_BACKOFF
    assert fence_of(kube_api.get_node("gpu-1"))[0]["value"] == "RESET"


@pytest.mark.cluster
def test_others_taints_and_cordon_are_left_alone(fleet, kube_api):
    operator_taint = {"key": "example.com/maintenance", "value": "disk", "effect": "NoSchedule"}
    fleet.add("gpu-1", taints=[operator_taint], unschedulable=True)
    fleet.inject("gpu-1", gpu=2, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1", kubernetes={"lift_after": 1}, backend={"keeper_window": 0})

    agent.cycle()
    node = kube_api.get_node("gpu-1")
    assert operator_taint in taints(node) and fence_of(node)

    fleet.inject("gpu-1", clear=True)
    agent.cycle()
    node = kube_api.get_node("gpu-1")
    assert fence_of(node) == []  # ours lifted...
    assert taints(node) == [operator_taint]  # ...theirs kept
    assert node["spec"]["unschedulable"] is True  # and the cordon too
    assert owned(node) == {}


def test_an_unhealthy_taint_placed_by_someone_else_is_never_changed_or_lifted(fleet, kube_api):
    theirs = {"key": UNHEALTHY, "value": "manual", "effect": "NoSchedule"}
    fleet.add("gpu-1", taints=[theirs])
    agent = fleet.agent("gpu-1", kubernetes={"lift_after": 1})

    for _ in range(3):  # healthy cycles: not ours to lift
        agent.cycle()
    assert taints(kube_api.get_node("gpu-1")) == [theirs]

    fleet.inject("gpu-1", gpu=0, settings={"remapped_rows.pending": True})
    result = agent.cycle()  # failing: the node is fenced already, by them
    assert result.fence_action == "foreign"
    assert taints(kube_api.get_node("gpu-1")) == [theirs]
    assert owned(kube_api.get_node("gpu-1")) == {}


def test_stop_and_restart_keep_the_fence(fleet, kube_api, tmp_path):
    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=4, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1", backend={"keeper_window": 0})
    loop = threading.Thread(target=agent.run_loop)
    loop.start()
    try:
        for _ in range(100):
            if agent.ready:
                break
            threading.Event().wait(0.05)
    finally:
        agent.request_stop()  # what SIGTERM does
        loop.join(10)
    assert not loop.is_alive()
    assert fence_of(kube_api.get_node("gpu-1"))  # stopping did not lift it

    # The fault is gone when the agent comes back (an upgrade, a restart): one healthy cycle
    # is not enough to lift (lift_after defaults to 3) — the fence stays.
    fleet.inject("gpu-1", clear=True)
    restarted = fleet.agent("gpu-1", backend={"keeper_window": 0})
    result = restarted.cycle()
    assert result.report.status.value == "pass"
    assert fence_of(kube_api.get_node("gpu-1"))[0]["value"] == "RESET"


def test_hysteresis_lifts_only_after_n_healthy_scheduled_cycles(fleet, kube_api):
    from gpufleet.gpu.base import XidEvent

    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=4, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1", kubernetes={"lift_after": 3}, backend={"keeper_window": 0})
    agent.cycle()
    fleet.inject("gpu-1", clear=True)

    agent.cycle()
    agent.cycle()
    # A harmless Xid wakes the agent for an extra cycle: it does not count towards the lift.
    agent.cycle("xid", [XidEvent(xid=13, gpu_index=0)])
    assert fence_of(kube_api.get_node("gpu-1")), "lifted before 3 healthy scheduled cycles"
    assert agent.fence.healthy_streak == 2

    agent.cycle()
    assert fence_of(kube_api.get_node("gpu-1")) == []
    assert metric(agent, "gpufleet_health_fence_actions_total", action="lift") == 1
    assert kube_api.get_node("gpu-1")["metadata"]["labels"]["gpufleet.io/health"] == "warn"  # the Xid 13


def test_a_relapse_restarts_the_count(fleet, kube_api):
    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=4, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1", kubernetes={"lift_after": 2}, backend={"keeper_window": 0})
    agent.cycle()
    fleet.inject("gpu-1", clear=True)
    agent.cycle()
    fleet.inject("gpu-1", gpu=4, settings={"remapped_rows.pending": True})
    agent.cycle()
    fleet.inject("gpu-1", clear=True)
    agent.cycle()
    assert fence_of(kube_api.get_node("gpu-1"))
    agent.cycle()
    assert fence_of(kube_api.get_node("gpu-1")) == []


def test_isolate_is_never_lifted_by_the_agent(fleet, kube_api):
    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=5, settings={"remapped_rows.failure": True})
    agent = fleet.agent("gpu-1", kubernetes={"lift_after": 1}, backend={"keeper_window": 0})
    agent.cycle()
    assert fence_of(kube_api.get_node("gpu-1"))[0]["value"] == "ISOLATE"

    fleet.inject("gpu-1", clear=True)
    for _ in range(4):
        result = agent.cycle()
    assert result.report.status.value == "pass"
    assert result.fence_action == "isolate_held"
    assert fence_of(kube_api.get_node("gpu-1"))[0]["value"] == "ISOLATE"


def test_a_broken_monitor_never_fences(fleet, kube_api):
    fleet.add("gpu-1")
    fleet.inject("gpu-1", settings={"nvml_error": "DriverNotLoaded"})
    agent = fleet.agent("gpu-1")

    result = agent.cycle()

    node = kube_api.get_node("gpu-1")
    assert result.report.status.value == "unknown"
    assert node["metadata"]["labels"]["gpufleet.io/health"] == "unknown"
    assert fence_of(node) == []
    # ...and an unknown cycle is not a healthy one either
    assert agent.fence.healthy_streak == 0


def test_circuit_breaker_fences_at_most_max_fenced_of_100_failing_nodes(fleet, kube_api):
    names = [f"gpu-{i:03d}" for i in range(100)]
    fleet.add(*names)
    for name in names:
        fleet.inject(name, gpu=0, settings={"remapped_rows.pending": True})
    agents = [fleet.agent(name) for name in names]  # max_fenced defaults to 10% of the GPU nodes

    results = [agent.cycle() for agent in agents]

    nodes = [kube_api.get_node(n) for n in names]
    fenced = [n["metadata"]["name"] for n in nodes if fence_of(n)]
    assert len(fenced) == 10
    assert sum(r.fence_action == "suppressed" for r in results) == 90
    # The verdict is still recorded on every node, and the breaker is visible in the metrics.
    assert all(n["metadata"]["labels"]["gpufleet.io/health"] == "fail" for n in nodes)
    suppressed = agents[-1]
    assert metric(suppressed, "gpufleet_health_circuit_breaker_open") == 1
    assert metric(suppressed, "gpufleet_health_fence_actions_total", action="suppressed") == 1
    assert metric(suppressed, "gpufleet_health_fenced") == 0


def test_circuit_breaker_with_a_count_and_a_quarantine_counting_as_fenced(fleet, kube_api):
    from gpufleet.kube.api import KubeApi
    from gpufleet.kube.quarantine import quarantine_node

    fleet.add("gpu-q", "gpu-1", "gpu-2")
    quarantine_node(KubeApi(kube_api.api_client), "gpu-q", reason="bad NVLink")  # the taint, no drain
    assert kube_api.get_node("gpu-q")["metadata"]["labels"][FENCED] == "true"
    for name in ("gpu-1", "gpu-2"):
        fleet.inject(name, gpu=0, settings={"remapped_rows.pending": True})

    results = [fleet.agent(n, kubernetes={"max_fenced": "2"}).cycle() for n in ("gpu-1", "gpu-2")]

    assert [r.fence_action for r in results] == ["fence", "suppressed"]


def test_an_operator_release_is_honoured(fleet, kube_api):
    from gpufleet.kube.api import KubeApi
    from gpufleet.kube.quarantine import release_node

    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=5, settings={"remapped_rows.failure": True})
    agent = fleet.agent("gpu-1")  # the keeper holds the ISOLATE finding for 1 h
    agent.cycle()
    assert fence_of(kube_api.get_node("gpu-1"))[0]["value"] == "ISOLATE"
    fleet.inject("gpu-1", clear=True)  # the GPU was replaced

    release_node(KubeApi(kube_api.api_client), "gpu-1")  # the return-to-service playbook
    result = agent.cycle()

    assert result.released is True  # the fence was gone: held findings forgotten, judged afresh
    assert result.report.status.value == "pass" and result.fence_action == "none"
    node = kube_api.get_node("gpu-1")
    assert fence_of(node) == [] and node["metadata"]["labels"]["gpufleet.io/health"] == "pass"
    assert metric(agent, "gpufleet_health_fence_actions_total", action="released") == 1
    assert agent.cycle().fence_action == "none"  # and it stays in service


def test_a_release_while_the_fault_is_still_there_fences_again(fleet, kube_api):
    fleet.add("gpu-1")
    fleet.inject("gpu-1", gpu=5, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1")
    agent.cycle()
    kube_api.update_object(
        "nodes", "gpu-1", {"spec": {"taints": None}, "metadata": {"annotations": {OWNED: None}}}
    )

    result = agent.cycle()
    assert result.released is True
    assert result.fence_action == "fence"  # judged afresh: the remap is still pending
    assert fence_of(kube_api.get_node("gpu-1"))[0]["value"] == "RESET"


def fenced_labelled(kube_api) -> set[str]:
    return {n["metadata"]["name"] for n in kube_api.list_objects("nodes")
            if FENCED in (n["metadata"].get("labels") or {})}


def test_the_breaker_counts_the_fenced_nodes_without_listing_every_node(fleet, kube_api):
    names = [f"gpu-{i:02d}" for i in range(40)]
    fleet.add(*names)
    for i in range(10):  # the control plane and CPU nodes: not in the 10% (of 50 nodes it would be 5)
        kube_api.add_node(f"cpu-{i}", gpus=0)
    agents = [fleet.agent(name) for name in names]  # max_fenced 10% of 40 GPU nodes: 4
    for agent in agents:
        agent.cycle()  # healthy: the agents label their nodes (gpu-count) and count the GPU nodes
    for name in names:
        fleet.inject(name, gpu=0, settings={"remapped_rows.pending": True})
    kube_api.clear_requests()

    results = [agent.cycle() for agent in agents]

    assert [r.fence_action for r in results].count("fence") == 4
    assert [r.fence_action for r in results].count("suppressed") == 36
    lists = [r for r in kube_api.requests if r.method == "GET" and r.path == "/api/v1/nodes"]
    assert len(lists) == 40 + 4  # one per decision to fence and one after each fence...
    assert {r.query.get("labelSelector") for r in lists} == {FENCED}  # ...of the fenced nodes only
    fenced = {n for n in names if fence_of(kube_api.get_node(n))}
    assert fenced_labelled(kube_api) == fenced and len(fenced) == 4


def test_agents_deciding_at_once_overshoot_only_by_those_racing(fleet, kube_api):
    names = [f"gpu-{i:02d}" for i in range(20)]
    fleet.add(*names)
    agents = {name: fleet.agent(name, kubernetes={"max_fenced": "3"}) for name in names}
    racers = names[:10]
    for name in racers:
        fleet.inject(name, gpu=0, settings={"remapped_rows.pending": True})
    start = threading.Barrier(len(racers))
    actions: dict[str, str] = {}

    def decide(name: str) -> None:
        start.wait()
        actions[name] = agents[name].cycle().fence_action

    threads = [threading.Thread(target=decide, args=(name,)) for name in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    fenced = {n for n in names if fence_of(kube_api.get_node(n))}
    assert fenced == {n for n, action in actions.items() if action == "fence"}
    assert fenced_labelled(kube_api) == fenced
    # Whatever the interleaving: the 3 fences placed first are never withdrawn, every racer without a
    # fence was withheld (at its count, or it withdrew its fence on counting again once placed)
    assert len(fenced) >= 3
    assert all(actions[n] == "suppressed" for n in racers if n not in fenced)
    assert all(our_record(kube_api.get_node(n)) is None for n in racers if n not in fenced)
    # after the race the count is exact again: the next failing node is withheld
    fleet.inject("gpu-10", gpu=0, settings={"remapped_rows.pending": True})
    assert agents["gpu-10"].cycle().fence_action == "suppressed"


def another_agents_fence_lands(kube_api, node: str, since: float) -> None:
    """Another agent's fence on `node`, as its PATCH lands on the API; `since`: when it decided."""
    record = json.dumps({"value": "RESET", "boot_id": None, "since": since})
    kube_api.update_object("nodes", node, {
        "metadata": {"labels": {FENCED: "true"}, "annotations": {
            OWNED: json.dumps({f"{UNHEALTHY}:NoSchedule": "gpufleet-health"}),
            "gpufleet.io/health-fence": record}},
        "spec": {"taints": [{"key": UNHEALTHY, "value": "RESET", "effect": "NoSchedule"}]}})


def our_record(node: dict) -> str | None:
    return (node["metadata"].get("annotations") or {}).get("gpufleet.io/health-fence")


def test_the_fence_label_follows_the_fence(fleet, kube_api):
    fleet.add("gpu-1", "gpu-2")
    fleet.inject("gpu-1", gpu=3, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-1", kubernetes={"lift_after": 1}, backend={"keeper_window": 0})
    agent.cycle()
    assert fenced_labelled(kube_api) == {"gpu-1"}

    fleet.inject("gpu-1", clear=True)
    assert agent.cycle().fence_action == "lift"
    assert fenced_labelled(kube_api) == set()  # lifted in the same write as the taint


def test_a_label_without_its_fence_does_not_count_and_goes(fleet, kube_api):
    fleet.add("gpu-2", labels={FENCED: "true"})  # an operator removed the taint with kubectl
    fleet.add("gpu-3")
    fleet.inject("gpu-3", gpu=0, settings={"remapped_rows.pending": True})

    assert fleet.agent("gpu-3", kubernetes={"max_fenced": "1"}).cycle().fence_action == "fence"
    fleet.agent("gpu-2").cycle()
    assert fenced_labelled(kube_api) == {"gpu-3"}


def test_a_fence_from_before_the_label_gets_it_at_the_next_cycle(fleet, kube_api):
    fleet.add("gpu-1", taints=[{"key": UNHEALTHY, "value": "RESET", "effect": "NoSchedule"}],
              annotations={OWNED: json.dumps({f"{UNHEALTHY}:NoSchedule": "gpufleet-health"})})
    fleet.add("gpu-3")
    fleet.inject("gpu-1", gpu=0, settings={"remapped_rows.pending": True})  # still failing: held
    fleet.inject("gpu-3", gpu=0, settings={"remapped_rows.pending": True})

    assert fleet.agent("gpu-1").cycle().fence_action == "hold"
    assert fenced_labelled(kube_api) == {"gpu-1"}
    assert fleet.agent("gpu-3", kubernetes={"max_fenced": "1"}).cycle().fence_action == "suppressed"


@pytest.mark.parametrize("other_since, withdrawn", [(1.0, True), (4102444800.0, False)])
def test_a_fence_counted_again_is_withdrawn_only_behind_limit_earlier_fences(fleet, kube_api,
                                                                             other_since, withdrawn):
    from gpufleet.health.fencing import FenceDecision

    fleet.add("gpu-a", "gpu-b")
    fleet.inject("gpu-b", gpu=0, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-b", kubernetes={"max_fenced": "1"})
    assert agent.cycle().fence_action == "fence"
    # gpu-a's agent counted at the same time and placed its fence just after ours (another agent's
    # write, as it lands on the API); `since` says which of the two decided first
    another_agents_fence_lands(kube_api, "gpu-a", since=other_since)

    placed = FenceDecision("fence", "fencing", "RESET", fleet={"fenced": 0, "limit": 1})
    node, decision = agent._kube()._recount(kube_api.get_node("gpu-b"), placed)

    assert decision.action == ("suppressed" if withdrawn else "fence")
    assert bool(fence_of(node)) is not withdrawn
    assert bool(fence_of(kube_api.get_node("gpu-b"))) is not withdrawn
    assert fenced_labelled(kube_api) == ({"gpu-a"} if withdrawn else {"gpu-a", "gpu-b"})
    assert (our_record(kube_api.get_node("gpu-b")) is None) is withdrawn


# The request deadline of the next two tests: the second count waits 3 of them after the fence,
# long enough for a cycle right after the fence to come before it on a loaded machine.
SHORT_DEADLINE = 2.0


@pytest.mark.parametrize("other_since, withdrawn", [(1.0, True), (4102444800.0, False)])
def test_a_fence_is_counted_a_second_time_once_racing_fences_have_landed(fleet, kube_api, other_since,
                                                                          withdrawn):
    """The overshoot the first recount leaves: a fence decided before ours lands after our recount.

    Our first publication at least settle_seconds (3 request deadlines) after the fence counts
    again (one LIST of the fenced nodes) and withdraws ours if the other one decided first: the
    limit holds exactly once the race has settled. A fence decided after ours changes nothing."""
    fleet.add("gpu-a", "gpu-b")
    fleet.inject("gpu-b", gpu=0, settings={"remapped_rows.pending": True})
    agent = fleet.agent("gpu-b", kubernetes={"max_fenced": "1", "request_timeout": SHORT_DEADLINE})
    assert agent.cycle().fence_action == "fence"
    fenced_at = time.time()
    # gpu-a's agent counted at the same time, but its PATCH was slow: it lands now, after our recount
    another_agents_fence_lands(kube_api, "gpu-a", since=other_since)
    assert fenced_labelled(kube_api) == {"gpu-a", "gpu-b"}  # one past the limit, for now

    kube_api.clear_requests()
    assert agent.cycle().fence_action == "hold"  # within the settle time: not counted again yet
    assert not [r for r in kube_api.requests if r.query.get("labelSelector") == FENCED]
    time.sleep(max(0.0, fenced_at + 3 * SHORT_DEADLINE + 0.1 - time.time()))
    assert agent.cycle().fence_action == ("suppressed" if withdrawn else "hold")
    assert [r.query.get("labelSelector") for r in kube_api.requests if r.method == "GET"
            and r.path == "/api/v1/nodes"] == [FENCED]
    assert fenced_labelled(kube_api) == ({"gpu-a"} if withdrawn else {"gpu-a", "gpu-b"})
    assert (our_record(kube_api.get_node("gpu-b")) is None) is withdrawn
    # counted twice: later cycles count no more, and a withheld node stays withheld
    kube_api.clear_requests()
    assert agent.cycle().fence_action == ("suppressed" if withdrawn else "hold")
    assert fenced_labelled(kube_api) == ({"gpu-a"} if withdrawn else {"gpu-a", "gpu-b"})
