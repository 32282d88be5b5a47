"""The local state file, /var/lib/gpufleet/health.json: the agent's memory and its last report.

Written atomically after every cycle: a temp file in the same directory,
fsync'd, renamed over the old one, then the directory fsync'd — so neither a
crash nor a power cut leaves half a file or loses the rename. A file that
cannot be read as state (truncated, empty, garbage) is kept aside as
`health.json.corrupt-<UTC time>` and logged; the agent then starts without
memory and takes the fence from the node object (see fencing.py).

    {"schema": "gpufleet.io/health-agent-state/v1",
     "engine": {...HealthState...}, "fence": {...FenceMemory...},
     "carried": {check: [finding, ...]}, "report": {...NodeReport.to_dict()...},
     "agent": {"node", "pid", "updated", "kubernetes": {...}, "xid_events": {code: n}}}
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

STATE_SCHEMA = "gpufleet.io/health-agent-state/v1"

log = logging.getLogger("gpufleet.health.state")

# load_state's verdict on the file
STATE_OK, STATE_MISSING, STATE_CORRUPT = "ok", "missing", "corrupt"


def write_state(path: Path | str, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            # dumps, not dump: json.dump to a file runs the pure-Python encoder (10x the CPU, per cycle)
            handle.write(json.dumps(dict(data, schema=STATE_SCHEMA), separators=(",", ":")))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a power cut must not bring back the old file)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def keep_corrupt_aside(path: Path, size: int, error: Exception) -> Path | None:
    """Move a corrupt state file aside (never silently dropped: an operator may want it) and log it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside: Path | None = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, aside)
    except OSError:
        aside = None
    log.error(
        "state file is corrupt; kept aside, starting without memory (the node's fence stays the truth)",
        extra={
            "fields": {
                "path": str(path),
                "kept_as": str(aside) if aside else None,
                "bytes": size,
                "error": str(error)[:200],
            }
        },
    )
    return aside


def load_state(path: Path | str) -> tuple[dict[str, Any], str]:
    """(state, STATE_OK | STATE_MISSING | STATE_CORRUPT). A corrupt file is moved aside and logged."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, STATE_MISSING
    except OSError as exc:
        log.error(
            "state file unreadable; starting without memory",
            extra={"fields": {"path": str(path), "error": str(exc)}},
        )
        return {}, STATE_CORRUPT
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
            raise ValueError(f"not a {STATE_SCHEMA} document")
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        keep_corrupt_aside(path, len(raw), exc)
        return {}, STATE_CORRUPT
    return data, STATE_OK


def read_state(path: Path | str) -> dict[str, Any]:
    """The saved state; {} when the file is missing, unreadable or of another schema."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("schema") == STATE_SCHEMA else {}
