"""The kernel registry (persisted to the state dir) and each kernel's scratch directory.

The registry file is rewritten atomically (temp file + rename) on every change,
so an agent that dies at any moment leaves either the old or the new state,
never half of one; on restart the agent reconciles it with what still runs.
"""

from __future__ import annotations

import json
import os
import shutil
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


class Scratch:
    """`<scratch-root>/<kid>/{work,config}`: the kernel's home (/home/work) and its config."""

    def __init__(self, root: Path, kernel_id: str, owner: tuple[int, int] | None = None) -> None:
        self.base = Path(root) / kernel_id
        self.work = self.base / "work"
        self.config = self.base / "config"
        self.owner = owner  # (uid, gid) the kernel runs as; its files are handed to it

    def give(self, path: Path) -> Path:
        if self.owner is not None:
            os.chown(path, *self.owner)
        return path

    def create(self, environ: dict[str, str], slots: dict[str, Any], gpu_indices: list[int]) -> None:
        for directory in (self.base, self.work, self.config):
            directory.mkdir(parents=True, exist_ok=True)
            self.give(directory)
        environ_text = "".join(f"{k}={v}\n" for k, v in sorted(environ.items()))
        (self.config / "environ.txt").write_text(environ_text)
        resource_lines = [f"{k}={v}" for k, v in slots.items()]
        resource_lines.append("cuda.device.indices=" + ",".join(str(i) for i in gpu_indices))
        (self.config / "resource.txt").write_text("\n".join(resource_lines) + "\n")
        self.give(self.config / "environ.txt")
        self.give(self.config / "resource.txt")

    def write_runner(self, runner_source: Path, token: str) -> Path:
        token_path = self.config / "runner.token"
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        self.give(token_path)
        target = self.config / "runner.py"
        shutil.copyfile(runner_source, target)
        return self.give(target)

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def resolve_inside(self, relative: str) -> Path:
        """A path inside the work dir; anything escaping it (.., symlinks, absolute) is refused."""
        if "\x00" in relative:
            raise PermissionError("path contains a NUL byte")
        if relative == "/home/work" or relative.startswith("/home/work/"):
            relative = relative[len("/home/work"):].lstrip("/")  # the path as the kernel sees it
        if relative.startswith("/"):
            raise PermissionError(f"path {relative!r} is outside the kernel's scratch")
        root = self.work.resolve()
        candidate = (root / relative).resolve()
        if candidate != root and root not in candidate.parents:
            raise PermissionError(f"path {relative!r} is outside the kernel's scratch")
        return candidate
