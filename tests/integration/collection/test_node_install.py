"""A clean install of the node runtime set, the way nodes get it: scripts/wheelhouse
stages the gpufleet wheel and the archive of requirements/node.txt's wheels by running
roles/gpufleet_install's own controller tasks; the archive is unpacked and installed
with `pip --no-index` into a fresh venv (as the role's node tasks do), then every
gpufleet module is imported and every CLI command's --help runs from that venv.
A runtime dependency missing from node.txt fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.ansible, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]

LIST_MODULES = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    import gpufleet
    failed, names = [], []
    for module in pkgutil.walk_packages(gpufleet.__path__, "gpufleet."):
        names.append(module.name)
        try:
            importlib.import_module(module.name)
        except Exception as error:  # every failure is reported, not the first
            failed.append(f"{module.name}: {type(error).__name__}: {error}")
    print(json.dumps({"file": gpufleet.__file__, "modules": names, "failed": failed}))
""")

LIST_COMMANDS = textwrap.dedent("""
    import json, click
    from gpufleet.cli import main

    def walk(command, path, context):
        yield path
        if isinstance(command, click.Group):
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                yield from walk(sub, path + [name], click.Context(sub, info_name=name, parent=context))

    print(json.dumps(list(walk(main, [], click.Context(main, info_name="gpufleet")))))
""")


def clean_env() -> dict[str, str]:
    """No trace of the checkout or the dev venv: only what the fresh venv holds is importable."""
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


@pytest.fixture(scope="module")
def node_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("node-install")
    staged = subprocess.run([REPO / "scripts" / "wheelhouse", work / "wheelhouse"], capture_output=True,
                            text=True, timeout=1200, check=False)
    assert staged.returncode == 0, staged.stdout + staged.stderr
    wheel, archive = (Path(line) for line in staged.stdout.split())
    assert wheel.name == "gpufleet-0.1.0-py3-none-any.whl" and archive.name.startswith("deps-")

    # The node side of roles/gpufleet_install: unpack, install the lock with
    # --no-index, then gpufleet itself with --no-deps.
    wheels = work / "node-wheelhouse"
    wheels.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(wheels, filter="data")
    venv = work / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    env = clean_env()
    for argv in (
        [base_python, "-m", "venv", venv],
        [venv / "bin" / "pip", "install", "-q", "--no-index", "--find-links", wheels,
         "-r", REPO / "requirements" / "node.txt"],
        [venv / "bin" / "pip", "install", "-q", "--no-index", "--no-deps", "--find-links", wheels, wheel],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, cwd=work,
                              check=False)
        assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    return venv


def run_in(venv: Path, *argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*argv], capture_output=True, text=True, timeout=120, env=clean_env(),
                          cwd=venv, check=False, **kwargs)


def test_installed_set_has_every_declared_dependency(node_venv):
    """pip check: gpufleet's own requirements (pyproject) are all met by the node lock."""
    proc = run_in(node_venv, node_venv / "bin" / "pip", "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_gpufleet_module_imports(node_venv):
    proc = run_in(node_venv, node_venv / "bin" / "python", "-c", LIST_MODULES)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["file"].startswith(str(node_venv)), "imported gpufleet from outside the fresh venv"
    assert {"gpufleet.placement.replay", "gpufleet.health.daemon", "gpufleet.agent.core",
            "gpufleet.kube.client"} <= set(result["modules"])
    assert not result["failed"], "\n".join(result["failed"])


def cli_commands() -> list[tuple[str, ...]]:
    """Every command path of the `gpufleet` group (from this checkout's code, the code installed)."""
    import click
    from gpufleet.cli import main

    def walk(command, path, context):
        yield path
        if isinstance(command, click.Group):
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                yield from walk(sub, (*path, name), click.Context(sub, info_name=name, parent=context))

    return list(walk(main, (), click.Context(main, info_name="gpufleet")))


@pytest.mark.parametrize("command", cli_commands(), ids=lambda c: " ".join(("gpufleet", *c)))
def test_cli_command_prints_its_help(node_venv, command):
    proc = run_in(node_venv, node_venv / "bin" / "gpufleet", *command, "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Usage: gpufleet"), proc.stdout


def test_installed_commands_are_the_checkouts(node_venv):
    """The parametrization above (from this checkout) is the installed command tree."""
    listed = run_in(node_venv, node_venv / "bin" / "python", "-c", LIST_COMMANDS)
    assert listed.returncode == 0, listed.stderr
    installed = {tuple(c) for c in json.loads(listed.stdout)}
    assert installed == set(cli_commands())
    assert {(), ("health",), ("agent",), ("place",), ("place", "replay")} <= installed


def pins(lock: Path) -> set[str]:
    """name==version of each pin, names normalized as wheel file names spell them."""
    lines = (line.split("#")[0].strip() for line in lock.read_text().splitlines())
    return {line.replace("-", "_").lower() for line in lines if "==" in line}


def archived(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        names = [Path(name).name for name in tar.getnames() if name.endswith(".whl")]
    return {"==".join(name.split("-")[:2]).lower() for name in names}


def test_a_lock_change_archives_only_the_new_locks_wheels(node_venv, tmp_path):
    """Each lock's wheels are downloaded apart: a later lock's archive holds none of an earlier
    lock's wheels (the same wheelhouse directory, as a controller keeps it)."""
    wheelhouse = node_venv.parent / "wheelhouse"
    lock = tmp_path / "node.txt"
    dropped = "nvidia-ml-py==13.615.71"  # a leaf: nothing in the lock depends on it
    lock.write_text((REPO / "requirements" / "node.txt").read_text().replace(dropped + "\n", ""))
    staged = subprocess.run([REPO / "scripts" / "wheelhouse", wheelhouse], capture_output=True, text=True,
                            timeout=1200, check=False, env={**os.environ, "GPUFLEET_REQUIREMENTS": str(lock)})
    assert staged.returncode == 0, staged.stdout + staged.stderr
    archive = Path(staged.stdout.split()[1])
    gone = pins(REPO / "requirements" / "node.txt") - pins(lock)
    assert gone == {"nvidia_ml_py==13.615.71"} and archived(archive) == pins(lock)
    first = {path.name for path in wheelhouse.glob("deps-*.tar")} - {archive.name}
    assert len(first) == 1 and gone <= archived(wheelhouse / first.pop())
