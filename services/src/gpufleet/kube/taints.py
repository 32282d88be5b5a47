"""The one taint merge of gpufleet: node_taint, node_quarantine and the health agent use it.

Taints are plain dicts as the API carries them: {"key", "value"?, "effect"}.
Matching is by key+effect, as `kubectl taint` does: the same key with another
effect is a different taint; the same key+effect with another value is the
same taint, updated in place (keeping its position in the list).

Ownership: who added a taint is recorded in the node annotation
`gpufleet.io/owned-taints`, a JSON object {"<key>:<effect>": "<owner>"}.
Removing (`absent`, or `replace` dropping extras) touches only taints this
owner added, unless `force` — so an operator's own taint, or one the health
agent placed, is never lifted by a playbook that happened to name it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

OWNED_TAINTS_ANNOTATION = "gpufleet.io/owned-taints"
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

TAINT_UNHEALTHY = "gpufleet.io/unhealthy"
TAINT_MAINTENANCE = "gpufleet.io/maintenance"
TAINT_QUARANTINE = "gpufleet.io/quarantine"

# The taints that fence a node when a gpufleet component placed them (the health agent's circuit
# breaker counts them), and the label that mirrors them: written in the same PATCH as the taint, so
# counting fenced nodes is one LIST with a labelSelector instead of a LIST of every node.
FENCING_TAINT_KEYS = (TAINT_UNHEALTHY, TAINT_QUARANTINE)
LABEL_FENCED = "gpufleet.io/fenced"


def taint_id(taint: dict) -> str:
    """The identity kubectl matches taints by: key and effect."""
    return f"{taint['key']}:{taint.get('effect', '')}"


def clean_taint(taint: dict) -> dict:
    """A taint as the API stores it (no empty value, no timeAdded for non-NoExecute noise)."""
    out = {"key": taint["key"]}
    if taint.get("value") not in (None, ""):
        out["value"] = str(taint["value"])
    out["effect"] = taint.get("effect") or ""
    if taint.get("timeAdded"):
        out["timeAdded"] = taint["timeAdded"]
    return out


def validate_taints(taints: list[dict], need_effect: bool = True) -> None:
    for taint in taints:
        if not taint.get("key"):
            raise ValueError(f"a taint needs a key: {taint!r}")
        effect = taint.get("effect")
        if (need_effect or effect) and effect not in EFFECTS:
            raise ValueError(f"taint {taint['key']!r}: effect must be one of {', '.join(EFFECTS)}, "
                             f"got {effect!r}")


def parse_owned(annotations: dict | None) -> dict[str, str]:
    """The ownership record out of a node's annotations (a broken record counts as empty)."""
    raw = (annotations or {}).get(OWNED_TAINTS_ANNOTATION)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def fenced_by_gpufleet_taints(taints: list[dict], owned: dict[str, str]) -> bool:
    """Carries an unhealthy or quarantine taint that a gpufleet component placed."""
    return any(t.get("key") in FENCING_TAINT_KEYS and owned.get(taint_id(t), "").startswith("gpufleet")
               for t in taints)


def format_owned(owned: dict[str, str]) -> str | None:
    """The annotation value, or None (remove the annotation) when nothing is owned."""
    return json.dumps(dict(sorted(owned.items())), separators=(",", ":")) if owned else None


@dataclass
class TaintChange:
    """What merge_taints decided. `after` is the node's full new taint list."""

    before: list[dict]
    after: list[dict]
    owned_before: dict[str, str]
    owned_after: dict[str, str]
    added: list[dict] = field(default_factory=list)
    updated: list[dict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    # taints `absent`/`replace` would have removed but left because another owner (or nobody) owns them
    kept_not_owned: list[dict] = field(default_factory=list)

    @property
    def taints_changed(self) -> bool:
        return self.before != self.after

    @property
    def changed(self) -> bool:
        return self.taints_changed or self.owned_before != self.owned_after


def merge_taints(
    current: list[dict] | None,
    desired: list[dict],
    state: str = "present",
    owner: str = "gpufleet",
    owned: dict[str, str] | None = None,
    force: bool = False,
    replace: bool = False,
) -> TaintChange:
    """Apply `desired` taints to `current` for `owner`; pure (no I/O).

    present: add missing taints (recorded as ours), update the value of a
    matching key+effect in place. With `replace`, also remove every other
    taint we own (every other taint at all with `force`).
    absent: remove matching taints (key+effect; key alone when the effect is
    left out) that we own, or any with `force`; others are reported in
    `kept_not_owned`.
    """
    if state not in ("present", "absent"):
        raise ValueError(f"state must be present or absent, not {state!r}")
    validate_taints(desired, need_effect=state == "present")
    before = [clean_taint(t) for t in current or []]
    owned_before = dict(owned or {})
    after = [dict(t) for t in before]
    owned_after = dict(owned_before)
    change = TaintChange(before, after, owned_before, owned_after)

    def ours(taint: dict) -> bool:
        return owned_after.get(taint_id(taint)) == owner

    def remove(taint: dict) -> None:
        if force or ours(taint):
            after.remove(taint)
            owned_after.pop(taint_id(taint), None)
            change.removed.append(taint)
        else:
            change.kept_not_owned.append(taint)

    if state == "present":
        wanted_ids = set()
        for want in (clean_taint(t) for t in desired):
            wanted_ids.add(taint_id(want))
            existing = next((t for t in after if taint_id(t) == taint_id(want)), None)
            if existing is None:
                after.append(want)
                owned_after[taint_id(want)] = owner
                change.added.append(want)
            elif existing.get("value") != want.get("value"):
                existing.pop("value", None)
                if "value" in want:
                    existing["value"] = want["value"]
                # keep the key order the API uses: key, value, effect
                index = after.index(existing)
                after[index] = clean_taint(existing)
                change.updated.append(after[index])
        if replace:
            for taint in [t for t in after if taint_id(t) not in wanted_ids]:
                remove(taint)
    else:
        for want in desired:
            for taint in [t for t in after if t["key"] == want["key"]
                          and (not want.get("effect") or t["effect"] == want["effect"])]:
                remove(taint)

    # Forget ownership of taints someone else already removed from the node.
    present_ids = {taint_id(t) for t in after}
    for stale in [k for k in owned_after if k not in present_ids]:
        del owned_after[stale]
    return change
