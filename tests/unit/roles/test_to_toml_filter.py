"""gpufleet.cluster.to_toml: any value it accepts is read back by tomllib as the same value."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import tomllib
from ansible.errors import AnsibleFilterError
from hypothesis import given, settings
from hypothesis import strategies as st

FILTER = Path(__file__).resolve().parents[3] / "plugins" / "filter" / "to_toml.py"
spec = importlib.util.spec_from_file_location("gpufleet_to_toml", FILTER)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
to_toml = module.FilterModule().filters()["to_toml"]

scalars = st.text() | st.integers(-(2**63), 2**63 - 1) | st.booleans() | st.floats()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def same(a, b) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=400)
@given(values)
def test_every_value_round_trips_through_tomllib(value):
    assert same(tomllib.loads(f"key = {to_toml(value)}")["key"], value)


@pytest.mark.parametrize("text", ["\x7f", "\U0001f512", "\x00", '"', "\\", "\\b", "\r\n", "\x1b[0m"])
def test_what_json_gets_wrong_in_toml(text):
    assert tomllib.loads(f"key = {to_toml(text)}")["key"] == text


def test_null_is_refused_with_a_reason():
    with pytest.raises(AnsibleFilterError, match="no null"):
        to_toml(None)
