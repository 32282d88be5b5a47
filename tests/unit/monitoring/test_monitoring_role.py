"""The monitoring role's files, rendered by ansible-playbook from an inventory with the role's own
defaults, vars and templates: targets come from the inventory, overrides change only `for`, and
promtool accepts what Prometheus would load."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from fixtures.ansible_runner import REPO, run_playbook

pytestmark = pytest.mark.ansible

ROLE = REPO / "roles" / "monitoring"


def render(tmp_path: Path, **role_vars) -> Path:
    out = tmp_path / "out"
    (out / "rules").mkdir(parents=True)
    (out / "sd").mkdir()
    inventory = {
        "all": {
            "hosts": {
                "gpu-1": {"ansible_default_ipv4": {"address": "10.1.0.11"}},
                "gpu-2": {"monitoring_scrape_address": "gpu-2.example.net"},
                "cpu-1": {"ansible_default_ipv4": {"address": "10.1.0.21"}},
                "mon-1": {"ansible_connection": "local", "ansible_default_ipv4": {"address": "10.1.0.2"}},
            },
            "children": {
                "gpu_nodes": {"hosts": {"gpu-1": None, "gpu-2": None}},
                "kernel_agent": {"hosts": {"gpu-1": None, "gpu-2": None, "cpu-1": None}},
                "monitoring": {"hosts": {"mon-1": None}},
            },
        }
    }
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    templates = ROLE / "templates"
    tasks = [
        {"name": "Role defaults", "ansible.builtin.include_vars": str(ROLE / "defaults" / "main.yml")},
        {"name": "Role vars", "ansible.builtin.include_vars": str(ROLE / "vars" / "main.yml")},
        {
            "name": "Settings",
            "ansible.builtin.set_fact": {
                "monitoring_rules_dir": str(out / "rules"),
                "monitoring_sd_dir": str(out / "sd"),
                **role_vars,
            },
        },
        {
            "name": "Rules",
            "ansible.builtin.template": {
                "src": str(templates / "gpufleet-alerts.yml.j2"),
                "dest": str(out / "rules" / "gpufleet-alerts.yml"),
            },
        },
        {
            "name": "Targets",
            "ansible.builtin.template": {
                "src": str(templates / "targets.yml.j2"),
                "dest": str(out / "sd" / "{{ item.job }}.yml"),
            },
            "loop": "{{ monitoring_jobs }}",
        },
        {
            "name": "Config",
            "ansible.builtin.template": {
                "src": str(templates / "prometheus.yml.j2"),
                "dest": str(out / "prometheus.yml"),
            },
        },
    ]
    playbook = tmp_path / "render.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "render",
                    "hosts": "monitoring",
                    "gather_facts": False,
                    "vars": {
                        "role_path": str(ROLE),
                        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                    },
                    "tasks": tasks,
                }
            ]
        )
    )
    result = run_playbook(playbook, tmp_path, inventory=str(tmp_path / "inventory.yml"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return out


def targets(out: Path, job: str) -> list:
    return yaml.safe_load((out / "sd" / f"{job}.yml").read_text())


def test_targets_come_from_the_inventory(tmp_path):
    out = render(tmp_path)
    assert targets(out, "gpufleet-health") == [
        {"targets": ["10.1.0.11:9401"], "labels": {"node": "gpu-1"}},
        {"targets": ["gpu-2.example.net:9401"], "labels": {"node": "gpu-2"}},
    ]
    assert sorted(t["targets"][0] for t in targets(out, "gpufleet-agent")) == [
        "10.1.0.11:6003",
        "10.1.0.21:6003",
        "gpu-2.example.net:6003",
    ]
    assert sorted(t["labels"]["node"] for t in targets(out, "node-exporter")) == [
        "cpu-1",
        "gpu-1",
        "gpu-2",
        "mon-1",
    ]
    assert targets(out, "gpufleet-scheduler") == []  # no gpu_scheduler group: a documented, empty job
    config = yaml.safe_load((out / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {
        "prometheus",
        "gpufleet-health",
        "gpufleet-agent",
        "gpufleet-scheduler",
        "node-exporter",
    }
    assert jobs["gpufleet-health"]["file_sd_configs"] == [
        {"files": [str(out / "sd" / "gpufleet-health.yml")]}
    ]
    check = subprocess.run(
        ["promtool", "check", "config", str(out / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout + check.stderr


def test_for_overrides_change_only_for(tmp_path):
    out = render(tmp_path, monitoring_alert_for={"GpuFleetNodeFenced": "10s"})
    rendered = yaml.safe_load((out / "rules" / "gpufleet-alerts.yml").read_text())["groups"]
    source = yaml.safe_load((REPO / "monitoring" / "alerts.yml").read_text())["groups"]
    for group, original in zip(rendered, source, strict=True):
        for rule, before in zip(group["rules"], original["rules"], strict=True):
            expected = dict(before, **({"for": "10s"} if before["alert"] == "GpuFleetNodeFenced" else {}))
            assert rule == expected
    check = subprocess.run(
        ["promtool", "check", "rules", str(out / "rules" / "gpufleet-alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_rules_without_overrides_are_the_collections(tmp_path):
    out = render(tmp_path)
    rendered = yaml.safe_load((out / "rules" / "gpufleet-alerts.yml").read_text())
    assert rendered == yaml.safe_load((REPO / "monitoring" / "alerts.yml").read_text())
