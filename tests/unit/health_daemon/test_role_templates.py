"""The gpu_health_agent role's templates, rendered by ansible-playbook: a valid config, the unit."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpufleet.health.config import load_config
from gpufleet.health.severity import Severity

pytestmark = pytest.mark.ansible

ROLE = Path(__file__).resolve().parents[3] / "roles" / "gpu_health_agent"


def render(ansible_playbook, tmp_path, **role_vars):
    tasks = [
        {"name": "Defaults", "ansible.builtin.include_vars": {"file": str(ROLE / "defaults" / "main.yml")}},
        {
            "name": "Config",
            "ansible.builtin.template": {
                "src": str(ROLE / "templates" / "health.toml.j2"),
                "dest": str(tmp_path / "health.toml"),
                "mode": "0640",
            },
        },
        {
            "name": "Unit",
            "ansible.builtin.template": {
                "src": str(ROLE / "templates" / "gpufleet-health.service.j2"),
                "dest": str(tmp_path / "gpufleet-health.service"),
                "mode": "0644",
            },
        },
    ]
    extra = {"gpufleet_install_venv": "/opt/gpufleet", "inventory_hostname_short": "lab-2", **role_vars}
    result = ansible_playbook(tasks, extra_vars=extra)
    assert result.returncode == 0, result.stdout[-3000:]
    return load_config(tmp_path / "health.toml"), (tmp_path / "gpufleet-health.service").read_text()


def test_defaults_render_a_config_the_agent_accepts(ansible_playbook, tmp_path):
    config, unit = render(ansible_playbook, tmp_path)
    assert config.backend.type == "nvml" and config.interval == 300
    assert config.kubernetes.kubeconfig == "/etc/rancher/k3s/k3s.yaml" and config.kubernetes.enabled == "auto"
    assert config.kubernetes.max_fenced == "10%" and config.kubernetes.taint_level == Severity.RESET
    assert "ExecStart=/opt/gpufleet/bin/gpufleet health run --config /etc/gpufleet/health.toml" in unit
    for line in (
        "Type=notify",
        "WatchdogSec=60",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/gpufleet",
        "PrivateTmp=yes",
        "DevicePolicy=closed",
        "DeviceAllow=/dev/nvidiactl rw",
        "DeviceAllow=char-nvidia-frontend rw",
    ):
        assert line in unit.splitlines(), line


def test_lab_settings(ansible_playbook, tmp_path):
    config, unit = render(
        ansible_playbook,
        tmp_path,
        gpu_health_backend="simulated",
        gpu_health_agent_interval=2,
        gpu_health_agent_lift_after=1,
        gpu_health_agent_max_fenced=3,
        gpu_health_agent_kubernetes_enabled=False,
        gpu_health_agent_thresholds={"ecc_corrected_per_minute": 50, "sw_power_cap_benign": True},
        gpu_health_agent_checks=["xid", "ecc"],
        gpu_health_agent_unit_overrides={"ProtectClock": "no"},
        gpu_health_agent_redis_url="redis://:pw@10.0.0.1:6379/0",
    )
    assert config.backend.type == "simulated" and config.backend.node == "lab-2"
    assert config.backend.fleet_spec == "/etc/gpufleet/health-fleet-spec.yaml"
    assert config.interval == 2 and config.kubernetes.lift_after == 1
    assert config.kubernetes.max_fenced == "3" and config.kubernetes.enabled == "false"
    assert config.thresholds.ecc_corrected_per_minute == 50 and config.thresholds.sw_power_cap_benign is True
    assert config.backend.checks == ["xid", "ecc"]
    assert config.redis.url == "redis://:pw@10.0.0.1:6379/0" and config.redis.stream == "events"
    assert "Environment=GPUFLEET_SIM_FAULTS=/var/lib/gpufleet/simulated-faults.json" in unit
    assert "DeviceAllow=/dev/nvidiactl rw" not in unit
    assert "ProtectClock=no" in unit.splitlines()
