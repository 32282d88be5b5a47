"""etcd_kv through ansible-playbook against a real etcd (Debian's etcd 3.4)."""

from __future__ import annotations

import uuid

import pytest
from gpufleet.etcd import EtcdClient

pytestmark = [pytest.mark.ansible, pytest.mark.integration]


@pytest.fixture
def etcd(etcd_server):
    return EtcdClient(etcd_server.url)


@pytest.fixture
def prefix():
    """A fresh key prefix per test, so tests sharing the session etcd never meet."""
    return f"/test-{uuid.uuid4().hex[:8]}/"


def kv_task(etcd_server, name="kv", module="etcd_kv", **params):
    return {"name": name, f"gpufleet.cluster.{module}": dict(params, endpoint=etcd_server.url)}


def test_put_writes_then_second_run_changes_nothing(etcd_server, etcd, prefix, ansible_playbook):
    key = prefix + "config/redis/addr"
    first = ansible_playbook([kv_task(etcd_server, key=key, value="10.0.0.5:6379")])
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.task("kv")["changed"] is True
    assert etcd.get(key) == {key: "10.0.0.5:6379"}

    second = ansible_playbook([kv_task(etcd_server, key=key, value="10.0.0.5:6379")])
    assert second.returncode == 0
    assert second.task("kv")["changed"] is False
    assert second.changed() == 0


def test_put_of_another_value_replaces_it(etcd_server, etcd, prefix, ansible_playbook):
    key = prefix + "k"
    etcd.put(key, "old")
    result = ansible_playbook([kv_task(etcd_server, key=key, value="new")])
    assert result.task("kv")["changed"] is True
    assert etcd.get(key) == {key: "new"}


def test_check_mode_reports_change_but_writes_nothing(etcd_server, etcd, prefix, ansible_playbook):
    key = prefix + "k"
    etcd.put(prefix + "other", "x")
    put = ansible_playbook([kv_task(etcd_server, key=key, value="v")], check=True)
    assert put.task("kv")["changed"] is True
    assert etcd.get(key) == {}

    delete = ansible_playbook([kv_task(etcd_server, key=prefix, prefix=True, state="absent")], check=True)
    assert delete.task("kv")["changed"] is True
    assert etcd.get(prefix + "other") == {prefix + "other": "x"}


def test_diff_shows_value_before_and_after(etcd_server, etcd, prefix, ansible_playbook):
    key = prefix + "socket_timeout"
    etcd.put(key, "5")
    result = ansible_playbook([kv_task(etcd_server, key=key, value="10")], diff=True)
    diff = result.task("kv")["diff"]
    assert diff["before"] == f"{key} = 5\n"
    assert diff["after"] == f"{key} = 10\n"


def test_no_log_keeps_a_secret_out_of_the_output(etcd_server, etcd, prefix, ansible_playbook):
    key = prefix + "config/redis/password"
    secret = "s3cret-" + uuid.uuid4().hex
    task = dict(kv_task(etcd_server, key=key, value=secret), no_log=True)
    result = ansible_playbook([task], diff=True)
    assert result.returncode == 0
    assert result.task("kv")["changed"] is True
    assert etcd.get(key) == {key: secret}
    assert secret not in result.stdout + result.stderr


def test_info_reads_a_key_and_a_prefix(etcd_server, etcd, prefix, ansible_playbook):
    etcd.put(prefix + "nodes/manager/m1", "up")
    etcd.put(prefix + "nodes/agents/a1", "running")
    etcd.put(prefix[:-1] + "x/outside", "no")  # shares the string prefix but not the "/"
    result = ansible_playbook([
        kv_task(etcd_server, "one", module="etcd_kv_info", key=prefix + "nodes/manager/m1"),
        kv_task(etcd_server, "missing", module="etcd_kv_info", key=prefix + "nope"),
        kv_task(etcd_server, "all", module="etcd_kv_info", key=prefix + "nodes/", prefix=True),
    ])
    assert result.task("one")["value"] == "up"
    assert result.task("one")["changed"] is False
    assert result.task("missing")["value"] is None
    assert result.task("all")["values"] == {
        prefix + "nodes/manager/m1": "up",
        prefix + "nodes/agents/a1": "running",
    }


def test_prefix_delete_removes_only_keys_under_the_prefix(etcd_server, etcd, prefix, ansible_playbook):
    for suffix in ("a", "b/c", "b/d"):
        etcd.put(prefix + suffix, "1")
    sibling = prefix[:-1] + "-sibling"
    etcd.put(sibling, "keep")
    first = ansible_playbook([kv_task(etcd_server, key=prefix + "b/", prefix=True, state="absent")])
    assert first.task("kv")["changed"] is True
    assert etcd.get(prefix, prefix=True) == {prefix + "a": "1"}
    assert etcd.get(sibling) == {sibling: "keep"}

    again = ansible_playbook([kv_task(etcd_server, key=prefix + "b/", prefix=True, state="absent")])
    assert again.task("kv")["changed"] is False


def test_unreachable_etcd_fails_with_a_clear_message(ansible_playbook):
    result = ansible_playbook([{"name": "kv", "gpufleet.cluster.etcd_kv": {
        "endpoint": "http://127.0.0.1:1", "key": "/k", "value": "v", "timeout": 2}}])
    assert result.returncode != 0
    assert "cannot reach etcd at http://127.0.0.1:1" in result.task("kv")["msg"]


def test_put_without_value_is_refused(etcd_server, ansible_playbook):
    result = ansible_playbook([kv_task(etcd_server, key="/k")])
    assert result.returncode != 0
    assert "value" in result.task("kv")["msg"]
