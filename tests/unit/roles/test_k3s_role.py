"""The k3s role's decisions, run through ansible-playbook on this machine without
touching it: the config.yaml each node of a topology gets, topology checks, and
the clean skip when no binary is obtainable."""

from __future__ import annotations

import json

import pytest
import yaml
from fixtures.ansible_runner import run_playbook

pytestmark = pytest.mark.ansible

TOKEN = "s3cret-token"


def write_inventory(tmp_path, servers, agents, gpu_agents=()):
    hosts = {name: {"ansible_connection": "local", "ansible_host": f"10.0.0.{i + 11}"}
             for i, name in enumerate([*servers, *agents])}
    inventory = {"all": {"hosts": hosts, "children": {
        "k3s_server": {"hosts": {name: None for name in servers}},
        "k3s_agent": {"hosts": {name: {"k3s_gpu_node": name in gpu_agents} for name in agents}},
    }}}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return str(path)


def render_configs(tmp_path, inventory, **extra_vars):
    """Each host's k3s_config (the dict config.yaml is dumped from), after the topology checks."""
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "render", "hosts": "all", "gather_facts": False,
        "tasks": [
            {"name": "Checks", "ansible.builtin.include_role": {
                "name": "gpufleet.cluster.k3s", "tasks_from": "assert", "public": True}},
            # Written to a file, not printed: the config holds the cluster token.
            {"name": "Save config", "ansible.builtin.copy": {
                "content": "{{ k3s_config | to_json }}",
                "dest": f"{tmp_path}/{{{{ inventory_hostname }}}}.json", "mode": "0600"}},
        ]}]))
    result = run_playbook(playbook, tmp_path, inventory=inventory,
                          extra_vars={"ansible_python_interpreter": "{{ ansible_playbook_python }}",
                                      **extra_vars})
    result.configs_dir = tmp_path
    return result


def config_of(result, host):
    return json.loads((result.configs_dir / f"{host}.json").read_text())


def test_ha_embedded_etcd_topology(tmp_path):
    inventory = write_inventory(tmp_path, ["srv1", "srv2", "srv3"], ["gpu1", "cpu1"], gpu_agents=["gpu1"])
    result = render_configs(tmp_path, inventory, k3s_token=TOKEN, k3s_tls_san=["k8s.example.com"])
    assert result.returncode == 0, result.stdout[-2000:]
    first, second = config_of(result, "srv1"), config_of(result, "srv2")
    assert first["cluster-init"] is True and "server" not in first
    assert second["server"] == "https://10.0.0.11:6443" and "cluster-init" not in second
    for server in (first, second):
        assert server["token"] == TOKEN
        assert server["tls-san"] == ["k8s.example.com"]
        assert server["write-kubeconfig-mode"] == "0600"
    gpu, cpu = config_of(result, "gpu1"), config_of(result, "cpu1")
    assert gpu == {"server": "https://10.0.0.11:6443", "token": TOKEN,
                   "node-label": ["nvidia.com/gpu.present=true"], "default-runtime": "nvidia"}
    assert cpu == {"server": "https://10.0.0.11:6443", "token": TOKEN}


def test_even_number_of_etcd_servers_is_refused(tmp_path):
    inventory = write_inventory(tmp_path, ["srv1", "srv2"], [])
    result = render_configs(tmp_path, inventory, k3s_token=TOKEN)
    assert result.returncode != 0
    failed = result.task("gpufleet.cluster.k3s : Check the k3s topology", host="srv1")
    assert "odd number of servers" in failed["msg"]


def test_external_datastore_lets_every_server_stand_alone(tmp_path):
    inventory = write_inventory(tmp_path, ["srv1", "srv2"], [])
    endpoint = "postgres://k3s:pw@db:5432/k3s"
    result = render_configs(tmp_path, inventory, k3s_token=TOKEN, k3s_datastore="external",
                            k3s_datastore_endpoint=endpoint, k3s_node_taints=["role=control:NoSchedule"])
    assert result.returncode == 0, result.stdout[-2000:]
    for host in ("srv1", "srv2"):
        config = config_of(result, host)
        assert config["datastore-endpoint"] == endpoint
        assert "cluster-init" not in config and "server" not in config
        assert config["node-taint"] == ["role=control:NoSchedule"]


def test_extra_config_is_merged_last(tmp_path):
    inventory = write_inventory(tmp_path, ["srv1"], [])
    extra = {"write-kubeconfig-mode": "0640", "flannel-backend": "wireguard-native"}
    result = render_configs(tmp_path, inventory, k3s_disable=["traefik"], k3s_extra_config=extra)
    assert config_of(result, "srv1") == {"disable": ["traefik"], **extra}


def test_no_binary_obtainable_skips_with_a_message_and_changes_nothing(ansible_playbook, tmp_path):
    # Nothing listens on port 9: the release's sha256 list cannot be fetched, as offline.
    result = ansible_playbook(
        [{"name": "Apply k3s", "ansible.builtin.include_role": {"name": "gpufleet.cluster.k3s"}}],
        extra_vars={"k3s_servers": ["localhost"], "k3s_release_url": "http://127.0.0.1:9/k3s",
                    "k3s_download_timeout": 3, "k3s_install_dir": str(tmp_path / "bin")})
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.changed() == 0
    message = result.task("gpufleet.cluster.k3s : Skip k3s on this node, no binary is obtainable")["msg"]
    assert "could not be fetched" in message and "http://127.0.0.1:9/k3s/sha256sum-amd64.txt" in message
    assert "k3s_airgap_dir" in message
    configure = result.task("gpufleet.cluster.k3s : Configure and run k3s")
    assert configure.get("skipped") is True
    assert not (tmp_path / "bin").exists()
