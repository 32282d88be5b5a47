"""The diagnostics image (lab/diagnostics.recipe, scripts/diagnostics-image): built from
Debian's archive with the gpufleet wheelhouse, no registry; tagged by digest and by
the gpufleet version the Job defaults name; saved as an archive k3s imports; and it
runs the diagnostics Job's own command.

Not in pytest's default paths: a first build takes about 3.5 minutes (debootstrap).
`scripts/test` runs it as the `image` gate; later runs reuse the image of an
unchanged digest."""

from __future__ import annotations

import json
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest
from gpufleet.kube.diagnostics import DEFAULT_COMMAND, DEFAULT_IMAGE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "diagnostics-image"


def recipe_name() -> str:
    [line] = [line for line in (REPO / "lab" / "diagnostics.recipe").read_text().splitlines()
              if line.startswith("name=")]
    return line.split("=", 1)[1]


@pytest.fixture(scope="module")
def saved_archive() -> Path:
    proc = subprocess.run([SCRIPT, "build"], capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip())
    assert path.is_file() and path.name.startswith("gpufleet-diagnostics-")
    return path


def docker_run(*command: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "run", "--rm", "--network", "none", DEFAULT_IMAGE, *command],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_archive_carries_the_digest_and_the_default_tag(saved_archive):
    digest = saved_archive.name.removeprefix("gpufleet-diagnostics-").removesuffix(".tar")
    assert len(digest) == 12 and int(digest, 16) >= 0
    with tarfile.open(saved_archive) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
    [image] = manifest
    assert set(image["RepoTags"]) == {f"{recipe_name()}:{digest}", DEFAULT_IMAGE}


def test_an_unchanged_recipe_reuses_the_image(saved_archive):
    """Built once per digest: a second build finds the image current and the same archive."""
    proc = subprocess.run([SCRIPT, "build"], capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()) == saved_archive
    assert "is current" in proc.stderr and "building" not in proc.stderr


def test_image_runs_the_health_check(saved_archive):
    proc = docker_run("gpufleet", "health", "check", "--backend", "simulated", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["backend"] == "simulated" and report["verdict"] == "PASS"
    assert report["device_count"] == 8


def test_image_runs_the_jobs_command_and_writes_the_termination_log(saved_archive):
    """The quarantine Job's command, on a simulated node with an Xid 79 (GPU fell off the bus)."""
    command = [arg if arg != "/dev/termination-log" else "/tmp/termination-log" for arg in DEFAULT_COMMAND]
    script = " && ".join([
        "gpufleet health inject --faults /tmp/faults.json --node sim-node-0 --gpu 0 --xid 79 >/dev/null",
        f"{{ {shlex.join(command)} --backend simulated --node sim-node-0 --faults /tmp/faults.json"
        " >/dev/null; echo rc=$?; }",
        "cat /tmp/termination-log",
    ])
    proc = docker_run("sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    status, log = proc.stdout.split("\n", 1)
    assert status == "rc=3", proc.stdout  # 3: fail
    message = json.loads(log)
    assert message["verdict"] == "fail" and message["severity"] == "REBOOT"
