"""Backend.AI 23.09 as the other side: the manager harness lives in tests/fixtures/backendai.py."""

import pytest
from fixtures.backendai import backendai_manager, gpufleet_agent  # noqa: F401  (fixtures)


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration/backendai" in str(item.fspath):
            item.add_marker(pytest.mark.backendai)
            item.add_marker(pytest.mark.integration)
            # The first test of a module also pays for the manager's set-up (about 45 s on an idle
            # 2-core machine, minutes on a loaded one): a generous deadline, not pytest.ini's 300 s.
            item.add_marker(pytest.mark.timeout(900))
