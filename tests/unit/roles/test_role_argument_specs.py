"""Every default of the service roles evaluates, and passes the role's own argument spec, on an
inventory without k3s — as Ansible checks them when the role starts (molecule's agent and health
scenarios have no k3s_server group). A default that reaches into a group the inventory may lack
(the k3s server's address) fails here instead of in every converge."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ansible

ROLES = Path(__file__).resolve().parents[3] / "roles"


@pytest.mark.parametrize("role", ["gpu_health_agent", "gpu_scheduler", "kernel_agent", "k3s_service_account"])
def test_the_defaults_pass_the_argument_spec_without_a_k3s_group(ansible_playbook, tmp_path, role):
    spec = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    names = [name for name in defaults if name in options]
    tasks = [
        {"name": "The role's defaults", "ansible.builtin.include_vars": {
            "file": str(ROLES / role / "defaults" / "main.yml")}},
        {"name": "Validate them as the role's start does", "ansible.builtin.validate_argument_spec": {
            "argument_spec": options,
            "provided_arguments": "{{ dict(names | zip(lookup('ansible.builtin.vars', *names))) }}"}},
    ]
    # The groups the kernel agent's defaults read (etcd, redis), none of k3s
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {
        "etcd": {"hosts": {"localhost": None}}, "redis": {"hosts": {"localhost": None}},
        "gpu_nodes": {"hosts": {"localhost": None}}}}}))
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{"name": role, "hosts": "localhost", "gather_facts": True,
                                     "vars": {"ansible_python_interpreter": sys.executable, "names": names},
                                     "tasks": tasks}], sort_keys=False))
    result = ansible_playbook(play, inventory=str(inventory))
    assert result.returncode == 0, result.stdout[-3000:]
