"""Snapshots and requests from files: the openb CSVs and a small YAML format.

YAML cluster file (every key but `name` optional):

    nodes:
      - name: gpu-a
        cpu: 64                 # cores, or "64000m"
        memory: 512Gi           # a Kubernetes quantity, or memory_mib: 524288
        gpu_model: A100
        gpus: 8                 # a count, or a list of {index, model, memory_mib,
                                #   health, nvlink_peers, milli_allocated, uuid}
        nvlink: all             # all | pairs | none (for a GPU count)
        labels: {gpufleet.io/health: pass}
        taints: [{key: gpufleet.io/maintenance, effect: NoSchedule}]
        unschedulable: false
    workloads:                  # already running (optional)
      - {name: a, node: gpu-a, cpu: 4, memory: 16Gi, gpus: [0, 1]}
      - {name: b, node: gpu-a, gpus: [2], gpu_milli: 500}
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from gpufleet.placement.model import (
    MILLI_PER_GPU,
    Cluster,
    Gpu,
    Node,
    Request,
    Taint,
    Toleration,
)

QOS_PRIORITY = {"LS": 2, "Guaranteed": 2, "Burstable": 1, "BE": 0}


def parse_cpu_milli(value: Any) -> int:
    if value is None or value == "":
        return 0
    text = str(value).strip()
    if text.endswith("m"):
        return int(float(text[:-1]))
    return int(round(float(text) * 1000))


_MEMORY_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
}


def parse_memory_mib(value: Any) -> int:
    """A Kubernetes memory quantity (or bytes) in MiB, rounded up."""
    if value is None or value == "":
        return 0
    text = str(value).strip()
    for suffix in sorted(_MEMORY_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            number = float(text[: -len(suffix)]) * _MEMORY_UNITS[suffix]
            break
    else:
        number = float(text)
    return -(-int(number) // 2**20)


# -- openb ----------------------------------------------------------------------------------


def load_openb_nodes(path: str | Path) -> Cluster:
    nodes = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            gpus = [Gpu(index=i, model=row.get("model", ""), health="pass") for i in range(int(row["gpu"]))]
            nodes.append(
                Node(
                    name=row["sn"],
                    cpu_milli=int(row["cpu_milli"]),
                    memory_mib=int(row["memory_mib"]),
                    gpus=gpus,
                    labels={"gpufleet.io/health": "pass"},
                )
            )
    return Cluster(nodes=nodes)


def load_openb_pods(path: str | Path) -> list[Request]:
    requests = []
    with open(path, newline="") as handle:
        for sequence, row in enumerate(csv.DictReader(handle)):
            num_gpu = int(row.get("num_gpu") or 0)
            spec = (row.get("gpu_spec") or "").strip()
            requests.append(
                Request(
                    name=row["name"],
                    cpu_milli=int(row.get("cpu_milli") or 0),
                    memory_mib=int(row.get("memory_mib") or 0),
                    num_gpu=num_gpu,
                    gpu_milli=int(row.get("gpu_milli") or 0) if num_gpu else 0,
                    gpu_models=tuple(sorted(m for m in spec.split("|") if m)),
                    priority=QOS_PRIORITY.get(row.get("qos") or "", 0),
                    sequence=sequence,
                )
            )
    return requests


# -- YAML -----------------------------------------------------------------------------------


def _gpus(spec: dict[str, Any]) -> list[Gpu]:
    gpus = spec.get("gpus", 0)
    model = str(spec.get("gpu_model", ""))
    if isinstance(gpus, list):
        return [
            Gpu(
                index=int(g.get("index", i)),
                model=str(g.get("model", model)),
                memory_mib=int(g.get("memory_mib", 0)),
                milli_allocated=int(g.get("milli_allocated", 0)),
                health=str(g.get("health", "unknown")),
                nvlink_peers=tuple(int(p) for p in g.get("nvlink_peers", ())),
                uuid=str(g.get("uuid", "")),
            )
            for i, g in enumerate(gpus)
        ]
    count = int(gpus)
    nvlink = spec.get("nvlink", "none")
    peers: dict[int, tuple[int, ...]] = {}
    for i in range(count):
        if nvlink == "all":
            peers[i] = tuple(j for j in range(count) if j != i)
        elif nvlink == "pairs":
            peers[i] = (i ^ 1,) if (i ^ 1) < count else ()
        else:
            peers[i] = ()
    return [Gpu(index=i, model=model, health="pass", nvlink_peers=peers[i]) for i in range(count)]


def node_from_dict(spec: dict[str, Any]) -> Node:
    memory = spec.get("memory_mib")
    return Node(
        name=str(spec["name"]),
        cpu_milli=parse_cpu_milli(spec.get("cpu", 0)) if "cpu_milli" not in spec else int(spec["cpu_milli"]),
        memory_mib=int(memory) if memory is not None else parse_memory_mib(spec.get("memory", 0)),
        gpus=_gpus(spec),
        labels={str(k): str(v) for k, v in (spec.get("labels") or {}).items()},
        taints=[
            Taint(t["key"], str(t.get("value", "")), t.get("effect", "NoSchedule"))
            for t in spec.get("taints") or []
        ],
        unschedulable=bool(spec.get("unschedulable", False)),
    )


def request_from_dict(spec: dict[str, Any], sequence: int = 0) -> Request:
    """A plain resource request: {name, cpu, memory, gpus, gpu_milli, gpu_models, priority, ...}."""
    models = spec.get("gpu_models") or spec.get("gpu_model") or ()
    if isinstance(models, str):
        models = tuple(m for m in models.split("|") if m)
    raw_gpus = spec.get("gpus", spec.get("num_gpu", 0))
    gpus = len(raw_gpus) if isinstance(raw_gpus, list) else int(raw_gpus or 0)
    milli = int(spec.get("gpu_milli", 0) or 0)
    if milli and not gpus:
        gpus = 1
    return Request(
        name=str(spec.get("name", f"request-{sequence}")),
        cpu_milli=int(spec["cpu_milli"]) if "cpu_milli" in spec else parse_cpu_milli(spec.get("cpu")),
        memory_mib=int(spec["memory_mib"]) if "memory_mib" in spec else parse_memory_mib(spec.get("memory")),
        num_gpu=gpus,
        gpu_milli=milli or (MILLI_PER_GPU if gpus else 0),
        gpu_models=tuple(sorted(models)),
        priority=int(spec.get("priority", 0) or 0),
        node_selector={str(k): str(v) for k, v in (spec.get("node_selector") or {}).items()},
        tolerations=[toleration_from_dict(t) for t in spec.get("tolerations") or []],
        sequence=sequence,
    )


def toleration_from_dict(spec: dict[str, Any]) -> Toleration:
    return Toleration(
        key=spec.get("key"),
        operator=spec.get("operator", "Equal"),
        value=str(spec.get("value", "") or ""),
        effect=spec.get("effect"),
    )


def load_cluster_yaml(path: str | Path) -> Cluster:
    data = yaml.safe_load(Path(path).read_text()) or {}
    return cluster_from_dict(data)


def cluster_from_dict(data: dict[str, Any]) -> Cluster:
    cluster = Cluster(
        nodes=sorted((node_from_dict(n) for n in data.get("nodes") or []), key=lambda n: n.name)
    )
    for sequence, workload in enumerate(data.get("workloads") or []):
        request = request_from_dict(workload, sequence)
        node = cluster.node(str(workload["node"]))
        node.cpu_allocated += request.cpu_milli
        node.memory_allocated += request.memory_mib
        by_index = {gpu.index: gpu for gpu in node.gpus}
        for index in workload.get("gpus") if isinstance(workload.get("gpus"), list) else []:
            by_index[int(index)].milli_allocated += request.gpu_milli or MILLI_PER_GPU
        node.workloads.append(request.name)
        cluster.workload_requests.append(request)
    return cluster


def load_cluster(path: str | Path) -> Cluster:
    """A cluster from a YAML file or an openb node CSV (by extension)."""
    return load_openb_nodes(path) if str(path).endswith(".csv") else load_cluster_yaml(path)
