"""etcd_auth / gpufleet.etcd.apply_auth against a real TLS etcd that starts with auth off."""

from __future__ import annotations

import pytest
from fixtures.infra_services import make_secure_etcd
from gpufleet.etcd import EtcdClient, EtcdError, apply_auth

ROLES = {"gpufleet-agent": [{"type": "read", "key": "/sorna/local/"},
                            {"type": "readwrite", "key": "/sorna/local/nodes/agents/"}]}


@pytest.fixture
def fresh_tls_etcd(tmp_path):
    server = make_secure_etcd(tmp_path)  # TLS with client certificates; auth not enabled yet
    server.start()
    yield server
    server.stop()


def tls_client(server, user=None, password=None) -> EtcdClient:
    return EtcdClient(endpoint=server.url, ca_cert=server.ca, client_cert=server.client_cert,
                      client_key=server.client_key, user=user, password=password)


def test_apply_auth_creates_users_roles_and_enables_auth_once(fresh_tls_etcd):
    users = {"gpufleet-agent": {"password": "agent-pw-1", "roles": ["gpufleet-agent"]}}
    check = apply_auth(tls_client(fresh_tls_etcd), "root-pw-1", ROLES, users, check_mode=True)
    assert check.changed and "enable auth" in check.actions
    tls_client(fresh_tls_etcd).put("/sorna/local/config/x", "still open")  # check mode changed nothing

    first = apply_auth(tls_client(fresh_tls_etcd), "root-pw-1", ROLES, users)
    assert first.actions == check.actions
    assert "add user gpufleet-agent" in first.actions and first.actions[-1] == "enable auth"
    assert not any("pw-1" in action for action in first.actions)

    again = apply_auth(tls_client(fresh_tls_etcd), "root-pw-1", ROLES, users)
    assert (again.changed, again.actions) == (False, [])

    with pytest.raises(EtcdError):
        tls_client(fresh_tls_etcd).get("/sorna/local/config/x")  # anonymous: refused now
    agent = tls_client(fresh_tls_etcd, "gpufleet-agent", "agent-pw-1")
    agent.put("/sorna/local/nodes/agents/n1", "running")
    assert agent.get("/sorna/local/config/x") == {"/sorna/local/config/x": "still open"}
    with pytest.raises(EtcdError, match="permission denied"):
        agent.put("/sorna/local/config/x", "changed")

    # A new permission on an existing role is added (and only it).
    more = {**ROLES, "gpufleet-agent": [*ROLES["gpufleet-agent"], {"type": "read", "key": "/sorna/local2/"}]}
    added = apply_auth(tls_client(fresh_tls_etcd), "root-pw-1", more, users)
    assert added.actions == ["grant read on /sorna/local2/* to role gpufleet-agent"]


def test_user_without_password_is_refused(fresh_tls_etcd):
    with pytest.raises(ValueError, match="needs a password"):
        apply_auth(tls_client(fresh_tls_etcd), "root", ROLES, {"u": {"roles": []}})


@pytest.mark.ansible
def test_module_locks_etcd_and_logs_no_password(fresh_tls_etcd, ansible_playbook):
    connection = {"endpoint": fresh_tls_etcd.url, "ca_cert": fresh_tls_etcd.ca,
                  "client_cert": fresh_tls_etcd.client_cert, "client_key": fresh_tls_etcd.client_key}
    task = {"name": "auth", "gpufleet.cluster.etcd_auth": {
        **connection, "root_password": "root-secret-77", "roles": ROLES,
        "users": {"gpufleet-agent": {"password": "agent-secret-77", "roles": ["gpufleet-agent"]}}}}
    first = ansible_playbook([task])
    assert first.returncode == 0, first.stdout[-2000:]
    assert first.task("auth")["changed"] is True
    second = ansible_playbook([task])
    assert second.task("auth")["changed"] is False
    for run in (first, second):
        assert "secret-77" not in run.stdout + run.stderr
