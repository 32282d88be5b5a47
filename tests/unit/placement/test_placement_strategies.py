"""Every strategy's score on small cases computed by hand (formulas in strategies.py)."""

from __future__ import annotations

import numpy as np
import pytest
from gpufleet.placement.engine import Placer
from gpufleet.placement.fleet import Fleet
from gpufleet.placement.fragmentation import TypicalTasks
from gpufleet.placement.model import Request
from gpufleet.placement.strategies import (
    BestFit,
    Binpack,
    FragmentationGradientDescent,
    LeastUtilized,
    Priority,
    RoundRobin,
    Topology,
    make,
)
from placement_helpers import all_linked, cluster, node, pairs

ONE_GPU = Request(name="one", cpu_milli=8000, num_gpu=1)


@pytest.fixture
def two_nodes() -> Fleet:
    # a: 32 cores, 4 free GPUs. b: 64 cores (48 used), 8 GPUs of which 4 used.
    return Fleet(
        cluster(
            node("a", cpu=32000, free=[1000] * 4),
            node("b", cpu=64000, cpu_used=48000, free=[0, 0, 0, 0, 1000, 1000, 1000, 1000]),
        )
    )


def scores(strategy, fleet, request=ONE_GPU):
    return list(strategy.scores(fleet, np.arange(fleet.size), request))


def test_least_utilized_prefers_the_emptier_node(two_nodes):
    # a: ½(24000/32000 + 3000/4000) = 0.75 → 75; b: ½(8000/64000 + 3000/8000) = 0.25 → 25
    assert scores(LeastUtilized(), two_nodes) == [75, 25]


def test_binpack_prefers_the_fuller_node(two_nodes):
    # a: ½(8000/32000 + 1000/4000) = 0.25 → 25; b: ½(56000/64000 + 5000/8000) = 0.75 → 75
    assert scores(Binpack(), two_nodes) == [25, 75]


def test_best_fit_raw_score_and_normalisation(two_nodes):
    idx = np.arange(2)
    # a: 1 − ½(24000/128000 + 3000/8000) = 0.71875 → 71; b: 1 − ½(8000/128000 + 3000/8000) = 0.78125 → 78
    assert list(BestFit().compute(two_nodes, idx, ONE_GPU)) == [71, 78]
    # min-max over the feasible nodes: 71 → 0, 78 → 100
    assert scores(BestFit(), two_nodes) == [0, 100]


def test_best_fit_equal_scores_normalise_to_zero():
    twins = Fleet(cluster(node("a"), node("b")))
    assert scores(BestFit(), twins) == [0, 0]
    assert list(BestFit().scores(twins, np.array([1]), ONE_GPU)) == [0]


def test_round_robin_cursor_persists_across_decisions():
    fleet_cluster = cluster(node("n0"), node("n1"), node("n2"))
    placer = Placer(fleet_cluster, "round_robin", seed=3)
    chosen = [placer.place(Request(name=f"r{i}", cpu_milli=1000)).node for i in range(4)]
    assert chosen == ["n0", "n1", "n2", "n0"]
    assert placer.strategy.cursor == 1


def test_round_robin_skips_nodes_that_do_not_fit():
    fleet = Fleet(cluster(node("n0"), node("n1", free=[0] * 8), node("n2")))
    strategy = RoundRobin(cursor=1)
    idx = np.array([0, 2])  # n1 filtered out
    assert list(strategy.scores(fleet, idx, ONE_GPU)) == [0, 100]


def test_priority_orders_by_priority_then_fifo():
    requests = [
        Request(name="low", priority=1, sequence=0),
        Request(name="high-first", priority=5, sequence=1),
        Request(name="high-second", priority=5, sequence=2),
        Request(name="lowest", priority=0, sequence=3),
    ]
    assert [r.name for r in Priority().order(requests)] == ["high-first", "high-second", "low", "lowest"]


def test_priority_aging_lifts_a_long_waiting_request():
    old = Request(name="old", priority=0, sequence=0, submitted_at=1.0)
    new = Request(name="new", priority=5, sequence=1, submitted_at=99.0)
    assert [r.name for r in Priority(aging_per_second=0.1).order([new, old], now=100.0)] == ["old", "new"]
    assert [r.name for r in Priority().order([new, old], now=100.0)] == ["new", "old"]


def test_priority_scores_nodes_with_its_node_strategy(two_nodes):
    assert scores(Priority(node_strategy=Binpack()), two_nodes) == [25, 75]
    assert make("priority", node_strategy="least_utilized").node_strategy.name == "least_utilized"


def test_fgd_scores_by_fragment_change_and_picks_the_gpu():
    # Typical task: one GPU share of 500 milli, no CPU (probability 1).
    typical = TypicalTasks.from_requests([Request(name="t", num_gpu=1, gpu_milli=500)])
    # x: GPUs free [1000, 700], fragment 0 (both fit a 500 share).
    #    300 on GPU 0 → [700, 700] → fragment 0, Δ 0 → 100·σ(0) = 50
    #    300 on GPU 1 → [1000, 400] → fragment 400 → 100·σ(−0.4) = 40.13 → 40
    # y: one GPU with 300 free: fragment 300; 300 on it → 0, Δ −300 → 100·σ(0.3) = 57.4 → 57
    fleet = Fleet(cluster(node("x", free=[1000, 700]), node("y", free=[300])))
    share = Request(name="s", num_gpu=1, gpu_milli=300)
    fgd = FragmentationGradientDescent(typical)
    assert scores(fgd, fleet, share) == [50, 57]
    assert fgd.assign(fleet, 0, share) == (0,)
    decision = Placer(fleet, [fgd]).place(share)
    assert (decision.node, decision.gpus, decision.score) == ("y", (0,), 57)


def test_fgd_whole_gpu_request_uses_lowest_free_gpus():
    # Typical: whole single GPU (p=1). Node [0, 1000, 1000]: fragment 0 (every free GPU fits).
    # Taking GPU 1 → [0, 0, 1000]: fragment still 0 → score 50.
    typical = TypicalTasks.from_requests([Request(name="t", num_gpu=1)])
    fleet = Fleet(cluster(node("x", free=[0, 1000, 1000])))
    fgd = FragmentationGradientDescent(typical)
    assert scores(fgd, fleet, Request(name="w", num_gpu=1)) == [50]
    assert fgd.assign(fleet, 0, Request(name="w", num_gpu=1)) == (1,)


def test_topology_multi_gpu_prefers_the_best_linked_set():
    fleet = Fleet(
        cluster(
            node("pairs", free=[0] + [1000] * 7, peers=pairs(8)),
            node("mesh", free=[1000] * 8, peers=all_linked(8)),
        )
    )
    four = Request(name="four", num_gpu=4)
    # pairs: best 4 of GPUs 1..7 is (2,3,4,5) with 2 of 6 links → 33; mesh: 6 of 6 → 100
    assert scores(Topology(), fleet, four) == [33, 100]
    two = Request(name="two", num_gpu=2)
    assert scores(Topology(), fleet, two) == [100, 100]
    assert Topology().assign(fleet, 0, two) == (2, 3)


def test_topology_single_gpu_prefers_the_worst_connected_gpu():
    fleet = Fleet(
        cluster(
            node("broken-pair", free=[0] + [1000] * 7, peers=pairs(8)),
            node("whole-pairs", free=[1000] * 8, peers=pairs(8)),
        )
    )
    # broken-pair: GPU 1's peer (0) is busy → 0 free peers → 100 · (1 − 0/7) = 100
    # whole-pairs: every GPU has one free peer → 100 · (1 − 1/7) = 85
    assert scores(Topology(), fleet, ONE_GPU) == [100, 85]
    assert Topology().assign(fleet, 0, ONE_GPU) == (1,)


def test_score_cache_recomputes_only_changed_nodes(two_nodes):
    strategy = Binpack()
    idx = np.arange(2)
    assert list(strategy.scores(two_nodes, idx, ONE_GPU)) == [25, 75]
    two_nodes.commit(0, Request(name="fill", cpu_milli=8000, num_gpu=1), (0,))
    # a after the commit: used 16000/32000 and 2000/4000 → ½(0.5 + 0.5) = 0.5 → 50
    assert list(strategy.scores(two_nodes, idx, ONE_GPU)) == [50, 75]


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown strategy"):
        make("first_fit")


def test_balance_penalises_gpus_stranded_by_cpu():
    fleet = Fleet(cluster(node("roomy"), node("cpu-starved", cpu_used=48000)))
    # roomy: cpu' 56000/64000 = 0.875, memory' 1.0, gpu' 7000/8000 = 0.875 → stranded 0 → 100
    # cpu-starved: cpu' 8000/64000 = 0.125, gpu' 0.875 → stranded 0.75 → 25
    assert scores(make("balance"), fleet) == [100, 25]


def test_fgd_mem_counts_gpus_behind_exhausted_memory_as_fragment():
    typical = TypicalTasks.from_requests(
        [
            Request(name="a", num_gpu=1, gpu_milli=500, memory_mib=1000),
            Request(name="b", num_gpu=1, gpu_milli=500, memory_mib=3000),
        ],
        with_memory=True,
    )
    assert list(typical.memory_mib) == [2000]  # the median memory of the shape
    fleet = Fleet(cluster(node("short", free=[1000], memory_mib=1000), node("plenty", free=[1000])))
    fgd_mem = make("fgd_mem", typical=typical)
    idx = np.arange(2)
    fgd_mem.scores(fleet, idx, ONE_GPU)  # initialises the per-node fragment
    # short: 1000 MiB < 2000 → the typical task cannot be placed → all 1000 idle milli are fragment
    assert list(fgd_mem.node_fragment(fleet, idx)) == [1000, 0]
    with pytest.raises(ValueError, match="with_memory"):
        make("fgd_mem", typical=TypicalTasks.from_requests([ONE_GPU]))


def _models_fleet():
    return Fleet(cluster(node("a1"), node("a2"), node("b1", model="T4")))


def test_model_reserve_keeps_the_constrained_model_for_its_tasks():
    from gpufleet.placement.strategies import ModelReserve

    fleet = _models_fleet()
    idx = np.arange(fleet.size)
    mix = [Request(name="t4-only", num_gpu=1, gpu_models=("T4",)), Request(name="any", num_gpu=1)]
    reserve = ModelReserve(typical=mix)
    # A task that takes any model is steered away from the T4 node the constrained task needs.
    assert list(reserve.scores(fleet, idx, ONE_GPU)) == [100, 100, 0]
    # A task that asks for a model, and a CPU-only task, are not steered.
    assert set(reserve.scores(fleet, idx, Request(num_gpu=1, gpu_models=("T4",)))) == {100}
    assert set(reserve.scores(fleet, idx, Request(cpu_milli=1000))) == {100}


def test_model_reserve_changes_nothing_without_constrained_tasks():
    from gpufleet.placement.strategies import ModelReserve

    fleet = _models_fleet()
    reserve = ModelReserve(typical=[Request(name="any", num_gpu=2)])
    assert set(reserve.scores(fleet, np.arange(fleet.size), ONE_GPU)) == {100}
    chained = Placer(fleet, ["best_fit", ModelReserve(typical=[])], seed=3)
    plain = Placer(_models_fleet(), ["best_fit"], seed=3)
    for _ in range(6):
        assert chained.place(ONE_GPU).node == plain.place(ONE_GPU).node
