"""Small hand-made clusters for the placement unit tests."""

from __future__ import annotations

from gpufleet.placement.model import Cluster, Gpu, Node


def gpus(free: list[int], model: str = "A100", peers: dict[int, tuple[int, ...]] | None = None) -> list[Gpu]:
    """GPUs with the given free milli each (allocated = 1000 - free)."""
    peers = peers or {}
    return [
        Gpu(index=i, model=model, milli_allocated=1000 - f, health="pass", nvlink_peers=peers.get(i, ()))
        for i, f in enumerate(free)
    ]


def pairs(count: int) -> dict[int, tuple[int, ...]]:
    return {i: (i ^ 1,) for i in range(count)}


def all_linked(count: int) -> dict[int, tuple[int, ...]]:
    return {i: tuple(j for j in range(count) if j != i) for i in range(count)}


def node(name: str, cpu: int = 64000, cpu_used: int = 0, free: list[int] | None = None, **kwargs) -> Node:
    model = kwargs.pop("model", "A100")
    peers = kwargs.pop("peers", None)
    return Node(
        name=name,
        cpu_milli=cpu,
        memory_mib=kwargs.pop("memory_mib", 262144),
        gpus=gpus(free if free is not None else [1000] * 8, model, peers),
        cpu_allocated=cpu_used,
        labels=kwargs.pop("labels", {"gpufleet.io/health": "pass"}),
        **kwargs,
    )


def cluster(*nodes: Node) -> Cluster:
    return Cluster(nodes=list(nodes))
