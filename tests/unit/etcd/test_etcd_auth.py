"""etcd user/password authentication: a private etcd with auth enabled."""

from __future__ import annotations

import subprocess

import pytest
from fixtures.infra_services import make_etcd
from gpufleet.etcd import EtcdClient, EtcdError, apply

pytestmark = [pytest.mark.ansible]


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory):
    server = make_etcd(tmp_path_factory.mktemp("etcd-auth"))
    server.start()
    etcdctl = ["etcdctl", f"--endpoints={server.url}"]
    for args in (["user", "add", "root:rootpw"], ["user", "grant-role", "root", "root"], ["auth", "enable"]):
        subprocess.run(etcdctl + args, check=True, capture_output=True, env={"ETCDCTL_API": "3"}, timeout=30)
    yield server
    server.stop()


def test_right_password_reads_and_writes(auth_etcd):
    client = EtcdClient(auth_etcd.url, user="root", password="rootpw")
    assert apply(client, "/auth/k", value="v").changed
    assert client.get("/auth/k") == {"/auth/k": "v"}


def test_wrong_password_is_refused(auth_etcd):
    with pytest.raises(EtcdError, match="authentication failed"):
        EtcdClient(auth_etcd.url, user="root", password="wrong").get("/auth/k")


def test_anonymous_client_is_refused(auth_etcd):
    with pytest.raises(EtcdError, match="user name is empty|permission denied"):
        EtcdClient(auth_etcd.url).get("/auth/k")


def test_module_passes_user_and_password(auth_etcd, ansible_playbook):
    task = {"name": "kv", "gpufleet.cluster.etcd_kv": {
        "endpoint": auth_etcd.url, "key": "/auth/m", "value": "1", "user": "root", "password": "rootpw"}}
    result = ansible_playbook([task])
    assert result.returncode == 0, result.stdout[-2000:]
    assert result.task("kv")["changed"] is True
    assert "rootpw" not in result.stdout
