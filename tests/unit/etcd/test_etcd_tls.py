"""TLS: the etcd role's generated certificates, a real etcd serving them, etcd_kv as client.

The role's certificate tasks run on localhost (they only write under a temporary
directory); an etcd started with those files, the way the role configures members
(client-cert-auth on), accepts etcd_kv with the client certificate and refuses a
client without one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
from fixtures.ansible_runner import run_playbook
from fixtures.infra_services import EtcdServer, free_port
from gpufleet.etcd import EtcdClient, EtcdError

pytestmark = [pytest.mark.ansible]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Run the etcd role's certificate generation for a one-member group on localhost."""
    work = tmp_path_factory.mktemp("etcd-tls")
    inventory = work / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"etcd": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}}}))
    tasks = [{"name": "certificates", "ansible.builtin.include_role": {
        "name": "gpufleet.cluster.etcd", "tasks_from": "tls_generate"}}]
    extra = {"etcd_tls": True, "etcd_tls_controller_dir": str(work / "pki"),
             "etcd_member_address": "127.0.0.1"}
    first = run_playbook(tasks, work, extra_vars=extra, inventory=str(inventory))
    assert first.returncode == 0, first.stdout[-3000:]
    second = run_playbook(tasks, work, extra_vars=extra, inventory=str(inventory))
    return work / "pki", first, second


@pytest.fixture(scope="module")
def tls_etcd(pki, tmp_path_factory):
    directory = pki[0]
    if not shutil.which("etcd"):
        pytest.fail("etcd is not installed: run scripts/setup")
    work = tmp_path_factory.mktemp("etcd-tls-server")
    port, peer = free_port(), free_port()
    argv = [
        shutil.which("etcd"), "--name", "localhost", "--data-dir", str(work / "data"),
        "--listen-client-urls", f"https://127.0.0.1:{port}",
        "--advertise-client-urls", f"https://127.0.0.1:{port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"localhost=http://127.0.0.1:{peer}",
        "--cert-file", str(directory / "localhost.crt"), "--key-file", str(directory / "localhost.key"),
        "--trusted-ca-file", str(directory / "ca.crt"), "--client-cert-auth",
    ]
    # Readiness over the plain /health needs a client certificate too: probe the port with curl.
    server = EtcdServer(argv=argv, ready=lambda: _tls_health(directory, port), name="etcd-tls",
                        log_path=work / "etcd.log", port=port, peer_port=peer)
    server.start()
    yield server, directory
    server.stop()


def _tls_health(directory, port) -> bool:
    probe = subprocess.run(
        ["curl", "-sf", "--cacert", str(directory / "ca.crt"), "--cert", str(directory / "client.crt"),
         "--key", str(directory / "client.key"), f"https://127.0.0.1:{port}/health"],
        capture_output=True, timeout=5)
    return probe.returncode == 0 and b"true" in probe.stdout


def test_certificate_generation_is_idempotent(pki):
    directory, first, second = pki
    assert first.changed() > 0
    assert second.changed() == 0
    assert {p.name for p in directory.iterdir()} >= {
        "ca.crt", "ca.key", "localhost.crt", "localhost.key", "client.crt", "client.key"}


def test_client_with_certificate_reads_and_writes(tls_etcd, ansible_playbook):
    server, directory = tls_etcd
    task = {"name": "kv", "gpufleet.cluster.etcd_kv": {
        "endpoint": f"https://127.0.0.1:{server.port}", "key": "/tls/k", "value": "v",
        "ca_cert": str(directory / "ca.crt"), "client_cert": str(directory / "client.crt"),
        "client_key": str(directory / "client.key")}}
    result = ansible_playbook([task])
    assert result.returncode == 0, result.stdout[-2000:]
    assert result.task("kv")["changed"] is True


def test_client_without_certificate_is_refused(tls_etcd):
    server, directory = tls_etcd
    client = EtcdClient(f"https://127.0.0.1:{server.port}", ca_cert=str(directory / "ca.crt"))
    with pytest.raises(EtcdError) as refused:
        client.get("/tls/k")
    assert "certificate" in str(refused.value).lower()


def test_plain_http_client_is_refused(tls_etcd):
    server, _ = tls_etcd
    with pytest.raises(EtcdError):
        EtcdClient(f"http://127.0.0.1:{server.port}", timeout=2).get("/tls/k")
