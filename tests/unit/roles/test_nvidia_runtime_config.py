"""The configuration nvidia_runtime writes when forced on a node without GPUs (package step off)."""

from __future__ import annotations

import json

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.ansible

CRI = 'plugins."io.containerd.grpc.v1.cri"'


@pytest.fixture
def forced_vars(tmp_path):
    (tmp_path / "sys" / "bus" / "pci" / "devices").mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    docker_dir = tmp_path / "docker"
    docker_dir.mkdir()
    (docker_dir / "daemon.json").write_text(
        '{"log-driver": "journald", "runtimes": {"crun": {"path": "crun"}}}')
    return {
        "nvidia_runtime_force": True,
        "nvidia_runtime_manage_packages": False,
        "nvidia_runtime_sysfs_root": str(tmp_path / "sys"),
        "nvidia_runtime_procfs_root": str(tmp_path / "proc"),
        "nvidia_runtime_dgx_release_file": str(tmp_path / "dgx-release"),
        "nvidia_runtime_containerd_template": True,
        "nvidia_runtime_containerd_template_path": str(tmp_path / "containerd" / "config.toml.tmpl"),
        "nvidia_runtime_docker": True,
        "nvidia_runtime_docker_daemon_json": str(docker_dir / "daemon.json"),
        # This machine's own docker must not be restarted by a test.
        "nvidia_runtime_restart_services": False,
    }


def run_role(ansible_playbook, extra_vars):
    result = ansible_playbook(
        [{"name": "Apply nvidia_runtime",
          "ansible.builtin.include_role": {"name": "gpufleet.cluster.nvidia_runtime"}}],
        extra_vars=extra_vars)
    assert result.returncode == 0, result.stdout[-3000:]
    return result


def test_forced_run_renders_valid_configs_and_is_idempotent(ansible_playbook, forced_vars, tmp_path):
    first = run_role(ansible_playbook, forced_vars)
    assert first.changed() >= 2

    template = tomllib.loads((tmp_path / "containerd" / "config.toml.tmpl").read_text())
    cri = template["plugins"]["io.containerd.grpc.v1.cri"]
    # The CNI section survives, pointing at the directories k3s fills in.
    assert cri["cni"] == {"bin_dir": "{{ .NodeConfig.AgentConfig.CNIBinDir }}",
                          "conf_dir": "{{ .NodeConfig.AgentConfig.CNIConfDir }}"}
    assert cri["containerd"]["default_runtime_name"] == "nvidia"
    nvidia = cri["containerd"]["runtimes"]["nvidia"]
    assert nvidia["options"]["BinaryName"] == "/usr/bin/nvidia-container-runtime"
    assert "runc" in cri["containerd"]["runtimes"]

    daemon = json.loads((tmp_path / "docker" / "daemon.json").read_text())
    assert daemon["runtimes"]["nvidia"] == {"path": "/usr/bin/nvidia-container-runtime", "args": []}
    # Keys the site already had are kept.
    assert daemon["log-driver"] == "journald"
    assert daemon["runtimes"]["crun"] == {"path": "crun"}
    assert "default-runtime" not in daemon

    second = run_role(ansible_playbook, forced_vars)
    assert second.changed() == 0


def test_docker_default_runtime_is_opt_in(ansible_playbook, forced_vars, tmp_path):
    run_role(ansible_playbook, {**forced_vars, "nvidia_runtime_docker_default": True})
    daemon = json.loads((tmp_path / "docker" / "daemon.json").read_text())
    assert daemon["default-runtime"] == "nvidia"


def test_without_force_nothing_is_written(ansible_playbook, forced_vars, tmp_path):
    before = (tmp_path / "docker" / "daemon.json").read_text()
    result = run_role(ansible_playbook, {**forced_vars, "nvidia_runtime_force": False})
    assert result.changed() == 0
    message = result.task("gpufleet.cluster.nvidia_runtime : Skip this node, which has no NVIDIA GPU")["msg"]
    assert "no NVIDIA GPU found" in message and "nvidia_runtime_force" in message
    assert not (tmp_path / "containerd").exists()
    assert (tmp_path / "docker" / "daemon.json").read_text() == before


def test_check_mode_reports_the_changes_and_writes_nothing(ansible_playbook, forced_vars, tmp_path):
    before = (tmp_path / "docker" / "daemon.json").read_text()
    result = ansible_playbook(
        [{"name": "Apply nvidia_runtime",
          "ansible.builtin.include_role": {"name": "gpufleet.cluster.nvidia_runtime"}}],
        extra_vars=forced_vars, check=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.changed() >= 2
    assert not (tmp_path / "containerd" / "config.toml.tmpl").exists()
    assert (tmp_path / "docker" / "daemon.json").read_text() == before
