"""The changelog is antsibull-changelog's: fragments and changelogs/changelog.yaml lint
clean, and CHANGELOG.md is exactly what antsibull-changelog generates from them
(scripts/changelog), never a hand edit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CHANGELOG_TOOL = Path(sys.executable).with_name("antsibull-changelog")


def antsibull_changelog(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHANGELOG_TOOL, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_tool_is_pinned():
    pins = (REPO / "requirements" / "dev.txt").read_text().splitlines()
    assert any(line.startswith("antsibull-changelog==") for line in pins)


@pytest.mark.parametrize("args", [("lint",), ("lint-changelog-yaml", "changelogs/changelog.yaml")],
                         ids=["fragments", "changelog.yaml"])
def test_lints_clean(args):
    proc = antsibull_changelog(*args)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_changelog_md_is_generated(tmp_path):
    generated = tmp_path / "CHANGELOG.md"
    proc = antsibull_changelog("generate", "--output", str(generated))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (REPO / "CHANGELOG.md").read_text() == generated.read_text(), (
        "CHANGELOG.md differs from antsibull-changelog's output: add a fragment and run scripts/changelog")
