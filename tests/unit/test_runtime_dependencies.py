"""gpufleet's runtime dependencies are declared once and pinned consistently: every
third-party import in services/src is a declared dependency (services/pyproject.toml,
a range), each declared dependency is pinned exactly in requirements/node.txt (what
nodes and the execution environment install) at a version inside its range, and
node.txt and dev.txt pin the same versions."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
SOURCES = REPO / "services" / "src" / "gpufleet"


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "services" / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    return {canonicalize_name(r.name): r for r in requirements
            if r.marker is None or r.marker.evaluate(default_environment())}


def pins(name: str) -> dict[str, str]:
    result = {}
    for line in (REPO / "requirements" / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            package, _, version = line.partition("==")
            assert version, f"requirements/{name}: {line!r} is not an exact pin"
            result[canonicalize_name(package)] = version
    return result


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module -> the files importing it, for every import that is not stdlib or gpufleet."""
    found: dict[str, list[str]] = {}
    for path in sorted(SOURCES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("gpufleet", "__future__"):
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    distributions = importlib.metadata.packages_distributions()
    dependencies = declared()
    # tomli is imported only on Python < 3.11, where its declared marker applies.
    optional = {"tomli"} if sys.version_info >= (3, 11) else set()
    imports = third_party_imports()
    assert "numpy" in imports, "the scan finds nothing: it is broken"
    undeclared = {}
    for module, files in imports.items():
        if module in optional:
            continue
        names = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not names & set(dependencies):
            undeclared[module] = files
    assert not undeclared, f"imported but not in services/pyproject.toml dependencies: {undeclared}"


@pytest.mark.parametrize("lock", ["node.txt", "dev.txt"])
def test_every_declared_dependency_is_pinned_inside_its_range(lock):
    pinned = pins(lock)
    for name, requirement in declared().items():
        assert name in pinned, f"{requirement} is not pinned in requirements/{lock}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements/{lock} pins {name}=={pinned[name]}, outside pyproject's {requirement.specifier}")


def test_node_and_dev_locks_agree():
    node, dev = pins("node.txt"), pins("dev.txt")
    differing = {name: (version, dev.get(name)) for name, version in node.items()
                 if name in dev and dev[name] != version}
    assert not differing, f"node.txt and dev.txt pin different versions: {differing}"
    # The dev venv runs the services too: everything the nodes get is in it.
    assert set(node) - set(dev) <= {canonicalize_name("async-timeout")}, set(node) - set(dev)
