"""gpufleet/etcd.py is the one etcd client: the old etcd3gw client and its dependencies are gone.

(That no code imports an etcd library is tests/unit/test_import_boundaries.py's rule.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("library", ["etcd3gw", "futurist", "debtcollector"])
def test_the_old_client_and_its_dependencies_are_not_pinned(library):
    for requirements in ("requirements/node.txt", "requirements/dev.txt", "services/pyproject.toml"):
        assert library not in (REPO / requirements).read_text().lower(), requirements
    assert importlib.util.find_spec(library) is None
