"""The cluster_bootstrap role through ansible-playbook against a real etcd."""

from __future__ import annotations

import uuid

import pytest
from gpufleet.etcd import EtcdClient

pytestmark = [pytest.mark.ansible]

BOOTSTRAP = [{"name": "bootstrap",
              "ansible.builtin.include_role": {"name": "gpufleet.cluster.cluster_bootstrap"}}]


@pytest.fixture
def namespace():
    return f"ns{uuid.uuid4().hex[:8]}"


def bootstrap_vars(etcd_server, namespace, **overrides):
    values = {
        "cluster_bootstrap_etcd_endpoint": etcd_server.url,
        "cluster_bootstrap_namespace": namespace,
        "cluster_bootstrap_redis_host": "10.1.0.5",
        "cluster_bootstrap_redis_port": 6479,
        "cluster_bootstrap_redis_password": "",
    }
    values.update(overrides)
    return values


def test_keys_written_then_second_run_changes_nothing(etcd_server, namespace, ansible_playbook):
    secret = "pw-" + uuid.uuid4().hex
    extra = bootstrap_vars(etcd_server, namespace, cluster_bootstrap_redis_password=secret)
    first = ansible_playbook(BOOTSTRAP, extra_vars=extra)
    assert first.returncode == 0, first.stdout[-3000:]
    prefix = f"/sorna/{namespace}/"
    assert EtcdClient(etcd_server.url).get(prefix, prefix=True) == {
        prefix + "config/redis/addr": "10.1.0.5:6479",
        prefix + "config/redis/password": secret,
        prefix + "config/redis/redis_helper_config/socket_timeout": "5",
        prefix + "volumes/_mount": "/var/lib/gpufleet/scratch",
        prefix + "nodes/manager/manager": "up",
    }
    assert secret not in first.stdout
    second = ansible_playbook(BOOTSTRAP, extra_vars=extra)
    assert second.returncode == 0
    assert second.changed() == 0


def test_changing_the_redis_node_updates_only_the_address(etcd_server, namespace, ansible_playbook):
    ansible_playbook(BOOTSTRAP, extra_vars=bootstrap_vars(etcd_server, namespace))
    moved = ansible_playbook(BOOTSTRAP, extra_vars=bootstrap_vars(
        etcd_server, namespace, cluster_bootstrap_redis_host="10.1.0.9"))
    assert moved.returncode == 0
    assert moved.changed() == 1
    key = f"/sorna/{namespace}/config/redis/addr"
    assert EtcdClient(etcd_server.url).get(key) == {key: "10.1.0.9:6479"}


def test_an_existing_manager_is_left_alone(etcd_server, namespace, ansible_playbook):
    etcd = EtcdClient(etcd_server.url)
    etcd.put(f"/sorna/{namespace}/nodes/manager/real-mgr", "up")
    result = ansible_playbook(BOOTSTRAP, extra_vars=bootstrap_vars(etcd_server, namespace))
    assert result.returncode == 0
    assert etcd.get(f"/sorna/{namespace}/nodes/manager/", prefix=True) == {
        f"/sorna/{namespace}/nodes/manager/real-mgr": "up"}


def test_check_mode_writes_nothing(etcd_server, namespace, ansible_playbook):
    result = ansible_playbook(BOOTSTRAP, extra_vars=bootstrap_vars(etcd_server, namespace), check=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.changed() > 0
    assert EtcdClient(etcd_server.url).get(f"/sorna/{namespace}/", prefix=True) == {}
