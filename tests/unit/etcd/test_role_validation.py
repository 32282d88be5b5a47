"""Bad input to the infrastructure roles stops the play with a message that says why.

Only the roles' validation (and the etcd tarball download) runs, on localhost:
nothing is installed on the machine running the tests.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile

import pytest
import yaml

pytestmark = [pytest.mark.ansible]


def role_tasks(role, tasks_from="validate"):
    return [{"name": "under test", "ansible.builtin.include_role": {
        "name": f"gpufleet.cluster.{role}", "tasks_from": tasks_from}}]


def failure_message(result):
    for task in result.tasks():
        outcome = task["hosts"].get("localhost", {})
        if outcome.get("failed"):
            # A looped task fails as a whole; the message is the failed item's.
            items = [item.get("msg", "") for item in outcome.get("results", []) if item.get("failed")]
            return items[0] if items else outcome.get("msg", "")
    raise AssertionError(f"nothing failed: {result.stdout[-2000:]}")


@pytest.fixture
def etcd_inventory(tmp_path):
    def make(members):
        inventory = {"all": {
            "hosts": {"localhost": {"ansible_connection": "local",
                                    "ansible_python_interpreter": sys.executable}},
            "children": {"etcd": {"hosts": {name: None for name in members}}},
        }}
        path = tmp_path / f"inventory-{len(members)}.yml"
        path.write_text(yaml.safe_dump(inventory))
        return str(path)

    return make


@pytest.mark.parametrize("members", [["localhost", "etcd-b"], ["localhost", "b", "c", "d"]])
def test_even_member_count_is_refused(members, etcd_inventory, ansible_playbook):
    result = ansible_playbook(role_tasks("etcd"), inventory=etcd_inventory(members))
    assert result.returncode != 0
    message = failure_message(result)
    assert f"has {len(members)} member(s)" in message
    assert "odd" in message


def test_empty_member_group_is_refused(etcd_inventory, ansible_playbook):
    result = ansible_playbook(role_tasks("etcd"), inventory=etcd_inventory(["localhost"]),
                              extra_vars={"etcd_group": "nobody"})
    assert result.returncode != 0
    assert "has 0 member(s)" in failure_message(result)


def test_three_members_pass_validation(etcd_inventory, ansible_playbook):
    result = ansible_playbook(role_tasks("etcd"), inventory=etcd_inventory(["localhost", "b", "c"]),
                              extra_vars={"etcd_root_password": "root-pw"})
    assert result.returncode == 0, result.stdout[-2000:]


def test_auth_is_on_by_default_and_needs_a_root_password(etcd_inventory, ansible_playbook):
    result = ansible_playbook(role_tasks("etcd"), inventory=etcd_inventory(["localhost"]))
    assert result.returncode != 0
    assert "etcd_auth is true but etcd_root_password is empty" in failure_message(result)
    result = ansible_playbook(role_tasks("etcd"), inventory=etcd_inventory(["localhost"]),
                              extra_vars={"etcd_auth": False})
    assert result.returncode == 0, result.stdout[-2000:]


def test_redis_acl_user_with_a_bad_name_is_refused(ansible_playbook):
    result = ansible_playbook(role_tasks("redis"), extra_vars={
        "redis_password": "pw", "redis_extra_acl_users": {"bad name": {"password": "x", "rules": "+ping"}}})
    assert result.returncode != 0
    assert "Redis ACL user 'bad name'" in failure_message(result)


def test_tarball_install_without_checksum_is_refused(etcd_inventory, ansible_playbook):
    result = ansible_playbook(role_tasks("etcd"), inventory=etcd_inventory(["localhost"]),
                              extra_vars={"etcd_install_method": "tarball"})
    assert result.returncode != 0
    assert "etcd_tarball_sha256" in failure_message(result)


def test_tarball_with_wrong_checksum_is_not_installed(tmp_path, ansible_playbook):
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as archive:
        data = b"#!/bin/sh\necho fake etcd\n"
        info = tarfile.TarInfo("etcd-v9.9.9-linux-amd64/etcd")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    tarball = tmp_path / "etcd.tar.gz"
    tarball.write_bytes(payload.getvalue())
    wrong = hashlib.sha256(b"something else").hexdigest()
    result = ansible_playbook(role_tasks("etcd", "install_tarball"), extra_vars={
        "etcd_version": "9.9.9",
        "etcd_tarball_url": f"file://{tarball}",
        "etcd_tarball_sha256": wrong,
        "etcd_tarball_cache_dir": str(tmp_path / "cache"),
        "etcd_tarball_install_dir": str(tmp_path / "opt"),
    })
    assert result.returncode != 0
    assert "checksum" in failure_message(result).lower()
    assert not (tmp_path / "cache" / "etcd-v9.9.9-linux-amd64.tar.gz").exists()
    assert not (tmp_path / "opt").exists()


def test_redis_auth_without_password_is_refused(ansible_playbook):
    result = ansible_playbook(role_tasks("redis"))
    assert result.returncode != 0
    assert "redis_password is empty" in failure_message(result)


def test_redis_without_auth_needs_no_password(ansible_playbook):
    result = ansible_playbook(role_tasks("redis"), extra_vars={"redis_require_auth": False})
    assert result.returncode == 0, result.stdout[-2000:]


@pytest.mark.parametrize("path", ["var/lib/scratch", "scratch", "/"])
def test_nfs_export_path_must_be_absolute(path, ansible_playbook):
    result = ansible_playbook(role_tasks("nfs_server"), extra_vars={
        "nfs_server_export_path": path, "nfs_server_backend": "ganesha",
        "nfs_server_clients": ["10.0.0.0/24"]})
    assert result.returncode != 0
    message = failure_message(result)
    assert "must be an absolute path" in message and f"'{path}'" in message


def test_nfs_absolute_export_path_passes(ansible_playbook):
    result = ansible_playbook(role_tasks("nfs_server"), extra_vars={
        "nfs_server_backend": "kernel", "nfs_server_clients": ["10.0.0.0/24"]})
    assert result.returncode == 0, result.stdout[-2000:]
