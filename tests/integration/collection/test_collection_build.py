"""The collection tarball builds, installs into a fresh collections path, and
its roles, modules and shipped services run from the installed copy."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from fixtures.ansible_runner import REPO, ansible_env

pytestmark = [pytest.mark.ansible, pytest.mark.integration]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def installed_collection(tmp_path_factory):
    work = tmp_path_factory.mktemp("collection")
    subprocess.run([BIN / "ansible-galaxy", "collection", "build", "--force", "--output-path", work],
                   cwd=REPO, check=True, capture_output=True, text=True)
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    tarball = work / f"gpufleet-cluster-{version}.tar.gz"
    assert tarball.exists()
    collections = work / "collections"
    # --offline: dependencies are checked against what is installed (the ansible
    # bundle's collections), no Galaxy server is contacted.
    proc = subprocess.run([BIN / "ansible-galaxy", "collection", "install", "--offline", "-p", collections,
                           tarball], capture_output=True, text=True,
                          env=ansible_env({"ANSIBLE_COLLECTIONS_PATH": str(collections)}))
    assert proc.returncode == 0, proc.stderr
    assert "gpufleet.cluster" in proc.stdout and "was installed successfully" in proc.stdout, proc.stdout
    return tarball, collections / "ansible_collections" / "gpufleet" / "cluster"


def test_tarball_ships_content_and_leaves_out_local_state(installed_collection):
    tarball, _ = installed_collection
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    for required in ("MANIFEST.json", "FILES.json", "meta/runtime.yml", "README.md", "LICENSE",
                     "roles/gpufleet_install/tasks/main.yml", "services/pyproject.toml",
                     "requirements/node.txt", "plugins/module_utils/common.py"):
        assert required in names, required
    assert not any(n.startswith((".venv", ".collections", ".git/", ".cache")) for n in names)
    assert not any("__pycache__" in n for n in names)


def test_installed_manifest_names_the_collection(installed_collection):
    _, path = installed_collection
    manifest = json.loads((path / "MANIFEST.json").read_text())["collection_info"]
    assert (manifest["namespace"], manifest["name"]) == ("gpufleet", "cluster")


def test_role_runs_from_installed_path(installed_collection, tmp_path):
    """The install role builds the services wheel from the copy inside the installed collection."""
    _, path = installed_collection
    wheelhouse = tmp_path / "wheelhouse"
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "build the wheel from the installed collection", "hosts": "localhost",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable,
                 "gpufleet_install_controller_wheelhouse": str(wheelhouse),
                 "gpufleet_install_source": "index"},
        "tasks": [{"name": "controller side of gpufleet_install",
                   "ansible.builtin.include_role": {"name": "gpufleet.cluster.gpufleet_install",
                                                    "tasks_from": "controller.yml"}}],
    }]))
    env = ansible_env({"ANSIBLE_COLLECTIONS_PATH": str(path.parents[2])})
    proc = subprocess.run([BIN / "ansible-playbook", "-i", "localhost,", "-c", "local", playbook],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list((wheelhouse / "dist").glob("gpufleet-*.whl"))
    assert [w.name for w in wheels] == ["gpufleet-0.1.0-py3-none-any.whl"]


def test_module_docs_load_from_installed_path(installed_collection):
    _, path = installed_collection
    modules = sorted(p.stem for p in (path / "plugins" / "modules").glob("*.py"))
    assert {"node_taint", "node_quarantine", "workload_placement", "etcd_kv"} <= set(modules), modules
    env = ansible_env({"ANSIBLE_COLLECTIONS_PATH": str(path.parents[2])})
    proc = subprocess.run([BIN / "ansible-doc", "--json", *[f"gpufleet.cluster.{m}" for m in modules]],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    assert set(docs) == {f"gpufleet.cluster.{m}" for m in modules}
