"""From a fresh clone to a playbook run the way AWX runs it.

1. `git clone` of this repository (its committed HEAD), `ansible-galaxy collection build`.
2. The dependencies of collections/requirements.yml as local tarballs, packed from the
   copies the pinned `ansible` package bundles (no Galaxy server is reachable).
3. `ansible-galaxy collection install --offline` of all of them into an empty collections
   path; the bundled collections are hidden from Ansible (ANSIBLE_COLLECTIONS_SCAN_SYS_PATH
   off), so only what was installed there can be used, and galaxy.yml's version ranges are
   checked against the tarballs by ansible-galaxy's own resolver.
4. A playbook with `module_defaults: {group/kubernetes.core.k8s: …}` (or gpufleet's own group,
   which extends it and so serves both collections) runs kubernetes.core's
   `k8s_info` and gpufleet's `node_taint` with exactly the environment AWX's "OpenShift or
   Kubernetes API Bearer Token" credential injects: K8S_AUTH_HOST, K8S_AUTH_API_KEY,
   K8S_AUTH_VERIFY_SSL, K8S_AUTH_SSL_CA_CERT, against the emulator serving TLS with its own
   CA and refusing any request without the credential's bearer token (`kube_api_tls`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import ansible_collections
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.ansible, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
NODE = "gpu-awx-1"
TAINT = {"key": "gpufleet.io/maintenance", "value": "awx", "effect": "NoSchedule"}


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


def playbook(group: str) -> list[dict]:
    """kubernetes.core's k8s_info, then gpufleet's node_taint, under one module_defaults group."""
    return [
        {
            "name": "Taint a GPU node with AWX's Kubernetes credential",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable},
            "module_defaults": {f"group/{group}": "{{ kube_defaults }}"},
            "tasks": [
                {
                    "name": "Read the node with kubernetes.core",
                    "kubernetes.core.k8s_info": {"kind": "Node", "name": NODE},
                },
                {
                    "name": "Taint the node with gpufleet",
                    "gpufleet.cluster.node_taint": {"name": NODE, "taints": [TAINT]},
                },
            ],
        }
    ]


def run_playbook(collections: Path, work: Path, group: str, kube_defaults: dict, awx_env: dict) -> str:
    path = work / "awx.yml"
    path.write_text(yaml.safe_dump(playbook(group), sort_keys=False))
    proc = subprocess.run(
        [
            BIN / "ansible-playbook",
            "-i",
            "localhost,",
            path,
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


def awx_env(api, token: str | None = None) -> dict:
    """Exactly what AWX's bearer-token credential injects; nothing else supplies credentials."""
    return {
        "K8S_AUTH_HOST": api.url,
        "K8S_AUTH_API_KEY": token or api.token,
        "K8S_AUTH_VERIFY_SSL": "True",
        "K8S_AUTH_SSL_CA_CERT": api.ca_cert,
    }


def taints(api) -> list[dict]:
    return api.get_node(NODE)["spec"].get("taints") or []


def test_awx_credential_variables_drive_node_taint(collections_path, kube_api_tls, tmp_path):
    """AWX injects the credential as environment variables; `module_defaults:
    group/kubernetes.core.k8s` holds a site setting for kubernetes.core's modules."""
    kube_api_tls.add_node(NODE)
    kube_api_tls.clear_requests()
    output = run_playbook(
        collections_path, tmp_path, "kubernetes.core.k8s", {"validate_certs": True}, awx_env(kube_api_tls)
    )
    assert taints(kube_api_tls) == [TAINT]
    requests = kube_api_tls.requests
    # kubernetes.core's read and gpufleet's write, both over TLS with the credential's token.
    assert any(r.method == "GET" for r in requests) and any(r.method == "PATCH" for r in requests)
    assert all(r.headers.get("Authorization") == f"Bearer {kube_api_tls.token}" for r in requests)
    assert kube_api_tls.token not in output


def test_one_module_defaults_group_serves_both_collections(collections_path, kube_api_tls, tmp_path):
    """The token only in `module_defaults: group/gpufleet.cluster.kubernetes`, which extends
    kubernetes.core.k8s, reaches kubernetes.core's k8s_info and gpufleet's node_taint."""
    kube_api_tls.add_node(NODE)
    kube_api_tls.clear_requests()
    env = awx_env(kube_api_tls)
    del env["K8S_AUTH_API_KEY"]
    run_playbook(
        collections_path, tmp_path, "gpufleet.cluster.kubernetes", {"api_key": kube_api_tls.token}, env
    )
    assert taints(kube_api_tls) == [TAINT]
    requests = kube_api_tls.requests
    assert any(r.method == "GET" for r in requests) and any(r.method == "PATCH" for r in requests)
    assert all(r.headers.get("Authorization") == f"Bearer {kube_api_tls.token}" for r in requests)


def test_kubernetes_core_group_does_not_reach_other_collections(collections_path, kube_api_tls, tmp_path):
    """extend_group works one way: kubernetes.core's own group names only its own modules, so
    options set there alone reach k8s_info and not node_taint (use gpufleet.cluster.kubernetes)."""
    kube_api_tls.add_node(NODE)
    env = awx_env(kube_api_tls)
    del env["K8S_AUTH_API_KEY"]
    with pytest.raises(AssertionError, match="401 Unauthorized"):
        run_playbook(collections_path, tmp_path, "kubernetes.core.k8s", {"api_key": kube_api_tls.token}, env)
    assert taints(kube_api_tls) == []


def test_a_wrong_token_is_refused(collections_path, kube_api_tls, tmp_path):
    """The checks above can fail: with another token the API refuses the first task."""
    kube_api_tls.add_node(NODE)
    with pytest.raises(AssertionError, match="Unauthorized|401"):
        run_playbook(
            collections_path,
            tmp_path,
            "kubernetes.core.k8s",
            {"validate_certs": True},
            awx_env(kube_api_tls, "revoked"),
        )
    assert taints(kube_api_tls) == []
