"""GPU assignment inside a node (default rule and NVLink cases), and the engine's composition."""

from __future__ import annotations

import numpy as np
from gpufleet.placement.assign import best_connected_set, default_gpus, nvlink_links, topology_gpus
from gpufleet.placement.engine import Placer
from gpufleet.placement.fleet import Fleet
from gpufleet.placement.model import Gpu, Node, Request
from placement_helpers import all_linked, cluster, node, pairs


def test_default_whole_gpus_take_the_lowest_free_indices():
    assert default_gpus(np.array([0, 1000, 500, 1000, 1000]), Request(name="r", num_gpu=2)) == (1, 3)
    assert default_gpus(np.array([0, 1000]), Request(name="r", num_gpu=2)) == ()


def test_default_share_takes_the_tightest_fitting_gpu():
    # 300 fits GPUs 0 (1000), 2 (400) and 3 (400): the least left wins, then the lowest index.
    assert default_gpus(np.array([1000, 200, 400, 400]), Request(name="s", num_gpu=1, gpu_milli=300)) == (2,)


def test_nvlink_links_are_symmetric_even_if_reported_one_way():
    one_way = Node(name="n", cpu_milli=1, memory_mib=1, gpus=[Gpu(0, nvlink_peers=(1,)), Gpu(1), Gpu(2)])
    assert nvlink_links(one_way) == {0: {1}, 1: {0}, 2: set()}


def test_best_connected_set_on_two_nvlink_islands():
    # GPUs 0-3 fully linked, 4-7 fully linked, no links between the islands.
    islands = {g: {p for p in range(8) if p != g and p // 4 == g // 4} for g in range(8)}
    # 1 is busy: the 4-GPU set must be the intact island 4..7.
    assert best_connected_set([0, 2, 3, 4, 5, 6, 7], 4, islands) == (4, 5, 6, 7)
    # 3 GPUs: both islands offer a triangle; the lowest indices win.
    assert best_connected_set([0, 2, 3, 4, 5, 6, 7], 3, islands) == (0, 2, 3)


def test_topology_single_gpu_keeps_pairs_whole():
    n = node("n", free=[1000, 1000, 0, 1000], peers=pairs(4))
    # GPU 3's peer (2) is busy: using 3 breaks no free pair.
    assert topology_gpus(n, np.array([1000, 1000, 0, 1000]), Request(name="one", num_gpu=1)) == (3,)


def test_topology_is_the_tie_break_and_picks_the_gpus():
    fleet = Fleet(
        cluster(
            node("pairs", free=[1000] * 8, peers=pairs(8)),
            node("mesh", free=[1000] * 8, peers=all_linked(8)),
        )
    )
    four = Request(name="four", num_gpu=4)
    # binpack scores both 6 (equal); topology breaks the tie towards the NVLink mesh.
    for seed in range(5):
        decision = Placer(fleet, ["binpack", "topology"], seed=seed).decide(four)
        assert decision.node == "mesh"
        assert decision.gpus == (0, 1, 2, 3)
        assert decision.runner_up["node"] == "pairs"


def test_decisions_are_deterministic_for_a_seed_and_vary_across_seeds():
    many = cluster(*[node(f"n{i:02d}") for i in range(30)])
    chosen = {
        seed: Placer(Fleet(many), "best_fit", seed=seed).decide(Request(name="r", num_gpu=1)).node
        for seed in range(8)
    }
    again = {
        seed: Placer(Fleet(many), "best_fit", seed=seed).decide(Request(name="r", num_gpu=1)).node
        for seed in range(8)
    }
    assert chosen == again
    assert len(set(chosen.values())) > 1


def test_place_all_goes_in_priority_order_and_counts_each_decision():
    # One node with 2 GPUs: the two high-priority requests get them, the low one fails.
    placer = Placer(cluster(node("only", free=[1000, 1000])), "priority")
    requests = [
        Request(name="low", num_gpu=1, priority=0, sequence=0),
        Request(name="high-a", num_gpu=1, priority=9, sequence=1),
        Request(name="high-b", num_gpu=1, priority=9, sequence=2),
    ]
    decisions = placer.place_all(requests)
    assert [(d.request.name, d.node, d.gpus) for d in decisions] == [
        ("high-a", "only", (0,)),
        ("high-b", "only", (1,)),
        ("low", None, ()),
    ]


def test_commit_updates_the_snapshot_node():
    fleet_cluster = cluster(node("n", free=[1000, 1000]))
    placer = Placer(fleet_cluster, "binpack")
    placer.place(Request(name="share", cpu_milli=1000, num_gpu=1, gpu_milli=250))
    gpu = fleet_cluster.nodes[0].gpus[0]
    assert (gpu.milli_allocated, fleet_cluster.nodes[0].cpu_allocated) == (250, 1000)
    assert fleet_cluster.nodes[0].workloads == ["share"]
