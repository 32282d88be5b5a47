"""The kernel_agent role's agent.toml.j2 quotes every string, so any value round-trips through TOML.

Rendered by the real ansible-playbook with the role's defaults; the result is parsed
with tomllib and then loaded by the agent's own config loader.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from gpufleet.agent.config import load_config

pytestmark = pytest.mark.ansible

ROLE = Path(__file__).resolve().parents[3] / "roles" / "kernel_agent"

# A quote, a backslash followed by b (TOML would read "\b" as a backspace), a
# backslash at the end and a tab: each one breaks or silently changes an unquoted value.
NASTY_PASSWORD = 'pa"ss\\bw\tord\\'
# What to_json gets wrong in TOML: DEL (raw in JSON, forbidden in TOML), a character beyond
# U+FFFF (a surrogate pair in JSON, refused by TOML), a NUL; and spaces at both ends, kept.
ODD_PASSWORD = " p\x7fa\U0001f512ss\x00 "


def render(ansible_playbook, tmp_path, **role_vars) -> str:
    tasks = [
        {"name": "Defaults", "ansible.builtin.include_vars": {"file": str(ROLE / "defaults" / "main.yml")}},
        {"name": "Config", "ansible.builtin.template": {
            "src": str(ROLE / "templates" / "agent.toml.j2"), "dest": str(tmp_path / "agent.toml"),
            "mode": "0600"}},
    ]
    extra = {"kernel_agent_etcd_host": "10.0.0.1", "kernel_agent_etcd_port": 2479,
             "kernel_agent_redis_host": "10.0.0.2", "kernel_agent_redis_port": 6479,
             "kernel_agent_kernel_user": "", "inventory_hostname": "node-1",
             "kernel_agent_etcd_tls": True, "kernel_agent_etcd_user": "gpufleet-agent",
             "kernel_agent_etcd_password": NASTY_PASSWORD + "-etcd", **role_vars}
    result = ansible_playbook(tasks, extra_vars=extra)
    assert result.returncode == 0, result.stdout[-3000:]
    return (tmp_path / "agent.toml").read_text()


def test_without_etcd_tls_or_user_no_such_keys_are_written(ansible_playbook, tmp_path):
    render(ansible_playbook, tmp_path, kernel_agent_etcd_tls=False, kernel_agent_etcd_user="")
    config = load_config(tmp_path / "agent.toml")
    assert (config.etcd.ca_file, config.etcd.cert_file, config.etcd.user) == (None, None, None)


def test_password_with_quote_and_backslash_round_trips(ansible_playbook, tmp_path):
    text = render(ansible_playbook, tmp_path, kernel_agent_redis_password=NASTY_PASSWORD,
                  kernel_agent_scaling_group='gpu "a"')
    data = tomllib.loads(text)
    assert data["redis"]["password"] == NASTY_PASSWORD
    assert data["redis"]["addr"] == "10.0.0.2:6479"
    assert data["etcd"]["addr"] == "10.0.0.1:2479"
    assert data["agent"]["scaling-group"] == 'gpu "a"'
    config = load_config(tmp_path / "agent.toml")
    assert config.redis_password == NASTY_PASSWORD
    assert (config.etcd.user, config.etcd.password) == ("gpufleet-agent", NASTY_PASSWORD + "-etcd")
    assert config.etcd.ca_file == "/etc/gpufleet/etcd/ca.crt" and config.etcd.timeout == 5
    assert (config.etcd.cert_file, config.etcd.key_file) == ("/etc/gpufleet/etcd/client.crt",
                                                             "/etc/gpufleet/etcd/client.key")
    assert str(config.redis_addr) == "10.0.0.2:6479"


def test_del_astral_and_surrounding_spaces_round_trip(ansible_playbook, tmp_path):
    render(ansible_playbook, tmp_path, kernel_agent_redis_password=ODD_PASSWORD,
           kernel_agent_scaling_group="gpu-\U0001f680")
    config = load_config(tmp_path / "agent.toml")
    assert config.redis_password == ODD_PASSWORD
    assert tomllib.loads((tmp_path / "agent.toml").read_text())["agent"]["scaling-group"] == "gpu-\U0001f680"


def test_kernel_python_is_written_only_when_set(ansible_playbook, tmp_path):
    default = render(ansible_playbook, tmp_path)
    assert "kernel-python" not in tomllib.loads(default)["container"]
    assert load_config(tmp_path / "agent.toml").container.kernel_python is None
    render(ansible_playbook, tmp_path, kernel_agent_kernel_python="/usr/bin/python3")
    assert load_config(tmp_path / "agent.toml").container.kernel_python == "/usr/bin/python3"
