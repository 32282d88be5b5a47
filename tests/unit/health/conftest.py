"""Fixtures of the health tests: a simulated node with a fault file, and an engine on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from health_sim import FIXTURES, SimNode


@pytest.fixture
def sim(tmp_path) -> SimNode:
    return SimNode(tmp_path)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
