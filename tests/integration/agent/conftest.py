"""Fixtures for the kernel agent's integration tests."""

import pytest
from agent_helpers import capacity, make_config
from gpufleet.agent.core import Agent


@pytest.fixture
async def agent(tmp_path):
    """A started agent with the local backend (subprocess mode), no etcd, Redis unreachable."""
    instance = Agent(make_config(tmp_path), capacity=capacity())
    await instance.start()
    yield instance
    await instance.stop(destroy_kernels=True)
