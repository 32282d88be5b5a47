"""What a kernel uses now: CPU time and memory from its cgroup, GPU memory and load through gpufleet.gpu.

* local backend, systemd mode: the kernel's transient unit is a sibling of the agent's own unit,
  so its cgroup is the agent's cgroup path with the last part replaced by the kernel's unit
  (this holds on the host and inside a container with the host's cgroup namespace); cgroup v2
  (``cpu.stat``, ``memory.current``) and v1 (``cpuacct.usage``, ``memory.usage_in_bytes``);
* local backend, subprocess mode: the kernel shares the agent's cgroup, so its runner process is
  read from procfs instead (CPU of the process and its reaped children, resident memory);
* kubernetes backend: the pod may run on another node; no usage (only its allocation is exported).

Every read is a few small files; a missing file means "no data", never zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class KernelUsage:
    cpu_seconds: float | None = None  # cumulative CPU time
    memory_bytes: int | None = None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def own_cgroups(proc_cgroup: Path = Path("/proc/self/cgroup")) -> dict[str, str]:
    """controller -> cgroup path of this process ("" is the v2 unified hierarchy)."""
    out: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                out[controller] = parts[2]
    return out


class CgroupReader:
    """CPU and memory of a kernel's systemd unit, found next to the agent's own unit.

    systemd names a unit's cgroup the same in every hierarchy; its own (``name=systemd`` on v1,
    the unified one on v2) always exists, so the agent's slice comes from there."""

    def __init__(self, root: Path = CGROUP_ROOT, cgroups: dict[str, str] | None = None):
        self.root = root
        self.v2 = (root / "cgroup.controllers").exists()
        own = own_cgroups() if cgroups is None else cgroups
        unit_path = own.get("") if self.v2 else own.get("name=systemd")
        self.slice = unit_path.rstrip("/").rsplit("/", 1)[0].lstrip("/") if unit_path else None

    def unit_dir(self, unit: str, hierarchy: str = "") -> Path | None:
        if self.slice is None:
            return None
        return self.root / hierarchy / self.slice / unit

    def read_unit(self, unit: str) -> KernelUsage:
        usage = KernelUsage()
        if self.slice is None:
            return usage
        if self.v2:
            path = self.unit_dir(unit)
            for line in (_read(path / "cpu.stat") or "").splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec" and value.strip().isdigit():
                    usage.cpu_seconds = int(value) / 1e6
            usage.memory_bytes = _number(path / "memory.current")
            return usage
        # "cpuacct" is the mount itself or a link to the shared "cpu,cpuacct" one.
        nanoseconds = _number(self.unit_dir(unit, "cpuacct") / "cpuacct.usage")
        usage.cpu_seconds = nanoseconds / 1e9 if nanoseconds is not None else None
        usage.memory_bytes = _number(self.unit_dir(unit, "memory") / "memory.usage_in_bytes")
        return usage


def _number(path: Path) -> int | None:
    value = (_read(path) or "").strip()
    return int(value) if value.isdigit() else None


def read_process(pid: int, proc: Path = Path("/proc")) -> KernelUsage:
    """CPU (own + reaped children) and resident memory of one process."""
    usage = KernelUsage()
    stat = _read(proc / str(pid) / "stat")
    if stat and ")" in stat:
        fields = stat.rsplit(")", 1)[1].split()
        # fields[11..14]: utime, stime, cutime, cstime (stat(5) fields 14-17)
        try:
            usage.cpu_seconds = sum(int(x) for x in fields[11:15]) / CLOCK_TICKS
        except (ValueError, IndexError):
            pass
    statm = (_read(proc / str(pid) / "statm") or "").split()
    if len(statm) > 1 and statm[1].isdigit():
        usage.memory_bytes = int(statm[1]) * PAGE_SIZE
    return usage


class KernelUsageReader:
    """Usage of one kernel record, by how its backend runs it."""

    def __init__(self, cgroups: CgroupReader | None = None):
        self.cgroups = cgroups or CgroupReader()

    def read(self, record) -> KernelUsage:
        data = record.backend_data or {}
        if record.backend != "local":
            return KernelUsage()
        if data.get("unit"):
            return self.cgroups.read_unit(data["unit"])
        if data.get("pid"):
            return read_process(int(data["pid"]))
        return KernelUsage()
