"""The NVML backend, on nvidia-ml-py (the ``pynvml`` module).

Every NVML error is put in exactly one of three classes (see ``classify``):

* ``unavailable``: the monitor is broken (library missing, driver not loaded,
  NVML not initialised, driver/library mismatch). Raised as BackendUnavailable;
  the node's status becomes ``unknown``, never a GPU fault.
* ``absent``: the GPU or driver does not support the query. The field is None.
* ``fault``: anything else (GPU is lost, reset required, corrupted infoROM,
  timeout, ...). The GPU is reported as a GpuReadError, which the
  ``nvml_responsive`` check turns into a finding.

``pynvml`` functions are looked up on the module at call time, so tests replace
them at the module boundary (monkeypatch) and keep NVML's real error classes.
"""

from __future__ import annotations

import importlib
import time
from types import ModuleType
from typing import Any

from gpufleet.gpu.base import (
    BackendUnavailable,
    BlockingCallGuard,
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

UNAVAILABLE_ERRORS = frozenset(
    {"Uninitialized", "DriverNotLoaded", "LibraryNotFound", "LibRmVersionMismatch"}
)
# NoPermission on one query (e.g. retired pages as non-root) hides that field only.
ABSENT_ERRORS = frozenset(
    {"NotSupported", "FunctionNotFound", "InvalidArgument", "NotFound", "NoData", "NoPermission"}
)

ARCHITECTURES = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
    13: "rubin",
}


READ_TIMEOUT = 30.0  # seconds one reading of all GPUs may take


class _GpuFault(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlBackend(GpuBackend):
    name = "nvml"

    def __init__(
        self,
        nvml: ModuleType | None = None,
        host_probe: HostProbe | None = None,
        read_timeout: float = READ_TIMEOUT,
    ):
        self._nvml_module = nvml
        # NVML can hang in the driver (a GPU falling off the bus): a read gets a deadline.
        self._guard = BlockingCallGuard("NVML read", read_timeout)
        self._initialised = False
        self._event_set = None
        self._uuid_index: dict[str, int] = {}
        self._host_probe = host_probe
        self._error_names: dict[int, str] | None = None

    # -- error handling -------------------------------------------------------------------
    @property
    def nvml(self) -> ModuleType:
        if self._nvml_module is None:
            try:
                self._nvml_module = importlib.import_module("pynvml")
            except ImportError as exc:
                raise BackendUnavailable(f"nvidia-ml-py is not installed: {exc}") from exc
        return self._nvml_module

    def error_name(self, exc: BaseException) -> str:
        """NVML error name without prefix ("GpuIsLost") from an NVMLError."""
        if self._error_names is None:
            self._error_names = {
                getattr(self.nvml, attr): "".join(
                    p.capitalize() for p in attr[len("NVML_ERROR_") :].split("_")
                )
                for attr in dir(self.nvml)
                if attr.startswith("NVML_ERROR_")
            }
        return self._error_names.get(getattr(exc, "value", None), "Unknown")

    def classify(self, exc: BaseException) -> str:
        name = self.error_name(exc)
        if name in UNAVAILABLE_ERRORS:
            return "unavailable"
        if name in ABSENT_ERRORS:
            return "absent"
        return "fault"

    def _call(self, fn_name: str, *args: Any) -> Any:
        """Call pynvml.<fn_name>; a fault raises _GpuFault, a broken monitor BackendUnavailable."""
        try:
            return getattr(self.nvml, fn_name)(*args)
        except self.nvml.NVMLError as exc:
            kind = self.classify(exc)
            if kind == "unavailable":
                raise BackendUnavailable(f"{fn_name}: {exc}") from exc
            if kind == "absent":
                raise _Absent() from exc
            raise _GpuFault(self.error_name(exc), f"{fn_name}: {exc}") from exc

    def _optional(self, fn_name: str, *args: Any) -> Any:
        """Like _call, but an unsupported query gives None."""
        try:
            return self._call(fn_name, *args)
        except _Absent:
            return None

    # -- lifecycle ------------------------------------------------------------------------
    def _ensure_init(self) -> None:
        if self._initialised:
            return
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            raise BackendUnavailable(f"NVML cannot start: {exc}") from exc
        except OSError as exc:  # the shared library itself failed to load
            raise BackendUnavailable(f"NVML cannot start: {exc}") from exc
        self._initialised = True

    def close(self) -> None:
        if not self._initialised:
            return
        try:
            if self._event_set is not None:
                self.nvml.nvmlEventSetFree(self._event_set)
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass
        self._initialised = False
        self._event_set = None

    def host_probe(self) -> HostProbe:
        if self._host_probe is None:
            from gpufleet.gpu.host import SystemHostProbe

            self._host_probe = SystemHostProbe()
        return self._host_probe

    # -- reading --------------------------------------------------------------------------
    def read(self) -> NodeReading:
        """One reading of every GPU, within `read_timeout` (else BackendUnavailable: status unknown)."""
        return self._guard.call(self._read)

    def _read(self) -> NodeReading:
        self._ensure_init()
        try:
            count = self._call("nvmlDeviceGetCount")
            driver = self._optional("nvmlSystemGetDriverVersion")
        except (_GpuFault, _Absent) as exc:
            raise BackendUnavailable(f"cannot count GPUs: {exc}") from exc
        reading = NodeReading(device_count=count, gpus=[], driver_version=_text(driver) if driver else None)
        for index in range(count):
            try:
                snapshot = self._read_gpu(index)
            except _GpuFault as fault:
                reading.errors.append(GpuReadError(index, fault.code, str(fault)))
                continue
            self._uuid_index[snapshot.uuid] = index
            reading.gpus.append(snapshot)
        return reading

    def _read_gpu(self, index: int) -> GpuSnapshot:
        nv = self.nvml
        try:
            handle = self._call("nvmlDeviceGetHandleByIndex", index)
            uuid = _text(self._call("nvmlDeviceGetUUID", handle))
        except _Absent as exc:
            raise _GpuFault("NotFound", f"GPU {index} has no handle") from exc
        pci = self._optional("nvmlDeviceGetPciInfo", handle)
        memory = self._optional("nvmlDeviceGetMemoryInfo", handle)
        arch = self._optional("nvmlDeviceGetArchitecture", handle)
        power_mw = self._optional("nvmlDeviceGetPowerUsage", handle)
        limit_mw = self._optional("nvmlDeviceGetEnforcedPowerLimit", handle)
        persistence = self._optional("nvmlDeviceGetPersistenceMode", handle)
        ecc_mode = self._optional("nvmlDeviceGetEccMode", handle)
        utilization = self._optional("nvmlDeviceGetUtilizationRates", handle)
        reasons = self._optional("nvmlDeviceGetCurrentClocksEventReasons", handle)
        if reasons is None:
            reasons = self._optional("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return GpuSnapshot(
            index=index,
            uuid=uuid,
            pci_bus_id=_text(pci.busId) if pci is not None else "",
            model=_text(self._call("nvmlDeviceGetName", handle)),
            architecture=ARCHITECTURES.get(arch) if arch is not None else None,
            minor_number=self._optional("nvmlDeviceGetMinorNumber", handle),
            memory_total_mib=memory.total // (1024 * 1024) if memory is not None else None,
            memory_used_mib=memory.used // (1024 * 1024) if memory is not None else None,
            temperature_c=self._optional("nvmlDeviceGetTemperature", handle, nv.NVML_TEMPERATURE_GPU),
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            power_limit_w=limit_mw / 1000.0 if limit_mw is not None else None,
            clock_sm_mhz=self._optional("nvmlDeviceGetClockInfo", handle, nv.NVML_CLOCK_SM),
            clock_sm_max_mhz=self._optional("nvmlDeviceGetMaxClockInfo", handle, nv.NVML_CLOCK_SM),
            clock_mem_mhz=self._optional("nvmlDeviceGetClockInfo", handle, nv.NVML_CLOCK_MEM),
            throttle_reasons=reasons,
            persistence_mode=persistence == nv.NVML_FEATURE_ENABLED if persistence is not None else None,
            ecc_enabled=ecc_mode[0] == nv.NVML_FEATURE_ENABLED if ecc_mode is not None else None,
            ecc=self._read_ecc(handle),
            remapped_rows=self._read_remapped_rows(handle),
            retired_pages=self._read_retired_pages(handle),
            pcie=PcieLink(
                gen_current=self._optional("nvmlDeviceGetCurrPcieLinkGeneration", handle),
                gen_max=self._optional("nvmlDeviceGetMaxPcieLinkGeneration", handle),
                width_current=self._optional("nvmlDeviceGetCurrPcieLinkWidth", handle),
                width_max=self._optional("nvmlDeviceGetMaxPcieLinkWidth", handle),
                replay_counter=self._optional("nvmlDeviceGetPcieReplayCounter", handle),
            ),
            nvlinks=self._read_nvlinks(handle),
            utilization_gpu_pct=utilization.gpu if utilization is not None else None,
            utilization_mem_pct=utilization.memory if utilization is not None else None,
        )

    def _read_ecc(self, handle: Any) -> EccCounts:
        nv = self.nvml
        corrected, uncorrected = nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        volatile, aggregate = nv.NVML_VOLATILE_ECC, nv.NVML_AGGREGATE_ECC

        def by_location(counter: int, location: int) -> int | None:
            return self._optional("nvmlDeviceGetMemoryErrorCounter", handle, uncorrected, counter, location)

        return EccCounts(
            volatile_corrected=self._optional("nvmlDeviceGetTotalEccErrors", handle, corrected, volatile),
            volatile_uncorrected=self._optional("nvmlDeviceGetTotalEccErrors", handle, uncorrected, volatile),
            aggregate_corrected=self._optional("nvmlDeviceGetTotalEccErrors", handle, corrected, aggregate),
            aggregate_uncorrected=self._optional(
                "nvmlDeviceGetTotalEccErrors", handle, uncorrected, aggregate
            ),
            aggregate_uncorrected_sram=by_location(aggregate, nv.NVML_MEMORY_LOCATION_SRAM),
            aggregate_uncorrected_dram=by_location(aggregate, nv.NVML_MEMORY_LOCATION_DRAM),
            volatile_uncorrected_sram=by_location(volatile, nv.NVML_MEMORY_LOCATION_SRAM),
            volatile_uncorrected_dram=by_location(volatile, nv.NVML_MEMORY_LOCATION_DRAM),
        )

    def _read_remapped_rows(self, handle: Any) -> RemappedRows | None:
        rows = self._optional("nvmlDeviceGetRemappedRows", handle)
        if rows is None:
            return None
        correctable, uncorrectable, pending, failure = rows
        return RemappedRows(correctable, uncorrectable, bool(pending), bool(failure))

    def _read_retired_pages(self, handle: Any) -> RetiredPages | None:
        nv = self.nvml
        single = self._optional(
            "nvmlDeviceGetRetiredPages", handle, nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
        )
        double = self._optional(
            "nvmlDeviceGetRetiredPages", handle, nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
        )
        if single is None and double is None:
            return None
        pending = self._optional("nvmlDeviceGetRetiredPagesPendingStatus", handle)
        return RetiredPages(len(single or []), len(double or []), bool(pending))

    def _read_nvlinks(self, handle: Any) -> list[NvLink]:
        nv = self.nvml
        counters = {
            "replay_errors": nv.NVML_NVLINK_ERROR_DL_REPLAY,
            "recovery_errors": nv.NVML_NVLINK_ERROR_DL_RECOVERY,
            "crc_flit_errors": nv.NVML_NVLINK_ERROR_DL_CRC_FLIT,
            "crc_data_errors": nv.NVML_NVLINK_ERROR_DL_CRC_DATA,
            "ecc_data_errors": nv.NVML_NVLINK_ERROR_DL_ECC_DATA,
        }
        links = []
        for link in range(nv.NVML_NVLINK_MAX_LINKS):
            state = self._optional("nvmlDeviceGetNvLinkState", handle, link)
            if state is None:
                if link == 0:
                    return []  # no NVLink on this GPU
                continue
            values = {
                attr: self._optional("nvmlDeviceGetNvLinkErrorCounter", handle, link, counter)
                for attr, counter in counters.items()
            }
            links.append(NvLink(link=link, active=state == nv.NVML_FEATURE_ENABLED, **values))
        return links

    # -- Xid events -----------------------------------------------------------------------
    def _ensure_event_set(self) -> None:
        if self._event_set is not None:
            return
        self._ensure_init()
        nv = self.nvml
        event_set = nv.nvmlEventSetCreate()
        count = self._call("nvmlDeviceGetCount")
        for index in range(count):
            try:
                handle = self._call("nvmlDeviceGetHandleByIndex", index)
                self._uuid_index[_text(self._call("nvmlDeviceGetUUID", handle))] = index
                self._call("nvmlDeviceRegisterEvents", handle, nv.nvmlEventTypeXidCriticalError, event_set)
            except (_Absent, _GpuFault):
                continue  # that GPU cannot deliver events; the periodic read reports it
        self._event_set = event_set

    def wait_xid_events(self, timeout: float) -> list[XidEvent]:
        self._ensure_event_set()
        events: list[XidEvent] = []
        wait_ms = max(0, int(timeout * 1000))
        while True:
            try:
                data = self.nvml.nvmlEventSetWait_v2(self._event_set, wait_ms)
            except self.nvml.NVMLError as exc:
                name = self.error_name(exc)
                if name in UNAVAILABLE_ERRORS:
                    raise BackendUnavailable(f"nvmlEventSetWait_v2: {exc}") from exc
                # Timeout means "no more events"; a lost GPU shows in the next read().
                return events
            wait_ms = 0  # drain whatever else is queued without blocking
            if not data.eventType & self.nvml.nvmlEventTypeXidCriticalError:
                continue
            uuid = None
            try:
                uuid = _text(self.nvml.nvmlDeviceGetUUID(data.device))
            except self.nvml.NVMLError:
                pass
            events.append(
                XidEvent(
                    xid=int(data.eventData),
                    gpu_index=self._uuid_index.get(uuid) if uuid else None,
                    uuid=uuid,
                    timestamp=time.time(),
                    source="nvml",
                )
            )


class _Absent(Exception):
    """The query is not supported on this GPU or driver."""
