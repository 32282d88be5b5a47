"""Small dict helpers shared across gpufleet's subpackages."""

from __future__ import annotations

import copy
from typing import Any


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `override` laid over `base`, nested dicts merged key by key.

    Neither argument is modified; values taken from `base` are copied, so the
    result can be changed freely.
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
