"""Backend.AI 23.09 as the other side: the manager harness lives in tests/fixtures/backendai.py."""

import pytest
from fixtures.backendai import backendai_manager, gpufleet_agent  # noqa: F401  (fixtures)


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration/backendai" in str(item.fspath):
            item.add_marker(pytest.mark.backendai)
            item.add_marker(pytest.mark.integration)
