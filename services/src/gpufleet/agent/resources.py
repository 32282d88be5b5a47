"""Resource slots (cpu, mem, cuda.device), their allocation map, and the port pool.

Capacity is what the host has minus what `[resource]` reserves. Every allocation
is keyed by kernel id, so releasing is idempotent and a failed creation frees
exactly what it took.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.agent.config import ResourceConfig
from gpufleet.gpu import BackendUnavailable, open_backend

log = logging.getLogger(__name__)

SLOT_TYPES = {"cpu": "count", "mem": "bytes", "cuda.device": "count"}


class ResourceError(Exception):
    """A request cannot be satisfied (over-commit, bad request, pool exhausted)."""


@dataclass(frozen=True)
class GpuDevice:
    index: int
    model: str = "unknown"
    memory: int = 0
    uuid: str = ""
    minor: int | None = None  # /dev/nvidia<minor>; None: assumed equal to the index

    @property
    def device_minor(self) -> int:
        return self.index if self.minor is None else self.minor


@dataclass(frozen=True)
class Allocation:
    kernel_id: str
    cpu: float
    mem: int
    gpus: tuple[int, ...] = ()
    gpu_minors: tuple[int, ...] = ()  # the device nodes of `gpus`, in the same order

    def slots(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "mem": self.mem, "cuda.device": len(self.gpus)}

    def to_dict(self) -> dict[str, Any]:
        return {"kernel_id": self.kernel_id, "cpu": self.cpu, "mem": self.mem, "gpus": list(self.gpus),
                "gpu_minors": list(self.gpu_minors)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Allocation:
        gpus = tuple(data.get("gpus", ()))
        # A record written before minors were kept assumed minor = index.
        return cls(data["kernel_id"], float(data["cpu"]), int(data["mem"]), gpus,
                   tuple(data.get("gpu_minors", gpus)))


def host_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# The health agent's state file (its documented JSON format, read here as data: the agent
# never imports health/ code). A GPU its last report holds at RESET or worse is not offered.
HEALTH_STATE_FILE = "health.json"
HEALTH_STATE_SCHEMA = "gpufleet.io/health-agent-state/v1"
UNHEALTHY_SEVERITIES = frozenset({"RESET", "REBOOT", "ISOLATE"})


def unhealthy_gpu_uuids(state_file: Path) -> set[str]:
    """UUIDs of the GPUs the health agent's last report finds at RESET or worse; none when
    the file is missing, unreadable or of another schema (no monitor is no verdict)."""
    try:
        data = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(data, dict) or data.get("schema") != HEALTH_STATE_SCHEMA:
        return set()
    report = data.get("report")
    findings = report.get("findings") if isinstance(report, dict) else None
    bad = set()
    for finding in findings if isinstance(findings, list) else []:
        if not isinstance(finding, dict) or finding.get("severity") not in UNHEALTHY_SEVERITIES:
            continue
        gpu = finding.get("gpu")
        if isinstance(gpu, str) and ":" in gpu:  # "<index>:<uuid>"; "node" names no GPU
            bad.add(gpu.split(":", 1)[1])
    return bad


def detect_gpus(setting: str | int) -> list[GpuDevice]:
    """GPUs this node offers: a configured count, or what a gpufleet.gpu backend reads
    ("auto": NVML, "simulated": the simulated backend). A GPU the backend cannot read is not
    offered; a backend that cannot start (no driver) offers none."""
    if setting not in ("auto", "simulated"):
        return [GpuDevice(index=i, model="configured") for i in range(int(setting))]
    name, options = ("simulated", {}) if setting == "simulated" else ("nvml", {})
    try:
        backend = open_backend(name, **options)
    except Exception as exc:  # noqa: BLE001 - e.g. a broken fleet spec: no GPUs, said once
        log.warning("GPU discovery (%s) unavailable: %s; offering no GPUs", name, exc)
        return []
    try:
        reading = backend.read()
    except BackendUnavailable as exc:
        log.warning("GPU discovery (%s) unavailable: %s; offering no GPUs", name, exc)
        return []
    finally:
        backend.close()
    for error in reading.errors:
        log.warning("GPU %s not offered: %s", error.index, error)
    return [GpuDevice(g.index, g.model, (g.memory_total_mib or 0) << 20, g.uuid, g.minor_number)
            for g in reading.gpus]


@dataclass
class SlotCapacity:
    cpu: float
    mem: int
    gpus: list[GpuDevice] = field(default_factory=list)

    @classmethod
    def from_host(cls, resource: ResourceConfig, gpus: list[GpuDevice] | None = None) -> SlotCapacity:
        cpu = max(0.0, float(os.cpu_count() or 1) - resource.reserved_cpu)
        mem = max(0, host_memory_bytes() - resource.reserved_mem)
        return cls(cpu=cpu, mem=mem, gpus=detect_gpus(resource.gpus) if gpus is None else gpus)

    def slots(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "mem": self.mem, "cuda.device": len(self.gpus)}


class ResourceAllocator:
    """The allocation map: which kernel holds how much cpu/mem and which GPU indices."""

    def __init__(self, capacity: SlotCapacity, unhealthy: Callable[[], set[str]] = set) -> None:
        self.capacity = capacity
        self.unhealthy = unhealthy  # UUIDs of GPUs not to hand out now (the health agent's verdict)
        self._lock = threading.Lock()
        self._allocations: dict[str, Allocation] = {}

    def _offerable(self, taken: set[int]) -> list[int]:
        bad = self.unhealthy()
        return [g.index for g in self.capacity.gpus
                if g.index not in taken and not (g.uuid and g.uuid in bad)]

    def used(self) -> dict[str, Any]:
        with self._lock:
            return self._used_locked()

    def _used_locked(self) -> dict[str, Any]:
        allocations = self._allocations.values()
        return {"cpu": sum(a.cpu for a in allocations), "mem": sum(a.mem for a in allocations),
                "cuda.device": sum(len(a.gpus) for a in allocations)}

    def free_gpu_indices(self) -> list[int]:
        with self._lock:
            return self._offerable({i for a in self._allocations.values() for i in a.gpus})

    def allocations(self) -> dict[str, Allocation]:
        with self._lock:
            return dict(self._allocations)

    def allocate(self, kernel_id: str, cpu: float, mem: int, gpus: int) -> Allocation:
        if cpu <= 0 or mem <= 0 or gpus < 0:
            raise ResourceError(f"invalid request: cpu={cpu} mem={mem} cuda.device={gpus}")
        with self._lock:
            if kernel_id in self._allocations:
                raise ResourceError(f"kernel {kernel_id} already holds an allocation")
            used = self._used_locked()
            shortages = []
            if used["cpu"] + cpu > self.capacity.cpu + 1e-9:
                shortages.append(f"cpu: requested {cpu}, free {self.capacity.cpu - used['cpu']:.2f}")
            if used["mem"] + mem > self.capacity.mem:
                shortages.append(f"mem: requested {mem}, free {self.capacity.mem - used['mem']}")
            taken = {i for a in self._allocations.values() for i in a.gpus}
            free_gpus = self._offerable(taken)
            if gpus > len(free_gpus):
                held_back = len(self.capacity.gpus) - len(taken) - len(free_gpus)
                note = f" ({held_back} held back: marked bad by the health agent)" if held_back else ""
                shortages.append(f"cuda.device: requested {gpus}, free {len(free_gpus)}{note}")
            if shortages:
                raise ResourceError("insufficient resources (over-commit refused): " + "; ".join(shortages))
            chosen = tuple(free_gpus[:gpus])
            minors = {g.index: g.device_minor for g in self.capacity.gpus}
            allocation = Allocation(kernel_id, float(cpu), int(mem), chosen, tuple(minors[i] for i in chosen))
            self._allocations[kernel_id] = allocation
            return allocation

    def restore(self, allocation: Allocation) -> None:
        """Re-enter an allocation of an adopted kernel (after an agent restart)."""
        with self._lock:
            self._allocations[allocation.kernel_id] = allocation

    def release(self, kernel_id: str) -> Allocation | None:
        with self._lock:
            return self._allocations.pop(kernel_id, None)


def port_is_free(port: int) -> bool:
    """Nothing holds `port` (listening, connected or in TIME_WAIT) on any local address."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):  # noqa: S104
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address, port))
        except OSError:
            return False
        finally:
            sock.close()
    return True


class PortPool:
    """Host ports in `[container] port-range`, handed out lowest first, skipping bound ones.

    A port that is bound at the moment (by anyone) is skipped, not handed out; one taken in the
    instant between this check and the kernel's bind is caught by the agent's retry."""

    def __init__(self, low: int, high: int, probe=port_is_free) -> None:
        self.low, self.high = low, high
        self.probe = probe
        self._lock = threading.Lock()
        self._free = set(range(low, high + 1))
        self._owner: dict[int, str] = {}

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def free_count(self) -> int:
        with self._lock:
            return len(self._free)

    def owners(self) -> dict[int, str]:
        with self._lock:
            return dict(self._owner)

    def take(self, owner: str, count: int = 1) -> list[int]:
        with self._lock:
            ports: list[int] = []
            busy = 0
            for port in sorted(self._free):
                if len(ports) == count:
                    break
                if self.probe(port):
                    ports.append(port)
                else:
                    busy += 1
            if len(ports) < count:
                raise ResourceError(f"port pool exhausted: requested {count}, free {len(self._free)}"
                                    + (f" ({busy} of them bound by other processes now)" if busy else ""))
            for port in ports:
                self._free.discard(port)
                self._owner[port] = owner
            return ports
    def claim(self, owner: str, ports: list[int]) -> None:
        """Mark given ports as used (adopted kernels); ports outside the range are ignored."""
        with self._lock:
            for port in ports:
                if self.low <= port <= self.high:
                    self._free.discard(port)
                    self._owner[port] = owner

    def release(self, ports: list[int], owner: str | None = None) -> list[int]:
        """Return ports to the pool; with `owner`, only ports that owner holds."""
        released = []
        with self._lock:
            for port in ports:
                if port in self._owner and (owner is None or self._owner[port] == owner):
                    del self._owner[port]
                    self._free.add(port)
                    released.append(port)
        return released

    def release_owner(self, owner: str) -> list[int]:
        with self._lock:
            ports = [p for p, o in self._owner.items() if o == owner]
        return self.release(ports, owner)


class IdentityPool:
    """Kernel uids (gid = uid) from `[container] kernel-uid-range`, one per kernel, so kernels
    can neither read nor signal each other. Taken and given back like ports; the registry keeps
    each kernel's pair so an agent restart claims the ones live kernels still use."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self._lock = threading.Lock()
        self._owner: dict[int, str] = {}

    def take(self, owner: str) -> tuple[int, int]:
        with self._lock:
            for uid in range(self.low, self.high + 1):
                if uid not in self._owner:
                    self._owner[uid] = owner
                    return uid, uid
        raise ResourceError(f"kernel uid range {self.low}-{self.high} exhausted")

    def claim(self, owner: str, uid: int) -> None:
        with self._lock:
            if self.low <= uid <= self.high:
                self._owner[uid] = owner

    def release_owner(self, owner: str) -> None:
        with self._lock:
            for uid in [u for u, o in self._owner.items() if o == owner]:
                del self._owner[uid]

    def owners(self) -> dict[int, str]:
        with self._lock:
            return dict(self._owner)
