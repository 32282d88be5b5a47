"""The one interface every kernel backend implements."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from gpufleet.agent.registry import KernelRecord, Scratch

# Called by a backend when a kernel it started exits on its own: (kernel_id, exit_code or None).
ExitCallback = Callable[[str, "int | None"], Awaitable[None]]

RUNNER_SOURCE = Path(__file__).resolve().parent.parent / "runner.py"


class BackendError(Exception):
    """A backend could not create, inspect or remove a kernel."""


@dataclass
class LaunchSpec:
    record: KernelRecord
    scratch: Scratch
    ready_timeout: float


class KernelBackend(abc.ABC):
    name: str = "abstract"

    def __init__(self) -> None:
        self.on_exit: ExitCallback | None = None

    @abc.abstractmethod
    async def create(self, spec: LaunchSpec) -> None:
        """Start the kernel; fill record.container_id, runner_host/port, backend_data.

        Returns once the runner answers or raises BackendError; on error the
        backend has already removed whatever it started.
        """

    @abc.abstractmethod
    async def destroy(self, record: KernelRecord) -> int | None:
        """Stop and remove the kernel; return its exit code when known. Idempotent."""

    @abc.abstractmethod
    async def is_alive(self, record: KernelRecord) -> bool:
        """Whether the kernel still runs (used to reconcile after an agent restart)."""

    @abc.abstractmethod
    async def adopt(self, record: KernelRecord) -> None:
        """Resume supervising a kernel found alive after an agent restart."""

    @abc.abstractmethod
    async def logs(self, record: KernelRecord, tail_bytes: int = 65536) -> str:
        """The kernel's console log (the runner's own stdout/stderr)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release backend-wide resources (clients, watcher tasks)."""

    async def _report_exit(self, kernel_id: str, exit_code: int | None) -> None:
        if self.on_exit is not None:
            await self.on_exit(kernel_id, exit_code)
