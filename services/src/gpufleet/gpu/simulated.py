"""The simulated backend: GPUs described by a fleet spec, faults injected while it runs.

Fleet spec (YAML)::

    nodes:
      sim-h100-0:
        profile: h100-sxm-8        # optional: defaults for everything below
        model: NVIDIA H100 80GB HBM3
        count: 8
        memory_mib: 81559
        nvlinks_per_gpu: 18
        nvswitch: true
        pcie_gen: 5
        pcie_width: 16
        efa_devices: 32
        ib_devices: 0

Fault file (JSON, or YAML by extension), re-read whenever it changes and
written by ``gpufleet health inject``; the node-level and per-GPU keys are
documented in docs/health.md ("Simulated faults")::

    {"nodes": {"sim-h100-0": {
        "nvml_error": null, "boot_id": "sim-boot-1", "fabric_manager_active": true,
        "gpus": {"3": {"remapped_rows": {"pending": true}, "nvlink_rising": {"crc_flit_errors": 60}}},
        "xids": [{"seq": 1, "gpu": 3, "xid": 79, "message": "GPU has fallen off the bus.", "time": 1.7e9}]}}}

Injected Xids reach the checks two ways, as on a real node: as live events from
``wait_xid_events`` (only those injected after the backend started, like NVML)
and as kernel-log lines from the host probe's kernel log (all of this boot, read
once each by cursor).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from gpufleet.dicts import deep_merge
from gpufleet.gpu.base import (
    BackendUnavailable,
    EccCounts,
    GpuBackend,
    GpuReadError,
    GpuSnapshot,
    HostProbe,
    NodeReading,
    NvLink,
    PcieLink,
    RemappedRows,
    RetiredPages,
    XidEvent,
)

XID_POLL_INTERVAL = 0.025  # seconds between fault-file checks while waiting for Xids
ROW_REMAPPING_ARCHITECTURES = {"ampere", "ada", "hopper", "blackwell", "rubin"}
IDLE_THROTTLE = 0x1  # nvmlClocksEventReasonGpuIdle
DEFAULT_FAULTS_PATH = Path(os.environ.get("GPUFLEET_SIM_FAULTS", "/var/lib/gpufleet/simulated-faults.json"))
DEFAULT_BOOT_ID = "sim-boot-1"

DEFAULT_NODE = {
    "profile": "h100-sxm-8",
}


class FleetSpecError(ValueError):
    pass


def load_fleet_spec(path: Path | None) -> dict[str, dict[str, Any]]:
    """Node name -> node spec; the built-in one-node H100 fleet when ``path`` is None."""
    if path is None:
        return {"sim-node-0": dict(DEFAULT_NODE)}
    data = yaml.safe_load(Path(path).read_text()) or {}
    nodes = data.get("nodes")
    if not isinstance(nodes, dict) or not nodes:
        raise FleetSpecError(f"{path}: needs a non-empty 'nodes' mapping")
    defaults = data.get("defaults", {})
    return {name: {**defaults, **(spec or {})} for name, spec in nodes.items()}


def resolve_node_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Fill a node spec from its profile (named, or matched by model and count)."""
    from gpufleet.gpu.profiles import load_profiles

    profiles = load_profiles()
    profile = profiles.get(spec["profile"]) if spec.get("profile") else None
    if spec.get("profile") and profile is None:
        raise FleetSpecError(f"unknown profile {spec['profile']!r}")
    if profile is None and spec.get("model"):
        count = int(spec.get("count", 1))
        profile = next((p for p in profiles.values() if p.matches([spec["model"]], count)), None)
    base: dict[str, Any] = {
        "model": "NVIDIA GPU",
        "count": 1,
        "memory_mib": 16384,
        "architecture": "ampere",
        "nvlinks_per_gpu": 0,
        "nvswitch": False,
        "pcie_gen": 4,
        "pcie_width": 16,
        "power_limit_w": 300.0,
        "efa_devices": 0,
        "ib_devices": 0,
    }
    if profile is not None:
        base.update(
            {
                "model": profile.model or base["model"],
                "count": profile.gpu_count,
                "memory_mib": profile.memory_mib or base["memory_mib"],
                "architecture": profile.architecture or base["architecture"],
                "nvlinks_per_gpu": profile.nvlinks_per_gpu,
                "nvswitch": profile.nvswitch,
                "pcie_gen": profile.pcie_gen or base["pcie_gen"],
                "pcie_width": profile.pcie_width or base["pcie_width"],
                "power_limit_w": profile.power_limit_w or base["power_limit_w"],
                "efa_devices": profile.efa_devices or 0,
                "ib_devices": profile.ib_devices or 0,
                "profile": profile.name,
            }
        )
    base.update({k: v for k, v in spec.items() if v is not None})
    return base


# -- the fault file -------------------------------------------------------------------------
def read_faults(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {"nodes": {}}
    if not text.strip():
        return {"nodes": {}}
    data = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
    return data if isinstance(data, dict) else {"nodes": {}}


def write_faults(path: Path, data: dict[str, Any]) -> None:
    """Atomic replace, so a reader polling the file never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        if str(path).endswith((".yaml", ".yml")):
            yaml.safe_dump(data, handle, sort_keys=False)
        else:
            json.dump(data, handle, indent=1)
    os.replace(tmp, path)


class FaultFile:
    """The fault file, re-read only when it changed (mtime, inode or size)."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self._signature: tuple | None = None
        self.data: dict[str, Any] = {"nodes": {}}

    def refresh(self) -> bool:
        """Re-read if changed; True when the content was reloaded."""
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
            signature = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            signature = None
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            self.data = read_faults(self.path)
        except ValueError:
            return False  # a hand edit in progress; keep the last good content
        return True

    def node(self, name: str) -> dict[str, Any]:
        return (self.data.get("nodes") or {}).get(name) or {}


def _fake_uuid(node: str, index: int) -> str:
    digest = hashlib.sha1(f"{node}/{index}".encode(), usedforsecurity=False).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _bus_id(index: int) -> str:
    return f"00000000:{0x18 + index * 0x10:02X}:00.0"


class SimulatedBackend(GpuBackend):
    name = "simulated"

    def __init__(
        self,
        node: str | None = None,
        fleet_spec: Path | None = None,
        faults: Path | None = None,
        clock=time.time,
    ):
        fleet = load_fleet_spec(fleet_spec)
        self.node = node or next(iter(fleet))
        if self.node not in fleet:
            raise FleetSpecError(f"node {self.node!r} not in the fleet spec; known: {', '.join(fleet)}")
        self.spec = resolve_node_spec(fleet[self.node])
        self.faults = FaultFile(faults if faults is not None else DEFAULT_FAULTS_PATH)
        self.clock = clock
        self.started = clock()
        self.faults.refresh()
        # NVML delivers only events that happen after registration: skip what is already there.
        self._delivered_seq = max(
            (int(x.get("seq", 0)) for x in self._node_faults().get("xids", [])), default=0
        )

    @property
    def profile_name(self) -> str | None:
        return self.spec.get("profile")

    def _node_faults(self) -> dict[str, Any]:
        return self.faults.node(self.node)

    # -- reading --------------------------------------------------------------------------
    def read(self) -> NodeReading:
        self.faults.refresh()
        node_faults = self._node_faults()
        if node_faults.get("nvml_error"):
            raise BackendUnavailable(f"NVML cannot start: {node_faults['nvml_error']} (simulated)")
        gpu_faults = {int(k): v or {} for k, v in (node_faults.get("gpus") or {}).items()}
        now = self.clock()
        reading = NodeReading(device_count=0, gpus=[], driver_version="550.90.07-sim")
        for index in range(int(self.spec["count"])):
            fault = gpu_faults.get(index, {})
            if fault.get("missing"):
                continue  # fell off the bus: the driver no longer enumerates it
            reading.device_count += 1
            if fault.get("nvml_error"):
                reading.errors.append(
                    GpuReadError(
                        index,
                        str(fault["nvml_error"]),
                        f"simulated {fault['nvml_error']}",
                        uuid=_fake_uuid(self.node, index),
                    )
                )
                continue
            reading.gpus.append(self._snapshot(index, fault, now))
        return reading

    def _snapshot(self, index: int, fault: dict[str, Any], now: float) -> GpuSnapshot:
        spec = self.spec
        util = int(fault.get("utilization_gpu_pct", 0))
        busy = util >= 10
        gen_max = int(spec["pcie_gen"])
        power_limit = float(fault.get("power_limit_w", spec["power_limit_w"]))
        row_remapping = spec["architecture"] in ROW_REMAPPING_ARCHITECTURES
        gpu = GpuSnapshot(
            index=index,
            uuid=_fake_uuid(self.node, index),
            pci_bus_id=_bus_id(index),
            model=spec["model"],
            architecture=spec["architecture"],
            minor_number=int(fault.get("minor_number", index)),
            memory_total_mib=int(spec["memory_mib"]),
            memory_used_mib=int(spec["memory_mib"] * util / 100),
            temperature_c=int(fault.get("temperature_c", 62 if busy else 34)),
            power_w=float(fault.get("power_w", power_limit * (0.8 if busy else 0.1))),
            power_limit_w=power_limit,
            clock_sm_mhz=1980 if busy else 345,
            clock_sm_max_mhz=1980,
            clock_mem_mhz=2619,
            throttle_reasons=int(fault.get("throttle_reasons", 0 if busy else IDLE_THROTTLE)),
            persistence_mode=bool(fault.get("persistence_mode", True)),
            ecc_enabled=True,
            ecc=EccCounts(
                **deep_merge(
                    {
                        "volatile_corrected": 0,
                        "volatile_uncorrected": 0,
                        "aggregate_corrected": 0,
                        "aggregate_uncorrected": 0,
                        "aggregate_uncorrected_sram": 0,
                        "aggregate_uncorrected_dram": 0,
                        "volatile_uncorrected_sram": 0,
                        "volatile_uncorrected_dram": 0,
                    },
                    fault.get("ecc", {}),
                )
            ),
            remapped_rows=RemappedRows(**fault.get("remapped_rows", {})) if row_remapping else None,
            retired_pages=None if row_remapping else RetiredPages(**fault.get("retired_pages", {})),
            # A real link drops to a low generation at idle to save power; under load it trains to max.
            pcie=PcieLink(
                **deep_merge(
                    {
                        "gen_current": gen_max if busy else 1,
                        "gen_max": gen_max,
                        "width_current": int(spec["pcie_width"]),
                        "width_max": int(spec["pcie_width"]),
                        "replay_counter": 0,
                    },
                    fault.get("pcie", {}),
                )
            ),
            nvlinks=self._nvlinks(fault, now),
            utilization_gpu_pct=util,
            utilization_mem_pct=util // 2,
        )
        return gpu

    def _nvlinks(self, fault: dict[str, Any], now: float) -> list[NvLink]:
        down = {int(x) for x in fault.get("nvlink_down", [])}
        static = fault.get("nvlink_counters", {})  # counter -> fixed value (history, not news)
        rising = fault.get("nvlink_rising", {})  # counter -> increase per minute since the fault's start
        since = float(fault.get("since", self.started))
        links = []
        for link in range(int(self.spec["nvlinks_per_gpu"])):
            values = {c: int(static.get(c, 0)) for c in NvLink.COUNTERS}
            for counter, per_minute in rising.items():
                values[counter] = values.get(counter, 0) + int(
                    float(per_minute) * max(0.0, now - since) / 60.0
                )
            links.append(NvLink(link=link, active=link not in down, **values))
        return links

    # -- Xid events -----------------------------------------------------------------------
    def wait_xid_events(self, timeout: float) -> list[XidEvent]:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self.faults.refresh()
            events = self._new_events()
            if events or time.monotonic() >= deadline:
                return events
            time.sleep(min(XID_POLL_INTERVAL, max(0.0, deadline - time.monotonic())))

    def _new_events(self) -> list[XidEvent]:
        events = []
        for raw in sorted(self._node_faults().get("xids", []), key=lambda x: int(x.get("seq", 0))):
            seq = int(raw.get("seq", 0))
            if seq <= self._delivered_seq:
                continue
            self._delivered_seq = seq
            index = raw.get("gpu")
            events.append(
                XidEvent(
                    xid=int(raw["xid"]),
                    gpu_index=int(index) if index is not None else None,
                    uuid=_fake_uuid(self.node, int(index)) if index is not None else None,
                    pci_bus_id=_bus_id(int(index)) if index is not None else None,
                    message=str(raw.get("message", "")),
                    timestamp=float(raw.get("time", self.clock())),
                    source="simulated",
                )
            )
        return events

    def host_probe(self) -> HostProbe:
        return SimulatedHostProbe(self)


class SimulatedHostProbe(HostProbe):
    def __init__(self, backend: SimulatedBackend):
        self.backend = backend

    def _faults(self) -> dict[str, Any]:
        self.backend.faults.refresh()
        return self.backend._node_faults()

    def boot_id(self) -> str:
        return str(self._faults().get("boot_id", DEFAULT_BOOT_ID))

    def service_active(self, unit: str) -> bool | None:
        if "fabricmanager" in unit:
            return bool(self._faults().get("fabric_manager_active", self.backend.spec["nvswitch"]))
        return None

    def efa_device_count(self) -> int | None:
        return int(self._faults().get("efa_devices", self.backend.spec["efa_devices"]))

    def infiniband_device_count(self) -> int | None:
        return int(self._faults().get("ib_devices", self.backend.spec["ib_devices"]))

    def kernel_log(self):
        return SimulatedKernelLog(self.backend)

    def dcgm_diag(self, level: int, timeout: float) -> str | None:
        path = self._faults().get("dcgm_output")
        return Path(path).read_text() if path else None


class SimulatedKernelLog:
    """The kernel log of a simulated node: one NVRM line per injected Xid, seq as cursor."""

    def __init__(self, backend: SimulatedBackend):
        self.backend = backend

    def boot_id(self) -> str:
        self.backend.faults.refresh()
        return str(self.backend._node_faults().get("boot_id", DEFAULT_BOOT_ID))

    def read_after(self, cursor: str | None):
        from gpufleet.gpu.kernel_log import KernelLine

        self.backend.faults.refresh()
        last = int(cursor) if cursor else 0
        lines = []
        for raw in sorted(self.backend._node_faults().get("xids", []), key=lambda x: int(x.get("seq", 0))):
            seq = int(raw.get("seq", 0))
            if seq <= last:
                continue
            last = seq
            bus = _bus_id(int(raw["gpu"]))[4:-2] if raw.get("gpu") is not None else "0000:00:00"
            text = f"NVRM: Xid (PCI:{bus}): {int(raw['xid'])}, pid=0, name=sim, {raw.get('message', '')}"
            lines.append(KernelLine(text, float(raw.get("time", 0.0))))
        return lines, (str(last) if last else cursor)


# -- injection (used by `gpufleet health inject`) --------------------------------------------
def inject(
    path: Path,
    node: str,
    gpu: int | None = None,
    settings: dict[str, Any] | None = None,
    xid: int | None = None,
    message: str = "",
    clear: bool = False,
    reboot: bool = False,
    now: float | None = None,
) -> dict[str, Any]:
    """Change one node's faults in the fault file; returns that node's new faults."""
    data = read_faults(path)
    nodes = data.setdefault("nodes", {})
    node_faults = nodes.get(node) or {}
    if clear:  # keep the boot id and Xid numbering so cursors and delivered-event marks stay valid
        node_faults = {k: node_faults[k] for k in ("boot_id", "xid_seq") if k in node_faults}
    if reboot:
        # A reboot clears volatile state and gives a new boot id; the kernel log starts empty.
        generation = int(str(node_faults.get("boot_id", DEFAULT_BOOT_ID)).rsplit("-", 1)[-1]) + 1
        node_faults = {"boot_id": f"sim-boot-{generation}", "xid_seq": node_faults.get("xid_seq", 0)}
    target = node_faults
    if gpu is not None:
        target = node_faults.setdefault("gpus", {}).setdefault(str(gpu), {})
    for dotted, value in (settings or {}).items():
        parts = dotted.split(".")
        holder = target
        for part in parts[:-1]:
            holder = holder.setdefault(part, {})
        if value is None:
            holder.pop(parts[-1], None)
        else:
            holder[parts[-1]] = value
        if gpu is not None and parts[0].startswith("nvlink_rising"):
            target.setdefault("since", now if now is not None else time.time())
    if xid is not None:
        seq = int(node_faults.get("xid_seq", 0)) + 1
        node_faults["xid_seq"] = seq
        node_faults.setdefault("xids", []).append(
            {
                "seq": seq,
                "gpu": gpu,
                "xid": int(xid),
                "message": message,
                "time": now if now is not None else time.time(),
            }
        )
    nodes[node] = node_faults
    write_faults(path, data)
    return node_faults
