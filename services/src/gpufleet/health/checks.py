"""The health checks and their registry.

Each check has an id, a cost class (``lightweight``: NVML reads, every cycle;
``periodic``: asks the host, every few minutes; ``intensive``: runs a
diagnostic that loads the GPUs) and returns findings. A check that cannot run
because the monitor is broken raises CheckUnavailable: the engine reports it as
``unknown``, never as a GPU fault.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from gpufleet.gpu.base import GpuBackend, GpuSnapshot, HostProbe, NodeReading, XidEvent
from gpufleet.gpu.kernel_log import normalize_bus_id, parse_xid_line
from gpufleet.gpu.profiles import HardwareProfile
from gpufleet.health.dcgm import DcgmParseError, parse_dcgm_diag
from gpufleet.health.severity import NODE, Finding, Severity
from gpufleet.health.state import HealthState
from gpufleet.health.xid import XidCatalog

COST_CLASSES = ("lightweight", "periodic", "intensive")

# NVML clocks-event reasons (nvmlClocksEventReason*).
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}
# Reasons that are normal operation, never a finding.
BENIGN_THROTTLE = 0x1 | 0x2 | 0x10 | 0x100
SW_POWER_CAP = 0x4

# What an NVML error on one GPU means (codes from gpufleet.gpu.nvml / the simulated backend).
GPU_ERROR_SEVERITY = {
    "GpuIsLost": (Severity.REBOOT, "the GPU is lost (fell off the bus); drain and reboot the node"),
    "ResetRequired": (Severity.RESET, "the GPU needs a reset; drain the node and reset it"),
    "CorruptedInforom": (Severity.ISOLATE, "the GPU's infoROM is corrupted; isolate it for reflash or RMA"),
}


class CheckUnavailable(RuntimeError):
    """The check cannot run: its data source (not the GPU) is broken."""


@dataclass
class CheckConfig:
    idle_utilization_pct: int = 10  # below this a GPU counts as idle (PCIe downshift is normal)
    sw_power_cap_benign: bool = False  # set when power capping is deliberate
    require_ecc: bool = True
    ecc_corrected_per_minute: float = 100.0
    sram_uncorrectable_isolate: int = 4  # lifetime SRAM UEs before the GPU should be RMA'd
    retired_pages_isolate: int = 60  # NVIDIA's page-retirement RMA threshold
    pcie_replays_per_minute: float = 100.0
    nvlink_errors_per_minute_reset: float = 600.0  # per link and counter; below: MONITOR
    power_over_limit_ratio: float = 1.05
    power_limit_low_ratio: float = 0.9
    nvml_slow_seconds: float = 5.0
    fabric_manager_unit: str = "nvidia-fabricmanager.service"
    dcgm_level: int = 2
    dcgm_timeout: float = 1800.0


@dataclass
class CheckContext:
    reading: NodeReading | None  # None when the backend is unavailable
    profile: HardwareProfile
    state: HealthState
    config: CheckConfig
    host: HostProbe
    backend: GpuBackend
    catalog: XidCatalog
    now: float
    xid_events: list[XidEvent] = field(default_factory=list)
    read_seconds: float = 0.0

    @property
    def gpus(self) -> list[GpuSnapshot]:
        return self.reading.gpus if self.reading else []


@dataclass(frozen=True)
class Check:
    id: str
    cost: str
    description: str
    run: Callable[[CheckContext], list[Finding]]
    needs_reading: bool = True


REGISTRY: dict[str, Check] = {}


def register(check_id: str, cost: str, description: str, needs_reading: bool = True):
    assert cost in COST_CLASSES, cost

    def decorate(fn: Callable[[CheckContext], list[Finding]]):
        REGISTRY[check_id] = Check(check_id, cost, description, fn, needs_reading)
        return fn

    return decorate


def select_checks(
    ids: list[str] | None = None, cost_classes: list[str] | tuple[str, ...] | None = None
) -> list[Check]:
    if ids:
        unknown = [i for i in ids if i not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown checks {unknown}; known: {', '.join(REGISTRY)}")
        chosen = [REGISTRY[i] for i in ids]
    else:
        chosen = list(REGISTRY.values())
    if cost_classes:
        chosen = [c for c in chosen if c.cost in cost_classes]
    return chosen


def passed(check: str, message: str, **evidence) -> list[Finding]:
    return [Finding(check, NODE, Severity.PASS, message, evidence)]


# -- lightweight: NVML reads ----------------------------------------------------------------
@register("gpu_count", "lightweight", "GPUs the driver sees vs the hardware profile")
def check_gpu_count(ctx: CheckContext) -> list[Finding]:
    seen, expected = ctx.reading.device_count, ctx.profile.gpu_count
    evidence = {"seen": seen, "expected": expected, "profile": ctx.profile.name}
    if ctx.profile.generic:
        return passed("gpu_count", f"{seen} GPUs (no hardware profile to compare with)", **evidence)
    if seen < expected:
        return [
            Finding(
                "gpu_count",
                NODE,
                Severity.REBOOT,
                f"{expected - seen} of {expected} GPUs missing (fell off the bus?); drain and reboot",
                evidence,
            )
        ]
    if seen > expected:
        return [
            Finding(
                "gpu_count",
                NODE,
                Severity.MONITOR,
                f"{seen} GPUs but profile {ctx.profile.name} expects {expected}",
                evidence,
            )
        ]
    return passed("gpu_count", f"{seen}/{expected} GPUs", **evidence)


@register("nvml_responsive", "lightweight", "NVML answers for every GPU, and quickly")
def check_nvml_responsive(ctx: CheckContext) -> list[Finding]:
    findings = []
    for error in ctx.reading.errors:
        severity, meaning = GPU_ERROR_SEVERITY.get(
            error.code, (Severity.MONITOR, "NVML cannot read this GPU; watch it")
        )
        gpu = f"{error.index}:{error.uuid}" if error.uuid else str(error.index)
        findings.append(
            Finding(
                "nvml_responsive",
                gpu,
                severity,
                f"NVML error {error.code}: {meaning}",
                {"code": error.code, "detail": error.message},
            )
        )
    if ctx.read_seconds > ctx.config.nvml_slow_seconds:
        findings.append(
            Finding(
                "nvml_responsive",
                NODE,
                Severity.MONITOR,
                f"reading the GPUs took {ctx.read_seconds:.1f}s",
                {"seconds": ctx.read_seconds},
            )
        )
    return findings or passed("nvml_responsive", f"NVML read {len(ctx.gpus)} GPUs in {ctx.read_seconds:.2f}s")


def rising_counter(ctx: CheckContext, check: str, gpu, key: str, value, per_minute_limit: float,
                   what: str, evidence: dict) -> list[Finding]:
    """A MONITOR finding when a cumulative counter grew at or above the limit since the last cycle.

    Cumulative counters are compared between cycles (the state keeps the last
    reading): a high but steady count is history, not a new error.
    """
    delta = ctx.state.counter_delta(key, value, ctx.now)
    if delta is None or not delta.delta or delta.per_minute < per_minute_limit:
        return []
    return [Finding(check, gpu.label, Severity.MONITOR, f"{what} rising at {delta.per_minute:.0f}/min",
                    {**evidence, "delta": delta.delta, "seconds": delta.seconds})]


@register("ecc", "lightweight", "ECC enabled; no uncorrectable errors; corrected-error rate")
def check_ecc(ctx: CheckContext) -> list[Finding]:
    cfg, findings = ctx.config, []
    for gpu in ctx.gpus:
        ecc = gpu.ecc
        evidence = {k: v for k, v in vars(ecc).items() if v is not None}
        if gpu.ecc_enabled is False and cfg.require_ecc:
            findings.append(Finding("ecc", gpu.label, Severity.MONITOR, "ECC is disabled", evidence))
        if (
            ecc.aggregate_uncorrected_sram is not None
            and ecc.aggregate_uncorrected_sram >= cfg.sram_uncorrectable_isolate
        ):
            findings.append(
                Finding(
                    "ecc",
                    gpu.label,
                    Severity.ISOLATE,
                    f"{ecc.aggregate_uncorrected_sram} lifetime uncorrectable SRAM errors "
                    f"(>= {cfg.sram_uncorrectable_isolate}); isolate for RMA",
                    evidence,
                )
            )
        elif ecc.volatile_uncorrected:
            findings.append(
                Finding(
                    "ecc",
                    gpu.label,
                    Severity.RESET,
                    f"{ecc.volatile_uncorrected} uncorrectable ECC errors since the driver loaded; "
                    "drain and reset the GPU",
                    evidence,
                )
            )
        findings += rising_counter(ctx, "ecc", gpu, f"ecc|{gpu.uuid}|volatile_corrected",
                                   ecc.volatile_corrected, cfg.ecc_corrected_per_minute,
                                   "corrected ECC errors", evidence)
    return findings or passed("ecc", "no uncorrectable ECC errors")


@register("memory_remap", "lightweight", "row remapping (Ampere+) and page retirement (older)")
def check_memory_remap(ctx: CheckContext) -> list[Finding]:
    findings = []
    for gpu in ctx.gpus:
        rows, pages = gpu.remapped_rows, gpu.retired_pages
        if rows is not None:
            evidence = vars(rows).copy()
            if rows.failure:
                findings.append(
                    Finding(
                        "memory_remap",
                        gpu.label,
                        Severity.ISOLATE,
                        "row remapping failed (no spare rows); isolate for RMA",
                        evidence,
                    )
                )
            elif rows.pending:
                findings.append(
                    Finding(
                        "memory_remap",
                        gpu.label,
                        Severity.RESET,
                        "a row remap is pending; drain and reset the GPU to apply it",
                        evidence,
                    )
                )
        if pages is not None:
            evidence = vars(pages).copy()
            total = pages.single_bit + pages.double_bit
            if total >= ctx.config.retired_pages_isolate:
                findings.append(
                    Finding(
                        "memory_remap",
                        gpu.label,
                        Severity.ISOLATE,
                        f"{total} retired pages (>= {ctx.config.retired_pages_isolate}); isolate for RMA",
                        evidence,
                    )
                )
            elif pages.pending:
                findings.append(
                    Finding(
                        "memory_remap",
                        gpu.label,
                        Severity.RESET,
                        "a page retirement is pending; drain and reset the GPU",
                        evidence,
                    )
                )
    return findings or passed("memory_remap", "no pending or failed row remaps / page retirements")


@register("persistence_mode", "lightweight", "persistence mode on (keeps the driver state loaded)")
def check_persistence_mode(ctx: CheckContext) -> list[Finding]:
    off = [gpu for gpu in ctx.gpus if gpu.persistence_mode is False]
    findings = [
        Finding(
            "persistence_mode",
            gpu.label,
            Severity.MONITOR,
            "persistence mode is off (enable nvidia-persistenced)",
            {"persistence_mode": False},
        )
        for gpu in off
    ]
    return findings or passed("persistence_mode", "persistence mode on")


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


@register("clock_throttle", "lightweight", "clocks not held down by thermal, power-brake or HW slowdown")
def check_clock_throttle(ctx: CheckContext) -> list[Finding]:
    benign = BENIGN_THROTTLE | (SW_POWER_CAP if ctx.config.sw_power_cap_benign else 0)
    findings = []
    for gpu in ctx.gpus:
        if gpu.throttle_reasons is None:
            continue
        harmful = gpu.throttle_reasons & ~benign
        if harmful:
            findings.append(
                Finding(
                    "clock_throttle",
                    gpu.label,
                    Severity.MONITOR,
                    "clocks throttled: " + ", ".join(throttle_names(harmful)),
                    {
                        "reasons": throttle_names(gpu.throttle_reasons),
                        "mask": hex(gpu.throttle_reasons),
                        "clock_sm_mhz": gpu.clock_sm_mhz,
                    },
                )
            )
    return findings or passed("clock_throttle", "no harmful clock throttling")


@register("temperature", "lightweight", "GPU temperature below the profile's thresholds")
def check_temperature(ctx: CheckContext) -> list[Finding]:
    warn, critical = ctx.profile.temperature_warn_c, ctx.profile.temperature_critical_c
    findings = []
    for gpu in ctx.gpus:
        t = gpu.temperature_c
        if t is None:
            continue
        evidence = {"temperature_c": t, "warn_c": warn, "critical_c": critical}
        if t >= critical:
            findings.append(
                Finding(
                    "temperature",
                    gpu.label,
                    Severity.ISOLATE,
                    f"{t} C >= critical {critical} C; cooling fault, keep the node out",
                    evidence,
                )
            )
        elif t >= warn:
            findings.append(
                Finding("temperature", gpu.label, Severity.MONITOR, f"{t} C >= {warn} C", evidence)
            )
    return findings or passed("temperature", f"all GPUs below {warn} C")


@register("power", "lightweight", "power draw within the limit; limit not capped below the board default")
def check_power(ctx: CheckContext) -> list[Finding]:
    cfg, findings = ctx.config, []
    for gpu in ctx.gpus:
        if gpu.power_w is None or gpu.power_limit_w is None:
            continue
        evidence = {
            "power_w": gpu.power_w,
            "power_limit_w": gpu.power_limit_w,
            "profile_limit_w": ctx.profile.power_limit_w,
        }
        if gpu.power_w > gpu.power_limit_w * cfg.power_over_limit_ratio:
            findings.append(
                Finding(
                    "power",
                    gpu.label,
                    Severity.MONITOR,
                    f"drawing {gpu.power_w:.0f} W over its {gpu.power_limit_w:.0f} W limit",
                    evidence,
                )
            )
        expected = ctx.profile.power_limit_w
        if (
            expected
            and gpu.power_limit_w < expected * cfg.power_limit_low_ratio
            and not cfg.sw_power_cap_benign
        ):
            findings.append(
                Finding(
                    "power",
                    gpu.label,
                    Severity.MONITOR,
                    f"power limit {gpu.power_limit_w:.0f} W is below the board's {expected:.0f} W",
                    evidence,
                )
            )
    return findings or passed("power", "power within limits")


@register("pcie_link", "lightweight", "PCIe link at full generation/width under load; replay rate")
def check_pcie_link(ctx: CheckContext) -> list[Finding]:
    cfg, profile, findings = ctx.config, ctx.profile, []
    for gpu in ctx.gpus:
        link = gpu.pcie
        evidence = {**vars(link), "utilization_gpu_pct": gpu.utilization_gpu_pct}
        # The link's maximum does not change with load: below the profile it trained low.
        if profile.pcie_gen and link.gen_max is not None and link.gen_max < profile.pcie_gen:
            findings.append(
                Finding(
                    "pcie_link",
                    gpu.label,
                    Severity.MONITOR,
                    f"link trained to Gen{link.gen_max}, profile expects Gen{profile.pcie_gen}",
                    evidence,
                )
            )
        if profile.pcie_width and link.width_max is not None and link.width_max < profile.pcie_width:
            findings.append(
                Finding(
                    "pcie_link",
                    gpu.label,
                    Severity.MONITOR,
                    f"link trained to x{link.width_max}, profile expects x{profile.pcie_width}",
                    evidence,
                )
            )
        # An idle GPU lowers its link speed to save power: only judge the current link under load.
        busy = gpu.utilization_gpu_pct is not None and gpu.utilization_gpu_pct >= cfg.idle_utilization_pct
        if busy:
            if None not in (link.gen_current, link.gen_max) and link.gen_current < link.gen_max:
                findings.append(
                    Finding(
                        "pcie_link",
                        gpu.label,
                        Severity.MONITOR,
                        f"under load at Gen{link.gen_current} of Gen{link.gen_max}",
                        evidence,
                    )
                )
            if None not in (link.width_current, link.width_max) and link.width_current < link.width_max:
                findings.append(
                    Finding(
                        "pcie_link",
                        gpu.label,
                        Severity.MONITOR,
                        f"under load at x{link.width_current} of x{link.width_max}",
                        evidence,
                    )
                )
        findings += rising_counter(ctx, "pcie_link", gpu, f"pcie|{gpu.uuid}|replay", link.replay_counter,
                                   cfg.pcie_replays_per_minute, "PCIe replays", evidence)
    return findings or passed("pcie_link", "PCIe links healthy (idle downshift is normal)")


@register("nvlink", "lightweight", "NVLinks up; error counters not rising")
def check_nvlink(ctx: CheckContext) -> list[Finding]:
    expected, findings = ctx.profile.nvlinks_per_gpu, []
    for gpu in ctx.gpus:
        active = [link for link in gpu.nvlinks if link.active]
        if expected and len(active) < expected:
            down = [link.link for link in gpu.nvlinks if not link.active]
            findings.append(
                Finding(
                    "nvlink",
                    gpu.label,
                    Severity.RESET,
                    f"{expected - len(active)} of {expected} NVLinks down; drain and reset",
                    {"active": len(active), "expected": expected, "down_links": down},
                )
            )
        # Counters are cumulative since driver load: only their growth between cycles is news.
        rising: dict[str, int] = {}
        worst_link_rate = 0.0
        for link in gpu.nvlinks:
            for counter in link.COUNTERS:
                key = f"nvlink|{gpu.uuid}|{link.link}|{counter}"
                delta = ctx.state.counter_delta(key, getattr(link, counter), ctx.now)
                if delta is not None and delta.delta:
                    rising[counter] = rising.get(counter, 0) + delta.delta
                    worst_link_rate = max(worst_link_rate, delta.per_minute)
        if rising:
            reset_rate = ctx.config.nvlink_errors_per_minute_reset
            severity = Severity.RESET if worst_link_rate >= reset_rate else Severity.MONITOR
            findings.append(
                Finding(
                    "nvlink",
                    gpu.label,
                    severity,
                    f"NVLink error counters rising (worst link {worst_link_rate:.0f}/min): "
                    + ", ".join(f"{k} +{v}" for k, v in sorted(rising.items())),
                    {"increase": rising, "worst_link_per_minute": worst_link_rate},
                )
            )
    return findings or passed("nvlink", "NVLinks up, counters steady" if expected else "no NVLinks expected")


# -- Xids -----------------------------------------------------------------------------------
def _gpu_for_event(event: XidEvent, gpus: list[GpuSnapshot]) -> tuple[str, str | None]:
    """(finding label, architecture) of the GPU an Xid names."""
    for gpu in gpus:
        if (
            (event.uuid and gpu.uuid == event.uuid)
            or (event.pci_bus_id and normalize_bus_id(gpu.pci_bus_id) == normalize_bus_id(event.pci_bus_id))
            or (event.uuid is None and event.pci_bus_id is None and event.gpu_index == gpu.index)
        ):
            return gpu.label, gpu.architecture
    if event.pci_bus_id:
        return f"pci:{normalize_bus_id(event.pci_bus_id)}", None
    return (str(event.gpu_index) if event.gpu_index is not None else NODE), None


def read_kernel_xids(ctx: CheckContext) -> list[XidEvent]:
    """New Xid lines from the kernel log, once each: cursor per boot, reset on reboot."""
    log = ctx.host.kernel_log()
    if log is None:
        return []
    boot_id = log.boot_id()
    position = ctx.state.kernel_log
    if position.get("boot_id") != boot_id:
        # A new boot: the old cursor means nothing and the old boot's Xids are forgotten.
        ctx.state.kernel_log = position = {"boot_id": boot_id, "cursor": None}
        ctx.state.xids = {k: v for k, v in ctx.state.xids.items() if v.get("boot_id") == boot_id}
    try:
        lines, cursor = log.read_after(position.get("cursor"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return []  # the NVML event stream still works; the next cycle retries
    position["cursor"] = cursor
    events = []
    for line in lines:
        event = parse_xid_line(line.text, line.timestamp)
        if event is not None:
            events.append(event)
    return events


@register("xid", "lightweight", "Xid errors from NVML events and the kernel log", needs_reading=False)
def check_xid(ctx: CheckContext) -> list[Finding]:
    boot_id = ctx.state.kernel_log.get("boot_id")
    events = list(ctx.xid_events) + read_kernel_xids(ctx)
    boot_id = ctx.state.kernel_log.get("boot_id") or boot_id
    for event in events:
        label, arch = _gpu_for_event(event, ctx.gpus)
        info = ctx.catalog.classify(event.xid, event.message, arch)
        if not info.known:
            ctx.catalog.report_unknown(event.xid, event.message)
        key = f"{label}|{event.xid}"
        record = ctx.state.xids.get(key)
        when = event.timestamp or ctx.now
        if record is None:
            record = ctx.state.xids[key] = {
                "xid": event.xid,
                "gpu": label,
                "first_seen": when,
                "count": 0,
                "sources": [],
                "boot_id": boot_id,
                "severity": info.severity.name,
            }
        elif event.source in record["sources"] or event.xid == 154:
            record["count"] += 1  # a repeat, not the same event seen through another source
        if record["count"] == 0:
            record["count"] = 1
        if event.source not in record["sources"]:
            record["sources"].append(event.source)
        # Xid 154's latest recovery action replaces the previous one; otherwise keep the worst.
        if event.xid == 154 or info.severity >= Severity.parse(record["severity"]):
            record.update(
                severity=info.severity.name,
                name=info.name,
                action=info.action,
                window=info.window_seconds,
                message=event.message,
            )
        record["last_seen"] = max(record.get("last_seen", when), when)
    findings = []
    for key, record in list(ctx.state.xids.items()):
        window = record.get("window")
        if window is not None and ctx.now - record["last_seen"] > window:
            del ctx.state.xids[key]  # outside its window: history, not news
            continue
        severity = Severity.parse(record["severity"])
        findings.append(
            Finding(
                "xid",
                record["gpu"],
                severity,
                f"Xid {record['xid']} ({record['name']}) x{record['count']}: {record['action']}",
                {
                    k: record.get(k)
                    for k in ("xid", "count", "first_seen", "last_seen", "sources", "message", "window")
                },
            )
        )
    return findings or passed("xid", "no Xid errors in their windows")


# -- periodic: the host around the GPUs -----------------------------------------------------
@register(
    "fabric_manager",
    "periodic",
    "nvidia-fabricmanager active where NVSwitches are present",
    needs_reading=False,
)
def check_fabric_manager(ctx: CheckContext) -> list[Finding]:
    if not ctx.profile.nvswitch:
        return passed("fabric_manager", "no NVSwitch in this profile")
    active = ctx.host.service_active(ctx.config.fabric_manager_unit)
    if active is None:
        raise CheckUnavailable("cannot ask systemd whether the fabric manager runs")
    if not active:
        return [
            Finding(
                "fabric_manager",
                NODE,
                Severity.RESET,
                f"{ctx.config.fabric_manager_unit} is not active: NVSwitch GPUs cannot run CUDA work; "
                "restart it (and reset the GPUs if it fails)",
                {"unit": ctx.config.fabric_manager_unit},
            )
        ]
    return passed("fabric_manager", f"{ctx.config.fabric_manager_unit} active")


@register("rdma_devices", "periodic", "EFA / InfiniBand device count vs the profile", needs_reading=False)
def check_rdma_devices(ctx: CheckContext) -> list[Finding]:
    findings = []
    for kind, expected, probe in (
        ("EFA", ctx.profile.efa_devices, ctx.host.efa_device_count),
        ("InfiniBand", ctx.profile.ib_devices, ctx.host.infiniband_device_count),
    ):
        if not expected:
            continue
        seen = probe()
        if seen is None:
            raise CheckUnavailable(f"cannot count {kind} devices")
        if seen < expected:
            findings.append(
                Finding(
                    "rdma_devices",
                    NODE,
                    Severity.REBOOT,
                    f"{seen} of {expected} {kind} devices; drain and reboot",
                    {"kind": kind, "seen": seen, "expected": expected},
                )
            )
    return findings or passed("rdma_devices", "RDMA devices as expected")


# -- intensive: DCGM diagnostics ------------------------------------------------------------
@register(
    "dcgm_diag",
    "intensive",
    "DCGM diagnostics (dcgmi diag -r N -j) when dcgmi is installed",
    needs_reading=False,
)
def check_dcgm_diag(ctx: CheckContext) -> list[Finding]:
    level, timeout = ctx.config.dcgm_level, ctx.config.dcgm_timeout
    try:
        output = ctx.host.dcgm_diag(level, timeout)
    except subprocess.TimeoutExpired:
        return [
            Finding(
                "dcgm_diag",
                NODE,
                Severity.MONITOR,
                f"dcgmi diag -r {level} timed out after {timeout:.0f}s",
                {"level": level},
            )
        ]
    except OSError as exc:
        raise CheckUnavailable(str(exc)) from exc
    if output is None:
        return passed("dcgm_diag", "dcgmi not installed; skipped")
    try:
        result = parse_dcgm_diag(output)
    except DcgmParseError as exc:
        raise CheckUnavailable(str(exc)) from exc
    labels = {gpu.index: gpu.label for gpu in ctx.gpus}
    findings = [
        Finding(
            "dcgm_diag",
            labels.get(p.gpu, str(p.gpu)) if p.gpu is not None else NODE,
            p.severity,
            f"{p.test}: {p.status}: {p.message}",
            {
                "error_id": p.error_id,
                "dcgm_severity": p.dcgm_severity,
                "level": level,
                "dcgm_version": result.dcgm_version,
                **p.evidence,
            },
        )
        for p in result.problems
    ]
    return findings or passed(
        "dcgm_diag",
        f"dcgmi diag -r {level}: {result.tests_run} tests passed",
        dcgm_version=result.dcgm_version,
    )
