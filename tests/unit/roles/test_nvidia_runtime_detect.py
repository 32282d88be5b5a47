"""The nvidia_runtime GPU fact, read from a fake /sys and /proc tree through the real role."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.ansible

NVIDIA = "0x10de"


def add_pci_device(sysfs: Path, address: str, vendor: str, pci_class: str) -> None:
    device = sysfs / "bus" / "pci" / "devices" / address
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor + "\n")
    (device / "class").write_text(pci_class + "\n")


@pytest.fixture
def fake_host(tmp_path):
    sysfs, procfs = tmp_path / "sys", tmp_path / "proc"
    (sysfs / "bus" / "pci" / "devices").mkdir(parents=True)
    procfs.mkdir()
    return sysfs, procfs, tmp_path / "dgx-release"


def detect(ansible_playbook, sysfs, procfs, dgx_release, **extra):
    tasks = [
        {"name": "Run the detection", "ansible.builtin.include_role": {
            "name": "gpufleet.cluster.nvidia_runtime", "tasks_from": "detect"}},
        {"name": "Show the fact", "ansible.builtin.debug": {
            "msg": {"gpu": "{{ nvidia_runtime_gpu }}", "present": "{{ nvidia_runtime_gpu_present }}"}}},
    ]
    result = ansible_playbook(tasks, extra_vars={
        "nvidia_runtime_sysfs_root": str(sysfs), "nvidia_runtime_procfs_root": str(procfs),
        "nvidia_runtime_dgx_release_file": str(dgx_release), **extra})
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.changed() == 0
    return result.task("Show the fact")["msg"]


def test_no_nvidia_device_is_no_gpu(ansible_playbook, fake_host):
    sysfs, procfs, dgx = fake_host
    add_pci_device(sysfs, "0000:00:02.0", "0x8086", "0x030000")  # an Intel VGA controller
    add_pci_device(sysfs, "0000:00:03.0", "0x1af4", "0x020000")
    fact = detect(ansible_playbook, sysfs, procfs, dgx)
    assert fact["present"] is False
    assert fact["gpu"]["pci_devices"] == []
    assert fact["gpu"]["dgx"] is False
    assert fact["gpu"]["driver_loaded"] is False


def test_nvidia_display_and_3d_controllers_count_other_nvidia_functions_do_not(ansible_playbook, fake_host):
    sysfs, procfs, dgx = fake_host
    add_pci_device(sysfs, "0000:3b:00.0", NVIDIA, "0x030200")  # 3D controller (A100, H100)
    add_pci_device(sysfs, "0000:5e:00.0", NVIDIA, "0x030000")  # VGA-class GPU
    add_pci_device(sysfs, "0000:5e:00.1", NVIDIA, "0x040300")  # its HDMI audio function
    add_pci_device(sysfs, "0000:8a:00.0", NVIDIA, "0x068000")  # NVSwitch (bridge class)
    add_pci_device(sysfs, "0000:00:02.0", "0x8086", "0x030200")
    fact = detect(ansible_playbook, sysfs, procfs, dgx)
    assert fact["present"] is True
    assert fact["gpu"]["pci_devices"] == ["0000:3b:00.0", "0000:5e:00.0"]
    assert int(fact["gpu"]["count"]) == 2


def test_dgx_from_release_file_and_driver_version_from_proc(ansible_playbook, fake_host):
    sysfs, procfs, dgx = fake_host
    add_pci_device(sysfs, "0000:3b:00.0", NVIDIA, "0x030200")
    dgx.write_text('DGX_NAME="DGX Server"\n')
    (procfs / "driver" / "nvidia").mkdir(parents=True)
    (procfs / "driver" / "nvidia" / "version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.90.07  Fri May 31 09:35:42 UTC 2024\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    fact = detect(ansible_playbook, sysfs, procfs, dgx)
    assert fact["gpu"]["dgx"] is True
    assert fact["gpu"]["driver_loaded"] is True
    assert fact["gpu"]["driver_version"] == "550.90.07"


def test_dgx_from_dmi_product_name(ansible_playbook, fake_host):
    sysfs, procfs, dgx = fake_host
    add_pci_device(sysfs, "0000:3b:00.0", NVIDIA, "0x030200")
    (sysfs / "class" / "dmi" / "id").mkdir(parents=True)
    (sysfs / "class" / "dmi" / "id" / "product_name").write_text("DGX H100\n")
    fact = detect(ansible_playbook, sysfs, procfs, dgx)
    assert fact["gpu"]["dgx"] is True
    assert fact["gpu"]["product_name"] == "DGX H100"
