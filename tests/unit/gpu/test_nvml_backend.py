"""The nvml backend with nvidia-ml-py's functions replaced at the module boundary.

The real ``pynvml`` module stays (its constants and NVMLError classes); only the
functions that would call libnvidia-ml are swapped for a fake 2-GPU node.
"""

from types import SimpleNamespace

import pynvml
import pytest
from gpufleet.gpu.base import BackendUnavailable
from gpufleet.gpu.nvml import NvmlBackend


def nvml_error(code):
    return pynvml.NVMLError(code)


class FakeNode:
    """Two GPUs: 0 is an H100 with NVLink, 1 has per-query faults set by the tests."""

    def __init__(self):
        self.count = 2
        self.failures: dict[tuple[str, int], int] = {}  # (function, handle) -> NVML error code
        self.init_error: int | None = None
        self.events: list = []
        self.registered: list = []

    def fn(self, name, result):
        def call(handle, *args):
            code = self.failures.get((name, handle))
            if code is not None:
                raise nvml_error(code)
            return result(handle, *args) if callable(result) else result

        return call

    def install(self, monkeypatch):
        def init():
            if self.init_error is not None:
                raise nvml_error(self.init_error)

        def wait(event_set, timeout_ms):
            if not self.events:
                raise nvml_error(pynvml.NVML_ERROR_TIMEOUT)
            return self.events.pop(0)

        def nvlink_state(handle, link):
            if handle == 1 or link >= 4:
                raise nvml_error(
                    pynvml.NVML_ERROR_NOT_SUPPORTED if handle == 1 else pynvml.NVML_ERROR_INVALID_ARGUMENT
                )
            return pynvml.NVML_FEATURE_DISABLED if link == 2 else pynvml.NVML_FEATURE_ENABLED

        ecc = {  # (error type, counter type) -> value
            (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC): 7,
            (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC): 1,
            (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC): 70,
            (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC): 2,
        }
        functions = {
            "nvmlInit": init,
            "nvmlShutdown": lambda: None,
            "nvmlSystemGetDriverVersion": lambda: "550.90.07",
            "nvmlDeviceGetCount": lambda: self.count,
            "nvmlDeviceGetHandleByIndex": self.fn("nvmlDeviceGetHandleByIndex", lambda i: i),
            "nvmlDeviceGetUUID": self.fn("nvmlDeviceGetUUID", lambda h: f"GPU-{h:08d}"),
            "nvmlDeviceGetName": self.fn("nvmlDeviceGetName", b"NVIDIA H100 80GB HBM3"),
            "nvmlDeviceGetPciInfo": self.fn(
                "nvmlDeviceGetPciInfo",
                lambda h: SimpleNamespace(busId=f"00000000:{0x18 + h:02X}:00.0".encode()),
            ),
            "nvmlDeviceGetMemoryInfo": self.fn(
                "nvmlDeviceGetMemoryInfo", SimpleNamespace(total=81559 * 2**20, used=1024 * 2**20)
            ),
            "nvmlDeviceGetArchitecture": self.fn("nvmlDeviceGetArchitecture", pynvml.NVML_DEVICE_ARCH_HOPPER),
            # /dev/nvidia<minor> in another order than NVML's indices, as on some hosts
            "nvmlDeviceGetMinorNumber": self.fn("nvmlDeviceGetMinorNumber", lambda h: 7 - h),
            "nvmlDeviceGetTemperature": self.fn("nvmlDeviceGetTemperature", 41),
            "nvmlDeviceGetPowerUsage": self.fn("nvmlDeviceGetPowerUsage", 123456),
            "nvmlDeviceGetEnforcedPowerLimit": self.fn("nvmlDeviceGetEnforcedPowerLimit", 700000),
            "nvmlDeviceGetClockInfo": self.fn(
                "nvmlDeviceGetClockInfo", lambda h, clock: 1980 if clock == 1 else 2619
            ),
            "nvmlDeviceGetMaxClockInfo": self.fn("nvmlDeviceGetMaxClockInfo", 1980),
            "nvmlDeviceGetCurrentClocksEventReasons": self.fn("nvmlDeviceGetCurrentClocksEventReasons", 0x41),
            # the pre-12.x name of the same query, used when the new one is not supported
            "nvmlDeviceGetCurrentClocksThrottleReasons": self.fn(
                "nvmlDeviceGetCurrentClocksThrottleReasons", 0x1
            ),
            "nvmlDeviceGetPersistenceMode": self.fn(
                "nvmlDeviceGetPersistenceMode", pynvml.NVML_FEATURE_ENABLED
            ),
            "nvmlDeviceGetEccMode": self.fn("nvmlDeviceGetEccMode", [1, 1]),
            "nvmlDeviceGetTotalEccErrors": self.fn(
                "nvmlDeviceGetTotalEccErrors", lambda h, e, c: ecc[(e, c)]
            ),
            "nvmlDeviceGetMemoryErrorCounter": self.fn(
                "nvmlDeviceGetMemoryErrorCounter",
                lambda h, e, c, loc: 3 if loc == pynvml.NVML_MEMORY_LOCATION_SRAM else 0,
            ),
            "nvmlDeviceGetRemappedRows": self.fn("nvmlDeviceGetRemappedRows", (2, 1, 1, 0)),
            "nvmlDeviceGetRetiredPages": self.fn("nvmlDeviceGetRetiredPages", [0x1000]),
            "nvmlDeviceGetRetiredPagesPendingStatus": self.fn("nvmlDeviceGetRetiredPagesPendingStatus", 0),
            "nvmlDeviceGetCurrPcieLinkGeneration": self.fn("nvmlDeviceGetCurrPcieLinkGeneration", 1),
            "nvmlDeviceGetMaxPcieLinkGeneration": self.fn("nvmlDeviceGetMaxPcieLinkGeneration", 5),
            "nvmlDeviceGetCurrPcieLinkWidth": self.fn("nvmlDeviceGetCurrPcieLinkWidth", 16),
            "nvmlDeviceGetMaxPcieLinkWidth": self.fn("nvmlDeviceGetMaxPcieLinkWidth", 16),
            "nvmlDeviceGetPcieReplayCounter": self.fn("nvmlDeviceGetPcieReplayCounter", 4),
            "nvmlDeviceGetNvLinkState": nvlink_state,
            "nvmlDeviceGetNvLinkErrorCounter": lambda h, link, counter: link * 10 + counter,
            "nvmlDeviceGetUtilizationRates": self.fn(
                "nvmlDeviceGetUtilizationRates", SimpleNamespace(gpu=0, memory=0)
            ),
            "nvmlEventSetCreate": lambda: "event-set",
            "nvmlDeviceRegisterEvents": lambda h, types, s: self.registered.append((h, types)),
            "nvmlEventSetWait_v2": wait,
            "nvmlEventSetFree": lambda s: None,
        }
        for name, fn in functions.items():
            monkeypatch.setattr(pynvml, name, fn)


@pytest.fixture
def node(monkeypatch):
    fake = FakeNode()
    fake.install(monkeypatch)
    return fake


def test_reads_every_field(node):
    reading = NvmlBackend().read()
    assert reading.device_count == 2 and reading.driver_version == "550.90.07" and reading.errors == []
    gpu = reading.gpus[0]
    assert gpu.uuid == "GPU-00000000" and gpu.model == "NVIDIA H100 80GB HBM3"
    assert gpu.pci_bus_id == "00000000:18:00.0" and gpu.architecture == "hopper"
    assert [g.minor_number for g in reading.gpus] == [7, 6]
    assert gpu.memory_total_mib == 81559 and gpu.memory_used_mib == 1024
    assert gpu.temperature_c == 41 and gpu.power_w == pytest.approx(123.456) and gpu.power_limit_w == 700.0
    assert gpu.clock_sm_mhz == 1980 and gpu.clock_mem_mhz == 2619 and gpu.throttle_reasons == 0x41
    assert gpu.persistence_mode is True and gpu.ecc_enabled is True
    assert (gpu.ecc.volatile_corrected, gpu.ecc.volatile_uncorrected) == (7, 1)
    assert (gpu.ecc.aggregate_corrected, gpu.ecc.aggregate_uncorrected) == (70, 2)
    assert gpu.ecc.aggregate_uncorrected_sram == 3 and gpu.ecc.aggregate_uncorrected_dram == 0
    assert (gpu.remapped_rows.correctable, gpu.remapped_rows.uncorrectable) == (2, 1)
    assert gpu.remapped_rows.pending is True and gpu.remapped_rows.failure is False
    assert gpu.retired_pages.single_bit == 1 and gpu.retired_pages.pending is False
    assert (gpu.pcie.gen_current, gpu.pcie.gen_max, gpu.pcie.width_max, gpu.pcie.replay_counter) == (
        1,
        5,
        16,
        4,
    )
    assert [(link.link, link.active) for link in gpu.nvlinks] == [(0, True), (1, True), (2, False), (3, True)]
    assert gpu.nvlinks[3].crc_flit_errors == 32  # link 3, counter DL_CRC_FLIT (2)
    assert reading.gpus[1].nvlinks == []  # NVLink not supported: no links, not a fault


def test_not_supported_is_absent_not_a_fault(node):
    for name in (
        "nvmlDeviceGetRemappedRows",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetPcieReplayCounter",
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetMinorNumber",
    ):
        node.failures[(name, 1)] = pynvml.NVML_ERROR_NOT_SUPPORTED
    reading = NvmlBackend().read()
    assert reading.errors == []
    gpu = reading.gpus[1]
    assert gpu.minor_number is None
    assert gpu.remapped_rows is None and gpu.temperature_c is None and gpu.pcie.replay_counter is None
    assert gpu.throttle_reasons == 0x1  # fell back to the older API
    assert reading.gpus[0].throttle_reasons == 0x41


def test_gpu_is_lost_is_a_per_gpu_fault(node):
    node.failures[("nvmlDeviceGetUUID", 1)] = pynvml.NVML_ERROR_GPU_IS_LOST
    reading = NvmlBackend().read()
    assert [g.index for g in reading.gpus] == [0]
    (error,) = reading.errors
    assert error.index == 1 and error.code == "GpuIsLost"


@pytest.mark.parametrize(
    "code", [pynvml.NVML_ERROR_RESET_REQUIRED, pynvml.NVML_ERROR_CORRUPTED_INFOROM, pynvml.NVML_ERROR_UNKNOWN]
)
def test_other_errors_on_a_field_are_faults(node, code):
    node.failures[("nvmlDeviceGetTemperature", 0)] = code
    reading = NvmlBackend().read()
    assert [e.index for e in reading.errors] == [0]


@pytest.mark.parametrize(
    "code",
    [
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        pynvml.NVML_ERROR_UNINITIALIZED,
        pynvml.NVML_ERROR_NO_PERMISSION,
    ],
)
def test_init_failure_is_backend_unavailable(node, code):
    node.init_error = code
    with pytest.raises(BackendUnavailable, match="NVML cannot start"):
        NvmlBackend().read()


def test_uninitialized_mid_read_is_backend_unavailable(node):
    node.failures[("nvmlDeviceGetTemperature", 0)] = pynvml.NVML_ERROR_UNINITIALIZED
    with pytest.raises(BackendUnavailable):
        NvmlBackend().read()


def test_backend_recovers_after_init_failure(node):
    backend = NvmlBackend()
    node.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    with pytest.raises(BackendUnavailable):
        backend.read()
    node.init_error = None
    assert backend.read().device_count == 2


def test_xid_events(node):
    backend = NvmlBackend()
    assert backend.wait_xid_events(0.01) == []
    assert node.registered == [
        (0, pynvml.nvmlEventTypeXidCriticalError),
        (1, pynvml.nvmlEventTypeXidCriticalError),
    ]
    node.events = [
        SimpleNamespace(device=1, eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=79),
        SimpleNamespace(device=0, eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=13),
    ]
    events = backend.wait_xid_events(1.0)
    assert [(e.xid, e.gpu_index, e.uuid) for e in events] == [
        (79, 1, "GPU-00000001"),
        (13, 0, "GPU-00000000"),
    ]
    assert all(e.source == "nvml" for e in events)


def test_event_wait_driver_gone_is_unavailable(node, monkeypatch):
    backend = NvmlBackend()
    backend.wait_xid_events(0)

    def gone(event_set, timeout):
        raise nvml_error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlEventSetWait_v2", gone)
    with pytest.raises(BackendUnavailable):
        backend.wait_xid_events(0)


def test_engine_on_nvml_backend_flags_gpu_faults(node):
    from gpufleet.health.engine import HealthEngine
    from gpufleet.health.severity import Severity

    node.failures[("nvmlDeviceGetUUID", 1)] = pynvml.NVML_ERROR_GPU_IS_LOST
    report = HealthEngine(
        NvmlBackend(), profile="workstation-1", checks=["nvml_responsive", "ecc", "memory_remap"]
    ).run(("lightweight",))
    found = {(f.check, f.severity) for f in report.findings}
    assert ("nvml_responsive", Severity.REBOOT) in found
    assert ("ecc", Severity.RESET) in found  # volatile uncorrected = 1 on GPU 0
    assert ("memory_remap", Severity.RESET) in found  # row remap pending on GPU 0


ALL_NVML_ERRORS = sorted(name for name in dir(pynvml) if name.startswith("NVML_ERROR_"))


@pytest.mark.parametrize("constant", ALL_NVML_ERRORS)
def test_every_nvml_error_has_one_meaning(constant):
    backend = NvmlBackend(nvml=pynvml)
    kind = backend.classify(nvml_error(getattr(pynvml, constant)))
    expected = {
        "NVML_ERROR_UNINITIALIZED": "unavailable",
        "NVML_ERROR_DRIVER_NOT_LOADED": "unavailable",
        "NVML_ERROR_LIBRARY_NOT_FOUND": "unavailable",
        "NVML_ERROR_LIB_RM_VERSION_MISMATCH": "unavailable",
        "NVML_ERROR_NOT_SUPPORTED": "absent",
        "NVML_ERROR_FUNCTION_NOT_FOUND": "absent",
        "NVML_ERROR_NO_PERMISSION": "absent",
        "NVML_ERROR_GPU_IS_LOST": "fault",
        "NVML_ERROR_RESET_REQUIRED": "fault",
        "NVML_ERROR_CORRUPTED_INFOROM": "fault",
        "NVML_ERROR_TIMEOUT": "fault",
        "NVML_ERROR_UNKNOWN": "fault",
    }
    assert kind in ("unavailable", "absent", "fault")
    if constant in expected:
        assert kind == expected[constant]
