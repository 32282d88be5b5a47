"""What the checks remember between cycles; small, JSON, and persisted by the daemon.

* counters: last value and time of each cumulative counter, so checks judge
  *rates* (a steady NVLink CRC count is history, a rising one is news);
* kernel_log: the boot id and cursor of the last kernel-log line read;
* xids: the Xids seen this boot, de-duplicated per GPU and code, each active
  until its window ends (or the reboot, for REBOOT/ISOLATE-class Xids);
* profile: the hardware profile first matched, kept so a node that later
  loses a GPU is still compared with what it was;
* keeper: the VerdictKeeper, so a restart does not forget a severe finding;
* boot_id: the boot these belong to; a reboot starts them afresh (observe_boot).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.health.severity import VerdictKeeper

STATE_VERSION = 1


@dataclass
class CounterDelta:
    delta: int
    seconds: float

    @property
    def per_minute(self) -> float:
        return self.delta * 60.0 / self.seconds if self.seconds > 0 else float(self.delta)


@dataclass
class HealthState:
    counters: dict[str, list[float]] = field(default_factory=dict)  # key -> [value, time]
    kernel_log: dict[str, str | None] = field(default_factory=lambda: {"boot_id": None, "cursor": None})
    xids: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile: str | None = None
    keeper: VerdictKeeper = field(default_factory=VerdictKeeper)
    boot_id: str | None = None

    def observe_boot(self, boot_id: str) -> bool:
        """Start afresh after a reboot; True when ``boot_id`` differs from the last one seen.

        A reboot is the remediation for what made the node REBOOT: held findings, Xids
        and the kernel-log cursor of the old boot all stop meaning anything.
        """
        changed = self.boot_id is not None and boot_id != self.boot_id
        if changed:
            self.keeper.clear()
            self.xids = {}
            self.counters = {}
            self.kernel_log = {"boot_id": boot_id, "cursor": None}
        self.boot_id = boot_id
        return changed

    def counter_delta(self, key: str, value: int | None, now: float) -> CounterDelta | None:
        """Change of a cumulative counter since the last cycle; None on first sight or after a reset."""
        if value is None:
            return None
        previous = self.counters.get(key)
        self.counters[key] = [value, now]
        if previous is None or value < previous[0]:  # new, or reset by a driver reload
            return None
        return CounterDelta(int(value - previous[0]), now - previous[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "counters": self.counters,
            "kernel_log": self.kernel_log,
            "xids": self.xids,
            "profile": self.profile,
            "keeper": self.keeper.to_dict(),
            "boot_id": self.boot_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HealthState:
        if data.get("version") != STATE_VERSION:
            return cls()
        return cls(
            counters={k: list(v) for k, v in data.get("counters", {}).items()},
            kernel_log=dict(data.get("kernel_log") or {"boot_id": None, "cursor": None}),
            xids=dict(data.get("xids", {})),
            profile=data.get("profile"),
            keeper=VerdictKeeper.from_dict(data.get("keeper", {})),
            boot_id=data.get("boot_id"),
        )

    def save(self, path: Path) -> None:
        """Atomic, durable write (temp file, fsync, rename, fsync of the directory)."""
        from gpufleet.health.sinks.state_file import fsync_directory

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as handle:
            json.dump(self.to_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)

    @classmethod
    def load(cls, path: Path) -> HealthState:
        """The saved state, or a fresh one when the file is missing; a corrupt file is kept aside
        (with an error logged), never silently dropped."""
        from gpufleet.health.sinks.state_file import keep_corrupt_aside

        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls()
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return cls.from_dict(data)
        except (ValueError, TypeError, AttributeError) as exc:  # bad JSON, or JSON of the wrong shape
            keep_corrupt_aside(path, len(raw), exc)
            return cls()
