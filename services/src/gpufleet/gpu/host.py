"""Facts about the real host outside NVML: systemd units, RDMA devices, dcgmi, the kernel log."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from gpufleet.gpu.base import HostProbe

INFINIBAND_CLASS = Path("/sys/class/infiniband")


class SystemHostProbe(HostProbe):
    def __init__(self, sysfs_infiniband: Path = INFINIBAND_CLASS):
        self.sysfs_infiniband = sysfs_infiniband

    def service_active(self, unit: str) -> bool | None:
        systemctl = shutil.which("systemctl")
        if systemctl is None:
            return None
        proc = subprocess.run([systemctl, "is-active", "--quiet", unit], check=False, timeout=10)
        return proc.returncode == 0

    def _rdma_devices(self) -> list[tuple[str, str]]:
        """(device name, kernel driver) for each RDMA device."""
        if not self.sysfs_infiniband.is_dir():
            return []
        devices = []
        for entry in sorted(self.sysfs_infiniband.iterdir()):
            driver = entry / "device" / "driver"
            devices.append((entry.name, driver.resolve().name if driver.exists() else ""))
        return devices

    def efa_device_count(self) -> int | None:
        if not self.sysfs_infiniband.is_dir():
            return 0
        return sum(1 for _, driver in self._rdma_devices() if driver == "efa")

    def infiniband_device_count(self) -> int | None:
        if not self.sysfs_infiniband.is_dir():
            return 0
        return sum(1 for _, driver in self._rdma_devices() if driver != "efa")

    def kernel_log(self):
        from gpufleet.gpu.kernel_log import system_kernel_log

        return system_kernel_log()

    def dcgm_diag(self, level: int, timeout: float) -> str | None:
        dcgmi = shutil.which("dcgmi")
        if dcgmi is None:
            return None
        # dcgmi exits non-zero when a test fails; the JSON on stdout is still the answer.
        proc = subprocess.run(
            [dcgmi, "diag", "-r", str(level), "-j"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if not proc.stdout.strip():
            raise OSError(f"dcgmi diag gave no output (exit {proc.returncode}): {proc.stderr.strip()[:200]}")
        return proc.stdout
