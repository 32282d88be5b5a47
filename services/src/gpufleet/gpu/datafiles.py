"""YAML data shipped inside gpufleet packages (hardware profiles here, the Xid catalog in health/)."""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import yaml

# libyaml's loader when PyYAML was built with it: ~10x faster than the pure-Python one.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)


@functools.lru_cache(maxsize=8)
def _packaged(package: str, name: str) -> Any:
    return safe_load(resources.files(package).joinpath("data", name).read_text())


def packaged(name: str, package: str = "gpufleet.gpu") -> Any:
    """A parsed data file of `package` (a private copy: callers may change it)."""
    return copy.deepcopy(_packaged(package, name))
