"""Filters: health, cordon, fencing taints, taints/tolerations, selectors, model, resources."""

from __future__ import annotations

from gpufleet.placement.engine import Placer
from gpufleet.placement.filters import feasible, taints_tolerated
from gpufleet.placement.fleet import Fleet
from gpufleet.placement.model import Request, Taint, Toleration
from placement_helpers import cluster, node


def names(fleet: Fleet, request: Request) -> list[str]:
    idx, _ = feasible(fleet, request)
    return [fleet.names[i] for i in idx]


def removed(fleet: Fleet, request: Request) -> dict[str, int]:
    _, report = feasible(fleet, request)
    return {entry["filter"]: entry["removed"] for entry in report}


def test_health_removes_failed_cordoned_and_fenced_nodes():
    fleet = Fleet(
        cluster(
            node("ok"),
            node("warn", labels={"gpufleet.io/health": "warn"}),
            node("failed", labels={"gpufleet.io/health": "fail"}),
            node("cordoned", unschedulable=True),
            node("quarantined", taints=[Taint("gpufleet.io/quarantine", "", "NoExecute")]),
            node("unhealthy", taints=[Taint("gpufleet.io/unhealthy", "", "NoSchedule")]),
        )
    )
    # Tolerating everything does not get a workload onto a fenced node.
    anything = Request(name="r", num_gpu=1, tolerations=[Toleration(key=None, operator="Exists")])
    assert names(fleet, anything) == ["ok", "warn"]
    assert removed(fleet, anything)["health"] == 4


def test_taints_need_a_matching_toleration():
    maintenance = Taint("gpufleet.io/maintenance", "sweep", "NoSchedule")
    fleet = Fleet(
        cluster(
            node("plain"),
            node("maint", taints=[maintenance]),
            node("soft", taints=[Taint("dedicated", "x", "PreferNoSchedule")]),
        )
    )
    assert names(fleet, Request(name="r")) == ["plain", "soft"]
    assert removed(fleet, Request(name="r"))["taints"] == 1
    exists = Request(name="e", tolerations=[Toleration(key="gpufleet.io/maintenance", operator="Exists")])
    assert names(fleet, exists) == ["plain", "maint", "soft"]
    wrong_value = Request(name="w", tolerations=[Toleration(key="gpufleet.io/maintenance", value="other")])
    assert names(fleet, wrong_value) == ["plain", "soft"]
    wrong_effect = Toleration(key="gpufleet.io/maintenance", value="sweep", effect="NoExecute")
    assert not taints_tolerated(fleet.nodes[1], Request(name="x", tolerations=[wrong_effect]))
    right = Toleration(key="gpufleet.io/maintenance", value="sweep", effect="NoSchedule")
    assert taints_tolerated(fleet.nodes[1], Request(name="x", tolerations=[right]))


def test_node_selector_and_gpu_model():
    fleet = Fleet(
        cluster(
            node("a100", model="A100", labels={"gpufleet.io/health": "pass", "pool": "train"}),
            node("h100", model="H100", labels={"gpufleet.io/health": "pass", "pool": "train"}),
            node("h100-infer", model="H100", labels={"gpufleet.io/health": "pass", "pool": "infer"}),
        )
    )
    request = Request(name="r", num_gpu=1, gpu_models=("H100",), node_selector={"pool": "train"})
    assert names(fleet, request) == ["h100"]
    assert removed(fleet, request) == {
        "health": 0,
        "taints": 0,
        "node_selector": 1,
        "gpu_model": 1,
        "resources": 0,
    }
    # A CPU-only request ignores the GPU model constraint.
    assert names(fleet, Request(name="cpu", gpu_models=("V100",))) == ["a100", "h100", "h100-infer"]


def test_resources_whole_gpus_and_shares():
    fleet = Fleet(
        cluster(
            node("two-free", free=[1000, 1000, 0, 0]),
            node("shared", free=[600, 600, 600, 600]),
            node("small-cpu", cpu=4000, free=[1000] * 4),
        )
    )
    assert names(fleet, Request(name="w", cpu_milli=8000, num_gpu=2)) == ["two-free"]
    assert names(fleet, Request(name="w", cpu_milli=8000, num_gpu=3)) == []
    # a share fits on any GPU with at least that much left
    assert names(fleet, Request(name="s", num_gpu=1, gpu_milli=600)) == ["two-free", "shared", "small-cpu"]
    assert names(fleet, Request(name="s", num_gpu=1, gpu_milli=700)) == ["two-free", "small-cpu"]
    assert names(fleet, Request(name="m", memory_mib=10**9)) == []


def test_nothing_fits_says_which_filter_removed_what():
    fleet = Fleet(
        cluster(
            node("failed", labels={"gpufleet.io/health": "fail"}),
            node("full", free=[0] * 8),
            node("tainted", taints=[Taint("dedicated", "x", "NoSchedule")]),
        )
    )
    decision = Placer(fleet, "best_fit").decide(Request(name="job", num_gpu=1))
    assert not decision.placed
    assert decision.why_not() == "no node fits job: health removed 1, taints removed 1, resources removed 1"


def test_failed_gpu_is_never_offered():
    sick = node("n", free=[1000, 1000])
    sick.gpus[0].health = "fail"
    fleet = Fleet(cluster(sick))
    assert names(fleet, Request(name="two", num_gpu=2)) == []
    assert Placer(fleet, "best_fit").decide(Request(name="one", num_gpu=1)).gpus == (1,)
