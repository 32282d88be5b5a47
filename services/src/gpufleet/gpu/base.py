"""The device-backend interface: what every backend reports about a node's GPUs.

A field that the driver does not support on a GPU is ``None`` (absent), never
zero: "no data" and "no errors" are different facts and the checks treat them
differently.
"""

from __future__ import annotations

import abc
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id() -> str:
    """This boot's id (changes on every reboot); "unknown" when the kernel does not say."""
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return "unknown"


class BackendUnavailable(RuntimeError):
    """The monitor itself is broken (NVML cannot start, driver not loaded, ...).

    This is never evidence of a GPU fault: the node's status becomes ``unknown``.
    """


class GpuReadError(RuntimeError):
    """Reading one GPU failed in a way that says something about that GPU."""

    def __init__(self, index: int, code: str, message: str, uuid: str | None = None):
        super().__init__(f"GPU {index}: {code}: {message}")
        self.index = index
        self.code = code  # NVML error name without prefix, e.g. "GpuIsLost"
        self.message = message
        self.uuid = uuid


@dataclass
class EccCounts:
    """ECC error counters. ``volatile`` since the last driver load, ``aggregate`` lifetime."""

    volatile_corrected: int | None = None
    volatile_uncorrected: int | None = None
    aggregate_corrected: int | None = None
    aggregate_uncorrected: int | None = None
    # Split by memory location where the driver gives it (Ampere and later).
    aggregate_uncorrected_sram: int | None = None
    aggregate_uncorrected_dram: int | None = None
    volatile_uncorrected_sram: int | None = None
    volatile_uncorrected_dram: int | None = None


@dataclass
class RemappedRows:
    """Row remapping (Ampere and later)."""

    correctable: int = 0
    uncorrectable: int = 0
    pending: bool = False
    failure: bool = False


@dataclass
class RetiredPages:
    """Dynamic page retirement (Volta and older)."""

    single_bit: int = 0
    double_bit: int = 0
    pending: bool = False


@dataclass
class PcieLink:
    gen_current: int | None = None
    gen_max: int | None = None
    width_current: int | None = None
    width_max: int | None = None
    replay_counter: int | None = None


@dataclass
class NvLink:
    link: int
    active: bool
    # Cumulative counters (since driver load); checks look at their rates.
    replay_errors: int | None = None
    recovery_errors: int | None = None
    crc_flit_errors: int | None = None
    crc_data_errors: int | None = None
    ecc_data_errors: int | None = None

    COUNTERS = ("replay_errors", "recovery_errors", "crc_flit_errors", "crc_data_errors", "ecc_data_errors")


@dataclass
class GpuSnapshot:
    index: int
    uuid: str
    pci_bus_id: str
    model: str
    architecture: str | None = None  # lower-case: ampere, hopper, blackwell, ...
    # Its device node is /dev/nvidia<minor_number>; the minor need not equal the NVML index.
    minor_number: int | None = None
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    clock_sm_mhz: int | None = None
    clock_sm_max_mhz: int | None = None
    clock_mem_mhz: int | None = None
    throttle_reasons: int | None = None  # NVML clocks-event bitmask
    persistence_mode: bool | None = None
    ecc_enabled: bool | None = None
    ecc: EccCounts = field(default_factory=EccCounts)
    remapped_rows: RemappedRows | None = None
    retired_pages: RetiredPages | None = None
    pcie: PcieLink = field(default_factory=PcieLink)
    nvlinks: list[NvLink] = field(default_factory=list)
    utilization_gpu_pct: int | None = None
    utilization_mem_pct: int | None = None

    @property
    def label(self) -> str:
        """How findings name this GPU: index and UUID."""
        return f"{self.index}:{self.uuid}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NodeReading:
    """One read of every GPU on the node."""

    device_count: int
    gpus: list[GpuSnapshot]
    errors: list[GpuReadError] = field(default_factory=list)
    driver_version: str | None = None


@dataclass
class XidEvent:
    xid: int
    gpu_index: int | None
    uuid: str | None = None
    pci_bus_id: str | None = None
    message: str = ""
    timestamp: float = 0.0  # unix seconds
    source: str = "nvml"  # nvml | kernel-log | simulated


class HostProbe:
    """Facts about the host outside NVML. The base answers "unknown" (None) to everything but the boot id."""

    def boot_id(self) -> str:
        return read_boot_id()

    def service_active(self, unit: str) -> bool | None:
        return None

    def infiniband_device_count(self) -> int | None:
        return None

    def efa_device_count(self) -> int | None:
        return None

    def kernel_log(self):  # -> gpufleet.gpu.kernel_log.KernelLogSource | None
        return None

    def dcgm_diag(self, level: int, timeout: float) -> str | None:
        """The JSON text of ``dcgmi diag -r LEVEL -j`` or None when dcgmi is absent."""
        return None


class GpuBackend(abc.ABC):
    """A source of GPU readings and Xid events for one node."""

    name: str = "abstract"

    @abc.abstractmethod
    def read(self) -> NodeReading:
        """Read every GPU. Raises BackendUnavailable when the monitor cannot work at all."""

    @abc.abstractmethod
    def wait_xid_events(self, timeout: float) -> list[XidEvent]:
        """Xid events since the last call; blocks up to ``timeout`` seconds for the first one."""

    def host_probe(self) -> HostProbe:
        return HostProbe()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release driver handles."""

    def __enter__(self) -> GpuBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockingCallGuard:
    """Runs a call that can block inside C (NVML) on a worker thread, with a deadline.

    A call that overruns raises BackendUnavailable and its thread is left to finish on its own;
    until it does, further calls fail at once instead of piling up more blocked threads.
    """

    def __init__(self, what: str, timeout: float):
        self.what = what
        self.timeout = timeout
        self._stuck: threading.Thread | None = None
        self._stuck_since = 0.0

    def call(self, fn, *args):
        if self._stuck is not None:
            if self._stuck.is_alive():
                raise BackendUnavailable(
                    f"{self.what}: a call is still blocked after "
                    f"{time.monotonic() - self._stuck_since:.0f} s; not starting another"
                )
            self._stuck = None
        outcome: dict = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["value"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                outcome["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=run, name=f"{self.what}-call", daemon=True)
        started = time.monotonic()
        worker.start()
        if not done.wait(self.timeout):
            self._stuck, self._stuck_since = worker, started
            raise BackendUnavailable(f"{self.what} did not answer within {self.timeout:.0f} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
