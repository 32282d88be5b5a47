"""A simulated node with a fault file, and an engine on it, for the health tests.

A module of its own (not conftest) so tests can import SimNode by a name no
other suite's conftest shadows.
"""

from __future__ import annotations

from pathlib import Path

from gpufleet.gpu.simulated import SimulatedBackend, inject
from gpufleet.health.checks import CheckConfig
from gpufleet.health.engine import HealthEngine
from gpufleet.health.state import HealthState

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures_data" / "health"
NODE = "sim-node-0"


class SimNode:
    """A simulated 8x H100 node plus helpers to inject faults and run checks."""

    def __init__(self, tmp_path: Path, fleet_spec: Path | None = None, node: str = NODE):
        self.faults = tmp_path / "faults.json"
        self.node = node
        self.backend = SimulatedBackend(node=node, fleet_spec=fleet_spec, faults=self.faults)
        self.state = HealthState()

    def inject(self, gpu: int | None = None, **kwargs):
        settings = kwargs.pop("settings", {})
        return inject(self.faults, self.node, gpu=gpu, settings=settings, **kwargs)

    def engine(
        self, checks: list[str] | None = None, config: CheckConfig | None = None, **kwargs
    ) -> HealthEngine:
        return HealthEngine(
            self.backend,
            profile=kwargs.pop("profile", self.backend.profile_name),
            checks=checks,
            state=self.state,
            config=config,
            **kwargs,
        )

    def run(self, *checks: str, cost=("lightweight", "periodic", "intensive"), **kwargs):
        """One cycle with fresh state (no memory of earlier runs); use engine() for a sequence."""
        self.state = HealthState()
        return self.engine(list(checks) or None, **kwargs).run(cost)
