"""The collection's declared dependencies are exactly what its content uses.

Every plugin named by FQCN in the shipped roles and playbooks (task modules, lookups,
filters and tests, module_defaults groups, roles) belongs to gpufleet.cluster,
ansible.builtin, or a collection galaxy.yml depends on; and every dependency is used.
galaxy.yml, collections/requirements.yml and the execution environment agree."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
OWN = {"gpufleet.cluster", "ansible.builtin"}
FQCN = r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*"
# Collection-qualified names inside templated strings: lookup('x.y.z'), query(...),
# `| x.y.z` filters, `is x.y.z` tests, group/x.y.z in module_defaults.
IN_TEXT = [re.compile(pattern) for pattern in (
    rf"""\b(?:lookup|query|q)\(\s*['"]({FQCN})['"]""",
    rf"\|\s*({FQCN})\b",
    rf"\bis\s+(?:not\s+)?({FQCN})\b",
    rf"\bgroup/({FQCN})\b",
)]
TASK_KEYS_WITH_ROLES = ("ansible.builtin.include_role", "ansible.builtin.import_role")


def shipped_yaml() -> list[Path]:
    files = sorted((REPO / "playbooks").glob("*.yml"))
    for folder in ("tasks", "handlers", "meta", "defaults", "vars"):
        files += sorted((REPO / "roles").glob(f"*/{folder}/*.yml"))
    return files


def collections_used() -> dict[str, set[str]]:
    """Collection -> the files naming one of its plugins or roles."""
    used: dict[str, set[str]] = {}

    def note(name: str, path: Path) -> None:
        collection = ".".join(name.split(".")[:2])
        used.setdefault(collection, set()).add(str(path.relative_to(REPO)))

    def walk(node, path: Path) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and re.fullmatch(FQCN, key):
                    note(key, path)  # a task's module (or a module_defaults entry)
                if key in TASK_KEYS_WITH_ROLES and isinstance(value, dict):
                    name = str(value.get("name", ""))
                    if re.fullmatch(FQCN, name):
                        note(name, path)
                if key == "roles" and isinstance(value, list):
                    for role in value:
                        name = role.get("role", role.get("name", "")) if isinstance(role, dict) else role
                        if re.fullmatch(FQCN, str(name)):
                            note(str(name), path)
                if key == "collections" and isinstance(value, list):
                    for collection in value:
                        note(f"{collection}.x", path)
                walk(value, path)
        elif isinstance(node, list):
            for item in node:
                walk(item, path)
        elif isinstance(node, str):
            for pattern in IN_TEXT:
                for name in pattern.findall(node):
                    note(name, path)

    for path in shipped_yaml():
        walk(yaml.safe_load(path.read_text()), path)
    for template in sorted((REPO / "roles").glob("*/templates/*.j2")):
        for pattern in IN_TEXT[:3]:
            for name in pattern.findall(template.read_text()):
                note(name, template)
    return used


def galaxy_dependencies() -> dict[str, str]:
    return yaml.safe_load((REPO / "galaxy.yml").read_text()).get("dependencies") or {}


def test_the_scan_sees_the_content():
    used = collections_used()
    assert {"ansible.builtin", "gpufleet.cluster"} <= set(used)
    assert "roles/etcd/tasks/tls_generate.yml" in used.get("community.crypto", set())


def test_every_collection_used_is_declared():
    used = collections_used()
    undeclared = {name: sorted(files) for name, files in used.items()
                  if name not in OWN and name not in galaxy_dependencies()}
    assert not undeclared, f"used but not in galaxy.yml dependencies: {undeclared}"


def test_every_declared_dependency_is_used():
    used = collections_used()
    unused = sorted(set(galaxy_dependencies()) - set(used))
    assert not unused, f"galaxy.yml depends on collections the content never uses: {unused}"


def test_requirements_file_and_execution_environment_match_galaxy_yml():
    requirements = yaml.safe_load((REPO / "collections" / "requirements.yml").read_text())
    listed = {entry["name"]: entry["version"] for entry in requirements["collections"]}
    assert listed == galaxy_dependencies()
    ee = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert ee["dependencies"]["galaxy"] == "collections/requirements.yml"
    assert ee["dependencies"]["python"] == "requirements/node.txt"


def test_collection_ee_metadata_names_the_runtime_lock():
    meta = yaml.safe_load((REPO / "meta" / "execution-environment.yml").read_text())
    assert meta["version"] == 1
    python = meta["dependencies"]["python"]
    assert (REPO / python).is_file() and python == "requirements/node.txt"
    assert set(meta["dependencies"]) <= {"python", "system"}
