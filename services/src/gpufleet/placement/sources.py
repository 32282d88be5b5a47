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
import io
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
NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")


class PlacementInputError(ValueError):
    """Bad placement input: the message is one line naming the file, the place in it and the fault."""


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


def _openb_rows(path: str | Path, what: str, columns: tuple[str, ...]) -> list[tuple[str, dict[str, str]]]:
    """(where, row) of every data row; the header must name `columns` and every row fill them."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise PlacementInputError(f"{path}: cannot read the openb {what} list: {error}") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in columns if name not in header]
        if missing:
            other = {"pod": ("node", NODE_COLUMNS), "node": ("pod", POD_COLUMNS)}[what]
            hint = f" (it is an openb {other[0]} list)" if set(other[1]) <= set(header) else ""
            raise PlacementInputError(
                f"{path}: not an openb {what} list{hint}: no column {', '.join(missing)} in its header"
            )
        rows = []
        for fields in reader:
            if not any(field.strip() for field in fields):
                continue
            where = f"{path} line {reader.line_num}"
            if len(fields) != len(header):
                raise PlacementInputError(f"{where}: {len(fields)} fields, the header has {len(header)}")
            rows.append((where, dict(zip(header, (field.strip() for field in fields), strict=True))))
    except csv.Error as error:
        raise PlacementInputError(f"{path} line {reader.line_num}: not CSV: {error}") from None
    if not rows:
        raise PlacementInputError(f"{path}: no {what}s in it, only a header")
    return rows


def _amount(where: str, row: dict[str, str], column: str) -> int:
    """A cell holding a whole number of at least 0."""
    text = row[column]
    try:
        value = int(text)
    except ValueError:
        raise PlacementInputError(f"{where}: {column} {text!r} is not a whole number") from None
    if value < 0:
        raise PlacementInputError(f"{where}: {column} is {value}; it cannot be negative")
    return value


def load_openb_nodes(path: str | Path) -> Cluster:
    nodes = []
    names: set[str] = set()
    for where, row in _openb_rows(path, "node", NODE_COLUMNS):
        name = row["sn"]
        if not name or name in names:
            raise PlacementInputError(f"{where}: node name {name!r} is {'a duplicate' if name else 'empty'}")
        names.add(name)
        count = _amount(where, row, "gpu")
        nodes.append(
            Node(
                name=name,
                cpu_milli=_amount(where, row, "cpu_milli"),
                memory_mib=_amount(where, row, "memory_mib"),
                gpus=[Gpu(index=i, model=row.get("model", ""), health="pass") for i in range(count)],
                labels={"gpufleet.io/health": "pass"},
            )
        )
    return Cluster(nodes=nodes)


def load_openb_pods(path: str | Path) -> list[Request]:
    requests = []
    for sequence, (where, row) in enumerate(_openb_rows(path, "pod", POD_COLUMNS)):
        num_gpu = _amount(where, row, "num_gpu")
        gpu_milli = _amount(where, row, "gpu_milli")
        if gpu_milli and not num_gpu:
            raise PlacementInputError(f"{where}: gpu_milli {gpu_milli} without a GPU (num_gpu 0)")
        spec = row.get("gpu_spec") or ""
        request = checked_request(
            where,
            name=row["name"],
            cpu_milli=_amount(where, row, "cpu_milli"),
            memory_mib=_amount(where, row, "memory_mib"),
            num_gpu=num_gpu,
            gpu_milli=gpu_milli,
            gpu_models=tuple(sorted(m for m in spec.split("|") if m)),
            priority=QOS_PRIORITY.get(row.get("qos") or "", 0),
            sequence=sequence,
        )
        requests.append(request)
    return requests


def checked_request(where: str, **fields: Any) -> Request:
    """A Request, or a PlacementInputError saying where the bad one came from."""
    try:
        request = Request(**fields)
    except (TypeError, ValueError) as error:
        raise PlacementInputError(f"{where}: {error}") from None
    check_not_empty(where, request)
    return request


def check_not_empty(where: str, request: Request) -> None:
    if not (request.cpu_milli or request.memory_mib or request.num_gpu):
        raise PlacementInputError(f"{where}: {request.name} asks for nothing (no CPU, memory or GPU)")


def check_requests_fit(requests: list[Request], cluster: Cluster, where: str) -> None:
    """Refuse a request larger than the largest node in each resource: it could never be placed."""
    if not cluster.nodes:
        raise PlacementInputError(f"{where}: no nodes")
    largest = {
        "GPUs": max(len(node.gpus) for node in cluster.nodes),
        "milli-CPU": max(node.cpu_milli for node in cluster.nodes),
        "MiB of memory": max(node.memory_mib for node in cluster.nodes),
    }
    for request in requests:
        for unit, asked in (
            ("GPUs", request.num_gpu),
            ("milli-CPU", request.cpu_milli),
            ("MiB of memory", request.memory_mib),
        ):
            if asked > largest[unit]:
                raise PlacementInputError(
                    f"{request.name} asks for {asked} {unit}; the largest node of {where} has {largest[unit]}"
                )


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
    if count < 0:
        raise ValueError(f"gpus is {count}; it cannot be negative")
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
    node = Node(
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
    for amount in ("cpu_milli", "memory_mib"):
        if getattr(node, amount) < 0:
            raise ValueError(f"{amount} is {getattr(node, amount)}; it cannot be negative")
    return node


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


def load_yaml_documents(path: str | Path) -> list[Any]:
    """Every document of a YAML file, or a PlacementInputError naming the file and line."""
    try:
        return list(yaml.safe_load_all(Path(path).read_text()))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise PlacementInputError(f"{path}{at}: not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PlacementInputError(f"{path}: cannot read it: {error}") from None


def load_cluster_yaml(path: str | Path) -> Cluster:
    documents = [d for d in load_yaml_documents(path) if d is not None]
    data = documents[0] if len(documents) == 1 else None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not data["nodes"]:
        raise PlacementInputError(f"{path}: not a cluster file: expected one mapping with a list of nodes")
    return cluster_from_dict(data, where=str(path))


def cluster_from_dict(data: dict[str, Any], where: str = "cluster") -> Cluster:
    nodes = []
    for number, spec in enumerate(data.get("nodes") or [], start=1):
        try:
            if not isinstance(spec, dict):
                raise ValueError("not a mapping")
            nodes.append(node_from_dict(spec))
        except (KeyError, TypeError, ValueError) as error:
            detail = f"no {error}" if isinstance(error, KeyError) else str(error)
            raise PlacementInputError(f"{where} node {number}: {detail}") from None
    cluster = Cluster(nodes=sorted(nodes, key=lambda n: n.name))
    for sequence, workload in enumerate(data.get("workloads") or []):
        try:
            _add_workload(cluster, workload, sequence)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            detail = f"no {error}" if isinstance(error, KeyError) else str(error)
            raise PlacementInputError(f"{where} workload {sequence + 1}: {detail}") from None
    return cluster


def _add_workload(cluster: Cluster, workload: dict[str, Any], sequence: int) -> None:
    """A workload already running: its node's resources and GPUs count as taken."""
    request = request_from_dict(workload, sequence)
    node = cluster.node(str(workload["node"]))
    node.cpu_allocated += request.cpu_milli
    node.memory_allocated += request.memory_mib
    by_index = {gpu.index: gpu for gpu in node.gpus}
    for index in workload.get("gpus") if isinstance(workload.get("gpus"), list) else []:
        by_index[int(index)].milli_allocated += request.gpu_milli or MILLI_PER_GPU
    node.workloads.append(request.name)
    cluster.workload_requests.append(request)


def load_cluster(path: str | Path) -> Cluster:
    """A cluster from a YAML file or an openb node CSV (by extension)."""
    return load_openb_nodes(path) if str(path).endswith(".csv") else load_cluster_yaml(path)
