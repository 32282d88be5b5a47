"""The layers of DESIGN.md, checked on the source: who may import which outside library and which package.

An AST scan of services/src/gpufleet and plugins (imports anywhere in a file, also inside functions):
- `kubernetes` only under gpufleet/kube (the one client, deadlines, watches);
- `pynvml` only under gpufleet/gpu;
- an etcd library (etcd3, etcd3gw, aetcd) only in gpufleet/etcd.py;
- gpufleet/gpu imports nothing from gpufleet.health, .agent, .placement or .kube;
- the layer-2 packages (health, placement, agent) do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "services" / "src"
SCANNED = [SOURCE / "gpufleet", REPO / "plugins"]
LAYER_2 = ("health", "placement", "agent")
ETCD_LIBRARIES = ("etcd3", "etcd3gw", "aetcd")


def module_name(relative: str) -> str:
    """The dotted name of a repository file (plugins get their collection's package)."""
    parts = list(Path(relative).with_suffix("").parts)
    if parts[:2] == ["services", "src"]:
        parts = parts[2:]
    else:
        parts = ["ansible_collections", "gpufleet", "cluster"] + parts
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(relative: str, text: str) -> set[str]:
    """Every module a file imports, absolute (relative imports resolved).

    `from a.b import c` counts as a.b; `from gpufleet import health` as gpufleet.health.
    """
    tree = ast.parse(text, relative)
    package = module_name(relative).split(".")
    if not relative.endswith("__init__.py"):
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            if base == "gpufleet":
                found.update(f"gpufleet.{alias.name}" for alias in node.names)
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations_in(relative: str, text: str) -> set[tuple[str, str]]:
    here = module_name(relative)
    found = set()
    for name in imports_of(relative, text):
        top = name.split(".")[0]
        if top == "kubernetes" and not within(here, "gpufleet.kube"):
            found.add((relative, "kubernetes"))
        if top == "pynvml" and not within(here, "gpufleet.gpu"):
            found.add((relative, "pynvml"))
        if top in ETCD_LIBRARIES and here != "gpufleet.etcd":
            found.add((relative, top))
        if within(here, "gpufleet.gpu") and any(within(name, f"gpufleet.{above}")
                                               for above in ("health", "agent", "placement", "kube")):
            found.add((relative, name))
        layer = next((p for p in LAYER_2 if within(here, f"gpufleet.{p}")), None)
        if layer and any(within(name, f"gpufleet.{other}") for other in LAYER_2 if other != layer):
            found.add((relative, name))
    return found


def all_violations() -> set[tuple[str, str]]:
    found = set()
    for root in SCANNED:
        for path in sorted(root.rglob("*.py")):
            found |= violations_in(str(path.relative_to(REPO)), path.read_text())
    return found


def test_no_import_crosses_a_layer_boundary():
    unexpected = sorted(all_violations())
    assert not unexpected, "imports across DESIGN.md's boundaries:\n" + "\n".join(
        f"  {file}: imports {name}" for file, name in unexpected)


def test_the_scan_sees_what_it_must_refuse():
    """The rules themselves: each kind of crossing is found (so an empty result means something)."""
    samples = [
        ("services/src/gpufleet/health/probe.py", "import kubernetes\nfrom gpufleet.agent import core\n",
         {"kubernetes", "gpufleet.agent"}),
        ("services/src/gpufleet/gpu/probe.py", "from ..placement import engine\nimport pynvml\n",
         {"gpufleet.placement"}),
        ("services/src/gpufleet/agent/probe.py", "def f():\n    import aetcd\n", {"aetcd"}),
        ("services/src/gpufleet/placement/probe.py", "from gpufleet import health\n", {"gpufleet.health"}),
        ("services/src/gpufleet/placement/probe.py", "from gpufleet.agent.core import x\n",
         {"gpufleet.agent.core"}),
        ("plugins/modules/probe.py", "from kubernetes import client\n", {"kubernetes"}),
        ("services/src/gpufleet/kube/probe.py", "import kubernetes.watch\n", set()),
        ("services/src/gpufleet/etcd.py", "import etcd3gw\n", set()),
        ("services/src/gpufleet/health/probe.py", "from gpufleet.kube.api import KubeApi\n", set()),
    ]
    for relative, text, expected in samples:
        assert {name for _, name in violations_in(relative, text)} == expected, relative
