"""From a fresh clone to a playbook run the way AWX runs it.

1. `git clone` of this repository (its committed HEAD), `ansible-galaxy collection build`.
2. The dependencies of collections/requirements.yml as local tarballs, packed from the
   copies the pinned `ansible` package bundles (no Galaxy server is reachable).
3. `ansible-galaxy collection install --offline` of all of them into an empty collections
   path; the bundled collections are hidden from Ansible (ANSIBLE_COLLECTIONS_SCAN_SYS_PATH
   off), so only what was installed there can be used, and galaxy.yml's version ranges are
   checked against the tarballs by ansible-galaxy's own resolver.
4. A playbook with `module_defaults: {group/kubernetes.core.k8s: …}` runs kubernetes.core's
   `k8s_info` and gpufleet's `node_taint` with exactly the environment AWX's "OpenShift or
   Kubernetes API Bearer Token" credential injects: K8S_AUTH_HOST, K8S_AUTH_API_KEY,
   K8S_AUTH_VERIFY_SSL, K8S_AUTH_SSL_CA_CERT. The API is the emulator behind a TLS front
   (a CA of the test's own) that refuses any request without the credential's bearer token.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import http.server
import io
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import ansible_collections
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.ansible, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
TOKEN = "awx-credential-token-7f3a"  # noqa: S105 (a test credential)
NODE = "gpu-awx-1"
NEEDS_KUBE = pytest.mark.xfail(
    strict=True,
    reason="needs branch kube: K8S_AUTH_* resolution in the modules and the "
    "group/kubernetes.core.k8s action-group extension in meta/runtime.yml",
)


# ------------------------------------------------------------------ the TLS front


def make_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpufleet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


class BearerTlsFront:
    """HTTPS in front of the emulator: 401 without `Authorization: Bearer TOKEN`, else forwarded."""

    def __init__(self, upstream: str, cert: Path, key: Path, token: str):
        self.seen: list[tuple[str, str, str]] = []  # (method, path, Authorization header)
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                authorization = self.headers.get("Authorization", "")
                front.seen.append((self.command, self.path, authorization))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if authorization != f"Bearer {token}":
                    payload = json.dumps(
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "reason": "Unauthorized",
                            "code": 401,
                        }
                    ).encode()
                    status, headers = 401, {"Content-Type": "application/json"}
                else:
                    host, port = upstream.removeprefix("http://").split(":")
                    connection = http.client.HTTPConnection(host, int(port), timeout=30)
                    forwarded = {
                        k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                    }
                    connection.request(self.command, self.path, body=body or None, headers=forwarded)
                    response = connection.getresponse()
                    payload, status = response.read(), response.status
                    headers = {
                        k: v
                        for k, v in response.getheaders()
                        if k.lower() not in ("transfer-encoding", "connection", "content-length")
                    }
                    connection.close()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BearerTlsFront:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


# ------------------------------------------------------------------ fresh clone -> installed collections


def empty_config(collections: Path) -> Path:
    """An ansible.cfg with no settings, so no checkout's ansible.cfg applies."""
    path = collections.parent / "empty-ansible.cfg"
    if not path.exists():
        path.write_text("[defaults]\n")
    return path


def isolated_env(collections: Path, extra: dict | None = None) -> dict:
    """Only `collections` is searched: the bundled collections of the ansible package are hidden."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANSIBLE_", "K8S_AUTH_")) and k not in ("KUBECONFIG",)
    }
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="False",
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_CONFIG=str(empty_config(collections)),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra or {})
    return env


def pack_bundled(name: str, dest: Path) -> Path:
    """A collection artifact of the copy the ansible package bundles: its files with the
    MANIFEST.json and FILES.json at the root, FILES.json keeping only the entries the
    bundle ships (the package leaves out CI files) so every listed checksum is verified."""
    namespace, collection = name.split(".")
    source = Path(ansible_collections.__path__[0]) / namespace / collection
    manifest = json.loads((source / "MANIFEST.json").read_text())
    files = json.loads((source / "FILES.json").read_text())
    files["files"] = [
        entry for entry in files["files"] if entry["name"] == "." or (source / entry["name"]).exists()
    ]
    files_json = json.dumps(files).encode()
    manifest["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(files_json).hexdigest()
    version = manifest["collection_info"]["version"]
    artifact = dest / f"{namespace}-{collection}-{version}.tar.gz"

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(artifact, "w:gz") as tar:
        add_bytes(tar, "MANIFEST.json", json.dumps(manifest).encode())
        add_bytes(tar, "FILES.json", files_json)
        for entry in files["files"]:
            if entry["name"] != ".":
                tar.add(source / entry["name"], arcname=entry["name"], recursive=False)
    return artifact


@pytest.fixture(scope="module")
def collections_path(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("fresh-clone")
    clone, dist, collections = work / "clone", work / "dist", work / "collections"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300)
    dist.mkdir()
    collections.mkdir()
    env = isolated_env(collections)
    built = subprocess.run(
        [BIN / "ansible-galaxy", "collection", "build", "--output-path", dist],
        cwd=clone,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    requirements = yaml.safe_load((clone / "collections" / "requirements.yml").read_text())["collections"]
    artifacts = [pack_bundled(entry["name"], dist) for entry in requirements]
    installed = subprocess.run(
        [
            BIN / "ansible-galaxy",
            "collection",
            "install",
            "--offline",
            "-p",
            collections,
            *sorted(dist.glob("gpufleet-cluster-*.tar.gz")),
            *artifacts,
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    found = {f"{p.parent.name}.{p.name}" for p in (collections / "ansible_collections").glob("*/*")}
    assert found == {"gpufleet.cluster"} | {entry["name"] for entry in requirements}
    return collections


def test_only_the_declared_collections_are_installed(collections_path):
    listed = subprocess.run(
        [BIN / "ansible-galaxy", "collection", "list", "--format", "json"],
        capture_output=True,
        text=True,
        env=isolated_env(collections_path),
        timeout=120,
        check=True,
    )
    # Ansible lists the path it was given; the bundled collections are not visible.
    visible = {
        name: path
        for path, found in json.loads(listed.stdout).items()
        for name in found
        if not name.startswith("ansible._")  # ansible-core's own internal collection
    }
    assert set(visible) == {"gpufleet.cluster", "community.crypto", "kubernetes.core"}, visible
    assert all(path.startswith(str(collections_path)) for path in visible.values()), visible


# ------------------------------------------------------------------ the AWX-style run

PLAYBOOK = [
    {
        "name": "Taint a GPU node with AWX's Kubernetes credential",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        # One module_defaults entry for kubernetes.core's modules and gpufleet's alike.
        "module_defaults": {"group/kubernetes.core.k8s": "{{ kube_defaults }}"},
        "tasks": [
            {
                "name": "Read the node with kubernetes.core",
                "register": "node_info",
                "kubernetes.core.k8s_info": {"kind": "Node", "name": NODE},
            },
            {
                "name": "Taint the node with gpufleet",
                "gpufleet.cluster.node_taint": {
                    "name": NODE,
                    "taints": [{"key": "gpufleet.io/maintenance", "value": "awx", "effect": "NoSchedule"}],
                },
            },
        ],
    }
]


def run_playbook(collections: Path, work: Path, kube_defaults: dict, awx_env: dict) -> str:
    playbook = work / "awx.yml"
    playbook.write_text(yaml.safe_dump(PLAYBOOK, sort_keys=False))
    proc = subprocess.run(
        [
            BIN / "ansible-playbook",
            "-i",
            "localhost,",
            playbook,
            "-e",
            json.dumps({"kube_defaults": kube_defaults}),
        ],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=300,
        check=False,
        env=isolated_env(collections, awx_env),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture
def tls_api(kube_api, tmp_path):
    kube_api.add_node(NODE)
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    with BearerTlsFront(kube_api.url, cert, key, TOKEN) as front:
        yield kube_api, front, ca


def taints(kube_api) -> list[dict]:
    return kube_api.get_node(NODE)["spec"].get("taints") or []


@NEEDS_KUBE
def test_awx_credential_variables_drive_node_taint(collections_path, tls_api, tmp_path):
    """AWX injects the credential as environment variables; module_defaults holds a site setting."""
    kube_api, front, ca = tls_api
    awx_env = {
        "K8S_AUTH_HOST": front.url,
        "K8S_AUTH_API_KEY": TOKEN,
        "K8S_AUTH_VERIFY_SSL": "True",
        "K8S_AUTH_SSL_CA_CERT": str(ca),
    }
    run_playbook(collections_path, tmp_path, {"validate_certs": True}, awx_env)
    assert {"key": "gpufleet.io/maintenance", "value": "awx", "effect": "NoSchedule"} in taints(kube_api)
    # Every request came over TLS (the front speaks nothing else) with the credential's token.
    assert front.seen and all(auth == f"Bearer {TOKEN}" for _, _, auth in front.seen), front.seen
    assert any(method == "PATCH" and path == f"/api/v1/nodes/{NODE}" for method, path, _ in front.seen)


@NEEDS_KUBE
def test_module_defaults_group_reaches_node_taint(collections_path, tls_api, tmp_path):
    """The token only in `module_defaults: group/kubernetes.core.k8s` still reaches node_taint:
    gpufleet's Kubernetes modules are members of kubernetes.core's action group."""
    kube_api, front, ca = tls_api
    awx_env = {"K8S_AUTH_HOST": front.url, "K8S_AUTH_VERIFY_SSL": "True", "K8S_AUTH_SSL_CA_CERT": str(ca)}
    run_playbook(collections_path, tmp_path, {"api_key": TOKEN}, awx_env)
    assert {"key": "gpufleet.io/maintenance", "value": "awx", "effect": "NoSchedule"} in taints(kube_api)
    patches = [auth for method, _, auth in front.seen if method == "PATCH"]
    assert patches and all(auth == f"Bearer {TOKEN}" for auth in patches)


def test_a_wrong_token_is_refused(collections_path, tls_api, tmp_path):
    """The checks above can fail: with another token the front refuses kubernetes.core's first task."""
    kube_api, front, ca = tls_api
    awx_env = {
        "K8S_AUTH_HOST": front.url,
        "K8S_AUTH_API_KEY": "a-revoked-token",
        "K8S_AUTH_VERIFY_SSL": "True",
        "K8S_AUTH_SSL_CA_CERT": str(ca),
    }
    with pytest.raises(AssertionError, match="Unauthorized|401"):
        run_playbook(collections_path, tmp_path, {"validate_certs": True}, awx_env)
    assert front.seen and all(auth == "Bearer a-revoked-token" for _, _, auth in front.seen)
    assert taints(kube_api) == []


def test_an_unknown_ca_is_refused(collections_path, tls_api, tmp_path):
    """And K8S_AUTH_SSL_CA_CERT is what makes TLS verification pass: another CA fails it."""
    kube_api, front, _ = tls_api
    other_ca, _, _ = make_ca_and_server_cert(tmp_path / "other")
    awx_env = {
        "K8S_AUTH_HOST": front.url,
        "K8S_AUTH_API_KEY": TOKEN,
        "K8S_AUTH_VERIFY_SSL": "True",
        "K8S_AUTH_SSL_CA_CERT": str(other_ca),
    }
    with pytest.raises(AssertionError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        run_playbook(collections_path, tmp_path, {"validate_certs": True}, awx_env)
    assert front.seen == [] and taints(kube_api) == []
