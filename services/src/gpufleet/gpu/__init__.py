"""GPU device backends: nvml (nvidia-ml-py) and simulated.

``open_backend("nvml")`` or ``open_backend("simulated", node=..., fleet_spec=..., faults=...)``
gives a :class:`~gpufleet.gpu.base.GpuBackend`.
"""

from __future__ import annotations

from typing import Any

from gpufleet.gpu.base import (
    BackendUnavailable,
    GpuBackend,
    GpuReadError,
    GpuSnapshot,
    HostProbe,
    NodeReading,
    XidEvent,
)

BACKENDS = ("nvml", "simulated")

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "GpuBackend",
    "GpuReadError",
    "GpuSnapshot",
    "HostProbe",
    "NodeReading",
    "XidEvent",
    "open_backend",
]


def open_backend(name: str, **options: Any) -> GpuBackend:
    if name == "nvml":
        from gpufleet.gpu.nvml import NvmlBackend

        return NvmlBackend(**options)
    if name == "simulated":
        from gpufleet.gpu.simulated import SimulatedBackend

        return SimulatedBackend(**options)
    raise ValueError(f"unknown backend {name!r}; one of {', '.join(BACKENDS)}")
