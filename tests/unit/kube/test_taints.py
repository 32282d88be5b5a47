"""The taint merge: kubectl matching, in-place value updates, ownership."""

from __future__ import annotations

import pytest
from gpufleet.kube.taints import format_owned, merge_taints, parse_owned
from hypothesis import given
from hypothesis import strategies as st

NS = {"key": "k", "value": "v", "effect": "NoSchedule"}


def test_present_adds_and_records_owner():
    change = merge_taints([], [NS], owner="me")
    assert change.after == [NS]
    assert change.added == [NS]
    assert change.owned_after == {"k:NoSchedule": "me"}
    assert change.changed


def test_present_is_a_no_op_when_taint_is_there():
    change = merge_taints([NS], [NS], owner="me", owned={"k:NoSchedule": "me"})
    assert not change.changed
    assert change.after == [NS]


def test_existing_foreign_taint_is_not_claimed():
    change = merge_taints([NS], [NS], owner="me")
    assert not change.changed
    assert change.owned_after == {}


def test_same_key_other_effect_is_another_taint():
    change = merge_taints([NS], [{"key": "k", "effect": "NoExecute"}], owner="me")
    assert change.after == [NS, {"key": "k", "effect": "NoExecute"}]


def test_value_updated_in_place_keeps_position():
    current = [{"key": "a", "effect": "NoSchedule"}, dict(NS, value="old"),
               {"key": "z", "effect": "NoSchedule"}]
    change = merge_taints(current, [NS], owner="me")
    assert change.after == [current[0], NS, current[2]]
    assert change.updated == [NS]
    assert change.added == []


def test_value_can_be_cleared():
    change = merge_taints([NS], [{"key": "k", "effect": "NoSchedule"}], owner="me")
    assert change.after == [{"key": "k", "effect": "NoSchedule"}]


def test_absent_removes_only_owned_unless_forced():
    foreign = {"key": "k", "effect": "NoExecute"}
    owned = {"k:NoSchedule": "me"}
    change = merge_taints([NS, foreign], [{"key": "k"}], state="absent", owner="me", owned=owned)
    assert change.after == [foreign]
    assert change.removed == [NS]
    assert change.kept_not_owned == [foreign]
    assert change.owned_after == {}

    forced = merge_taints([NS, foreign], [{"key": "k"}], state="absent", owner="me", owned=owned, force=True)
    assert forced.after == []


def test_absent_other_owner_is_kept():
    change = merge_taints([NS], [NS], state="absent", owner="me", owned={"k:NoSchedule": "health"})
    assert not change.changed
    assert change.kept_not_owned == [NS]


def test_absent_with_effect_matches_only_that_effect():
    other = {"key": "k", "effect": "NoExecute"}
    owned = {"k:NoSchedule": "me", "k:NoExecute": "me"}
    change = merge_taints([NS, other], [{"key": "k", "effect": "NoExecute"}], state="absent", owner="me",
                          owned=owned)
    assert change.after == [NS]


def test_replace_removes_other_owned_taints():
    mine, theirs = {"key": "old", "effect": "NoSchedule"}, {"key": "admin", "effect": "NoSchedule"}
    owned = {"old:NoSchedule": "me"}
    change = merge_taints([mine, theirs], [NS], owner="me", owned=owned, replace=True)
    assert change.after == [theirs, NS]
    forced = merge_taints([mine, theirs], [NS], owner="me", owned=owned, replace=True, force=True)
    assert forced.after == [NS]


def test_stale_ownership_is_forgotten():
    change = merge_taints([], [], owner="me", owned={"gone:NoSchedule": "me"})
    assert change.owned_after == {}
    assert change.changed and not change.taints_changed


def test_invalid_effect_is_rejected():
    with pytest.raises(ValueError, match="effect"):
        merge_taints([], [{"key": "k", "effect": "Sometimes"}])
    with pytest.raises(ValueError, match="effect"):
        merge_taints([], [{"key": "k"}], state="present")


def test_owned_annotation_round_trip_and_garbage():
    owned = {"b:NoSchedule": "x", "a:NoExecute": "y"}
    assert parse_owned({"gpufleet.io/owned-taints": format_owned(owned)}) == owned
    assert parse_owned({"gpufleet.io/owned-taints": "not json"}) == {}
    assert format_owned({}) is None


taints = st.lists(st.fixed_dictionaries({
    "key": st.sampled_from(["a", "b", "c"]),
    "value": st.sampled_from(["", "1", "2"]),
    "effect": st.sampled_from(["NoSchedule", "NoExecute"]),
}), max_size=4)


@given(current=taints, desired=taints)
def test_present_then_absent_restores_the_original_taints(current, desired):
    # unique key+effect in current, as the API enforces
    seen, unique = set(), []
    for taint in current:
        if (taint["key"], taint["effect"]) not in seen:
            seen.add((taint["key"], taint["effect"]))
            unique.append(taint)
    added = merge_taints(unique, desired, owner="me")
    again = merge_taints(added.after, desired, owner="me", owned=added.owned_after)
    assert not again.changed  # idempotent
    removed = merge_taints(added.after, desired, state="absent", owner="me", owned=added.owned_after)
    before_ids = {(t["key"], t["effect"]) for t in unique}
    assert {(t["key"], t["effect"]) for t in removed.after} == before_ids
    assert removed.owned_after == {}
