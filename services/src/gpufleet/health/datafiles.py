"""YAML data shipped in ``gpufleet/health/data/`` (the Xid catalog)."""

from __future__ import annotations

from typing import Any

from gpufleet.gpu.datafiles import packaged as _packaged
from gpufleet.gpu.datafiles import safe_load

__all__ = ["packaged", "safe_load"]


def packaged(name: str) -> Any:
    """A parsed data file of gpufleet.health (a private copy: callers may change it)."""
    return _packaged(name, "gpufleet.health")
