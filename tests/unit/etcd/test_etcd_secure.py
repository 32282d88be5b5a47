"""etcd locked down as the etcd role sets it up: client TLS required, auth on, least-privilege roles.

A real etcd (Debian's) with client-cert-auth and auth enabled (fixture
`secure_etcd_server`): users root, `agent` (reads /sorna/<ns>/, writes only
nodes/agents/) and `reader` (reads only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gpufleet.etcd
import pytest
from gpufleet.etcd import EtcdClient, EtcdError

ADDR = "/sorna/secure/config/redis/addr"
TTL_KEY = "/sorna/secure/nodes/agents/node-ttl"


def client(server, user: str | None = "root", cert: bool = True) -> EtcdClient:
    password = None if user is None else (server.root_password if user == "root" else server.users[user])
    return EtcdClient(endpoint=server.url, ca_cert=server.ca,
                      client_cert=server.client_cert if cert else None,
                      client_key=server.client_key if cert else None,
                      user=user, password=password, timeout=5)


def test_client_with_cert_and_user_reads_and_writes(secure_etcd_server):
    root = client(secure_etcd_server)
    root.put("/sorna/secure/config/probe", "1")
    assert root.get("/sorna/secure/config/probe") == {"/sorna/secure/config/probe": "1"}


def test_without_a_client_certificate_reads_and_writes_are_refused(secure_etcd_server):
    # Even with the right password: the TLS handshake itself fails.
    no_cert = client(secure_etcd_server, cert=False)
    with pytest.raises(EtcdError, match="cannot reach etcd"):
        no_cert.get("/sorna/secure/config/probe")
    with pytest.raises(EtcdError, match="cannot reach etcd"):
        no_cert.put(ADDR, "evil:6379")


def test_without_a_user_reads_are_refused(secure_etcd_server):
    anonymous = client(secure_etcd_server, user=None)
    with pytest.raises(EtcdError):
        anonymous.get("/sorna/secure/config/", prefix=True)


def test_reader_may_read_but_not_write(secure_etcd_server):
    client(secure_etcd_server).put(ADDR, "10.0.0.2:6379")
    reader = client(secure_etcd_server, "reader")
    assert reader.get(ADDR) == {ADDR: "10.0.0.2:6379"}
    with pytest.raises(EtcdError, match="permission denied"):
        reader.put(ADDR, "evil:6379")
    assert client(secure_etcd_server).get(ADDR)[ADDR] == "10.0.0.2:6379"


def test_agent_writes_only_its_registration(secure_etcd_server):
    agent = client(secure_etcd_server, "agent")
    agent.put("/sorna/secure/nodes/agents/node-1", "running")
    assert agent.get("/sorna/secure/nodes/agents/node-1") == {"/sorna/secure/nodes/agents/node-1": "running"}
    with pytest.raises(EtcdError, match="permission denied"):
        agent.put(ADDR, "evil:6379")
    with pytest.raises(EtcdError, match="permission denied"):
        agent.get("/sorna/other/config/", prefix=True)


def test_expired_token_is_refreshed(secure_etcd_server):
    # The fixture's etcd runs with --auth-token-ttl 2.
    agent = client(secure_etcd_server, "agent")
    agent.put(TTL_KEY, "starting")
    first_token = agent._token
    time.sleep(5)
    agent.put(TTL_KEY, "running")
    assert agent._token and agent._token != first_token
    assert agent.get(TTL_KEY)[TTL_KEY] == "running"


def test_wrong_password_is_a_clear_error(secure_etcd_server):
    wrong = EtcdClient(endpoint=secure_etcd_server.url, ca_cert=secure_etcd_server.ca,
                       client_cert=secure_etcd_server.client_cert, client_key=secure_etcd_server.client_key,
                       user="agent", password="wrong", timeout=5)
    with pytest.raises(EtcdError, match="agent"):
        wrong.get("/sorna/secure/config/")


UNPRIVILEGED_PROBE = r"""
import json, subprocess, sys
from gpufleet.etcd import EtcdClient, EtcdError
url, ca, cert, key, password = sys.argv[1:6]
results = {}
try:
    open(key).read()
    results["key"] = "readable"
except OSError as exc:
    results["key"] = type(exc).__name__
for name, call in (("get", lambda c: c.get("/sorna/secure/config/", prefix=True)),
                   ("put", lambda c: c.put("/sorna/secure/config/redis/addr", "evil:6379"))):
    try:
        call(EtcdClient(endpoint=url, ca_cert=ca, user="root", password=password, timeout=5))
        results[name] = "allowed"
    except EtcdError as exc:
        results[name] = str(exc)
etcdctl = subprocess.run(["etcdctl", f"--endpoints={url}", f"--cacert={ca}", "--dial-timeout=3s",
                          "--command-timeout=5s", "put", "/sorna/secure/config/redis/addr", "evil:6379"],
                         capture_output=True, text=True, env={"ETCDCTL_USER": "root:" + password,
                                                              "PATH": "/usr/bin:/bin"})
results["etcdctl"] = etcdctl.returncode
print(json.dumps(results))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a probe as the unprivileged user nobody")
def test_unprivileged_process_is_refused_even_knowing_the_root_password(secure_etcd_server):
    import json

    client(secure_etcd_server).put(ADDR, "10.0.0.2:6379")
    # nobody gets the CA (public) in a directory of its own; the client key stays root's (0600).
    with tempfile.TemporaryDirectory(dir="/tmp") as shared:
        os.chmod(shared, 0o755)
        ca_copy = Path(shared) / "ca.crt"
        ca_copy.write_bytes(Path(secure_etcd_server.ca).read_bytes())
        ca_copy.chmod(0o644)
        # The system interpreter (the test venv's may sit where nobody cannot reach); the
        # client module needs only the standard library, and is passed in a readable copy.
        Path(shared, "gpufleet").mkdir()
        Path(shared, "gpufleet", "__init__.py").write_text("")
        Path(shared, "gpufleet", "etcd.py").write_text(Path(gpufleet.etcd.__file__).read_text())
        for path in Path(shared).rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        result = subprocess.run(
            [python, "-c", UNPRIVILEGED_PROBE, secure_etcd_server.url, str(ca_copy),
             secure_etcd_server.client_cert, secure_etcd_server.client_key, secure_etcd_server.root_password],
            user="nobody", group="nogroup", capture_output=True, text=True, timeout=60,
            env={"PYTHONPATH": shared, "PATH": "/usr/bin:/bin"}, cwd="/")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["key"] == "PermissionError"
    assert outcome["get"] != "allowed" and "cannot reach etcd" in outcome["get"]
    assert outcome["put"] != "allowed" and "cannot reach etcd" in outcome["put"]
    assert outcome["etcdctl"] != 0
    assert client(secure_etcd_server).get(ADDR)[ADDR] == "10.0.0.2:6379"
