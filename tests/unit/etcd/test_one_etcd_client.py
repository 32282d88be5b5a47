"""gpufleet/etcd.py is the one etcd client: no code imports an etcd library, and none is installed."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
ETCD_LIBRARIES = ("etcd3gw", "etcd3", "aetcd", "etcd", "python_etcd", "pyetcd")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_code_imports_an_etcd_library():
    offenders = {}
    for root in ("services/src", "plugins", "tests", "benchmarks"):
        for path in (REPO / root).rglob("*.py"):
            found = imported_modules(path) & set(ETCD_LIBRARIES)
            if found:
                offenders[str(path.relative_to(REPO))] = sorted(found)
    assert offenders == {}


@pytest.mark.parametrize("library", ["etcd3gw", "futurist", "debtcollector"])
def test_the_old_client_and_its_dependencies_are_not_pinned(library):
    for requirements in ("requirements/node.txt", "requirements/dev.txt", "services/pyproject.toml"):
        assert library not in (REPO / requirements).read_text().lower(), requirements
    assert importlib.util.find_spec(library) is None
