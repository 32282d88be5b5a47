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


def ci_ansible_core() -> tuple[int, int]:
    """The ansible-core series CI runs: the pin in requirements/dev.txt."""
    [pin] = [line for line in (REPO / "requirements" / "dev.txt").read_text().splitlines()
             if line.startswith("ansible-core==")]
    major, minor = pin.split("==")[1].split(".")[:2]
    return int(major), int(minor)


def test_requires_ansible_is_no_older_than_what_ci_tests():
    from packaging.specifiers import SpecifierSet

    claim = SpecifierSet(yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["requires_ansible"])
    major, minor = ci_ansible_core()
    assert claim.contains(f"{major}.{minor}.0"), f"CI's ansible-core {major}.{minor} is outside {claim}"
    assert not claim.contains(f"{major}.{minor - 1}.99"), (
        f"{claim} claims ansible-core older than the {major}.{minor} series CI tests")


def test_a_sanity_ignore_file_for_every_claimed_ansible_core():
    from packaging.specifiers import SpecifierSet

    claim = SpecifierSet(yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["requires_ansible"])
    files = {path.name for path in (REPO / "tests" / "sanity").glob("ignore-*.txt")}
    major, minor = ci_ansible_core()
    # Every released series the claim covers, up to the newest one CI tests.
    claimed = {f"ignore-{major}.{m}.txt" for m in range(0, minor + 1) if claim.contains(f"{major}.{m}.0")}
    assert claimed and claimed <= files, f"missing: {sorted(claimed - files)}"
    outside = {name for name in files if not claim.contains(name[len("ignore-"):-len(".txt")] + ".0")}
    assert not outside, f"ignore files for ansible-core the collection does not claim: {sorted(outside)}"
    # Each ignore names an existing file and says why.
    for name in claimed:
        for line in (REPO / "tests" / "sanity" / name).read_text().splitlines():
            path, _, rest = line.partition(" ")
            assert (REPO / path).is_file(), f"{name}: {path} does not exist"
            assert "#" in rest, f"{name}: {line!r} gives no reason"


def test_diagnostics_job_defaults_name_the_image_the_recipe_builds():
    """The quarantine and sweep Jobs default to <recipe name>:<gpufleet version>, the tag
    scripts/diagnostics-image gives the image it builds (tests/image builds and runs it)."""
    import ast

    [name] = [line.split("=", 1)[1] for line in (REPO / "lab" / "diagnostics.recipe").read_text().splitlines()
              if line.startswith("name=")]
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    expected = f"{name}:{version}"
    source = (REPO / "services/src/gpufleet/kube/diagnostics.py").read_text()
    [default] = [node.value.value for node in ast.parse(source).body if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", "") == "DEFAULT_IMAGE"]
    assert default == expected
    image_reference = re.compile(r"[\w.-]+/[\w./-]*(?:health-agent|diagnostics)[\w.-]*:[\w.-]+")
    sources = [*sorted((REPO / "playbooks").glob("*.yml")), *sorted((REPO / "plugins/modules").glob("*.py")),
               *sorted((REPO / "roles").glob("*/defaults/main.yml"))]
    images = {(image, path.name) for path in sources for image in image_reference.findall(path.read_text())}
    assert images, "no diagnostics image default found"
    wrong = {(image, where) for image, where in images if image != expected
             and not image.startswith("registry.example.com/")}  # documentation examples
    assert not wrong, f"diagnostics image defaults other than {expected}: {sorted(wrong)}"
