"""Health agents on simulated nodes, publishing to the emulated Kubernetes API (kube_api)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from gpufleet.gpu.simulated import inject
from gpufleet.health.config import config_from_dict
from gpufleet.health.daemon import HealthAgent


class Fleet:
    """Simulated nodes sharing one fleet spec and fault file; one agent per node on demand."""

    def __init__(self, tmp_path: Path, kube_api):
        self.tmp = tmp_path
        self.kube_api = kube_api
        self.spec = tmp_path / "fleet.yaml"
        self.faults = tmp_path / "faults.json"
        self.nodes: list[str] = []

    def add(self, *names: str, **node_kwargs) -> None:
        for name in names:
            self.kube_api.add_node(name, **node_kwargs)
        self.nodes += names
        self.spec.write_text(yaml.safe_dump({"nodes": {n: {"profile": "h100-sxm-8"} for n in self.nodes}}))

    def agent(self, node: str, state: Path | None = None, **settings) -> HealthAgent:
        kube = {"kubeconfig": self.kube_api.kubeconfig, "enabled": "true"}
        kube.update(settings.pop("kubernetes", {}))
        backend = {
            "type": "simulated",
            "node": node,
            "fleet_spec": str(self.spec),
            "faults": str(self.faults),
        }
        backend.update(settings.pop("backend", {}))
        data = {
            "interval": 5,
            "state_file": str(state or self.tmp / f"{node}.state.json"),
            "backend": backend,
            "kubernetes": kube,
            "http": {"address": "127.0.0.1", "port": 0},
        }
        data.update(settings)
        return HealthAgent(config_from_dict(data, source="test"))

    def inject(self, node: str, **kwargs) -> None:
        inject(self.faults, node, **kwargs)


@pytest.fixture
def fleet(tmp_path, kube_api):
    return Fleet(tmp_path, kube_api)
