"""The kernel registry, persisted to the state dir (scratch directories: agent/kernel_fs.py).

The registry file is rewritten atomically (temp file + rename) on every change,
so an agent that dies at any moment leaves either the old or the new state,
never half of one; on restart the agent reconciles it with what still runs.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.agent.resources import Allocation

REGISTRY_FILE = "agent-kernels.json"


@dataclass
class KernelRecord:
    kernel_id: str
    session_id: str
    status: str  # preparing | creating | running | terminating | terminated
    allocation: dict[str, Any]
    ports: list[int]  # ports[0] is the runner's port; the rest are service ports
    runner_host: str = "127.0.0.1"
    runner_port: int = 0
    runner_token: str = ""
    container_id: str = ""
    backend: str = "local"
    backend_data: dict[str, Any] = field(default_factory=dict)
    image: str = ""
    environ: dict[str, str] = field(default_factory=dict)
    identity: list[int] | None = None  # [uid, gid] of its own the kernel runs as (local backend)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None

    @property
    def allocation_obj(self) -> Allocation:
        return Allocation.from_dict(self.allocation)

    def public(self) -> dict[str, Any]:
        """What RPC callers see (no runner token)."""
        data = asdict(self)
        data.pop("runner_token")
        data["slots"] = self.allocation_obj.slots()
        data["gpu_indices"] = list(self.allocation.get("gpus", []))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KernelRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class KernelRegistry:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / REGISTRY_FILE
        self._lock = threading.Lock()
        self._kernels: dict[str, KernelRecord] = {}

    def load(self) -> list[KernelRecord]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except ValueError:
            # A corrupt file is kept for inspection, never silently overwritten.
            self.path.rename(self.path.with_suffix(f".corrupt-{int(time.time())}"))
            return []
        records = [KernelRecord.from_dict(item) for item in data.get("kernels", [])]
        with self._lock:
            self._kernels = {r.kernel_id: r for r in records}
        return records

    def save(self) -> None:
        with self._lock:
            payload = {"version": 1, "kernels": [asdict(r) for r in self._kernels.values()]}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".kernels-")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(payload, fh)
            os.chmod(tmp, 0o600)  # holds runner tokens
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(self, record: KernelRecord) -> None:
        with self._lock:
            self._kernels[record.kernel_id] = record
        self.save()

    def remove(self, kernel_id: str) -> KernelRecord | None:
        with self._lock:
            record = self._kernels.pop(kernel_id, None)
        self.save()
        return record

    def get(self, kernel_id: str) -> KernelRecord | None:
        with self._lock:
            return self._kernels.get(kernel_id)

    def all(self) -> list[KernelRecord]:
        with self._lock:
            return list(self._kernels.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._kernels)
