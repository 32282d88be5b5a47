"""The local state file, /var/lib/gpufleet/health.json: the agent's memory and its last report.

Written atomically (temp file in the same directory + rename) after every
cycle, so `gpufleet health status` and a restarted agent never read half a file.

    {"schema": "gpufleet.io/health-agent-state/v1",
     "engine": {...HealthState...}, "fence": {...FenceMemory...},
     "carried": {check: [finding, ...]}, "report": {...NodeReport.to_dict()...},
     "agent": {"node", "pid", "updated", "kubernetes": {...}, "xid_events": {code: n}}}
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

STATE_SCHEMA = "gpufleet.io/health-agent-state/v1"


def write_state(path: Path | str, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(dict(data, schema=STATE_SCHEMA), handle, separators=(",", ":"))
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_state(path: Path | str) -> dict[str, Any]:
    """The saved state; {} when the file is missing, unreadable or of another schema."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("schema") == STATE_SCHEMA else {}
