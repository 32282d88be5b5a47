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


def validation_tasks() -> list[dict]:
    import yaml

    tasks = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text())
    names = ("Validate the config with the installed agent", "Report an invalid config")
    return [t for t in tasks if t.get("name") in names]


def test_the_validate_task_never_prints_the_redis_password(ansible_playbook, tmp_path):
    secret = "s3cret-Pa55"
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "gpufleet"  # an agent that echoes its config (as an old one did) and fails
    fake.write_text(
        f"#!/bin/sh\necho 'url redis://:{secret}@10.0.0.5:6379/0'\n"
        f"echo 'Error: redis://:{secret}@10.0.0.5:6379/0 refused' >&2\nexit 2\n"
    )
    fake.chmod(0o755)
    tasks = validation_tasks()
    assert len(tasks) == 2 and tasks[0]["no_log"] is True
    result = ansible_playbook(
        tasks,
        extra_vars={
            "gpufleet_install_venv": str(venv),
            "gpu_health_agent_config_file": "/etc/gpufleet/health.toml",
        },
    )
    assert result.returncode != 0  # the invalid config still fails the play ...
    assert "redis://:***@10.0.0.5" in result.stdout  # ... with the reason, masked
    assert secret not in result.stdout


def test_check_config_prints_no_password(tmp_path):
    from click.testing import CliRunner
    from gpufleet.health.cli import health

    config = tmp_path / "health.toml"
    config.write_text('[redis]\nurl = "redis://agent:s3cret-Pa55@10.0.0.5:6379/0"\n')
    result = CliRunner().invoke(health, ["run", "--config", str(config), "--check-config"])
    assert result.exit_code == 0, result.output
    assert "s3cret-Pa55" not in result.output
    assert '"url": "redis://agent:***@10.0.0.5:6379/0"' in result.output
