"""The one interface every kernel backend implements."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.agent.kernel_fs import KernelScratch
from gpufleet.agent.registry import KernelRecord

log = logging.getLogger(__name__)

# Called by a backend when a kernel it started exits on its own: (kernel_id, exit_code or None).
ExitCallback = Callable[[str, "int | None"], Awaitable[None]]

def kernel_environ(record: KernelRecord, agent_id: str, *, cuda: bool) -> dict[str, str]:
    """The one rule for a kernel's environment: the request's keys, then the agent's, which win.

    cuda: the backend shows a kernel its GPUs by CUDA_VISIBLE_DEVICES (local); a pod sees only
    the GPUs its runtime mounted, so the variable would be wrong there. CUDA numbers GPUs fastest
    first unless told otherwise; the allocation's indices are NVML's, which follow the PCI bus.
    """
    environ = {**record.environ,
               "BACKENDAI_KERNEL_ID": record.kernel_id, "BACKENDAI_SESSION_ID": record.session_id,
               "BACKENDAI_AGENT_ID": agent_id}
    if cuda:
        # An empty value hides every GPU: a kernel sees exactly the ones it was given.
        environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in record.allocation.get("gpus", []))
    return environ

RUNNER_SOURCE = Path(__file__).resolve().parent.parent / "runner.py"
# What runner.py prints when its port is taken (it then exits with EXIT_PORT_IN_USE).
PORT_IN_USE_MARKER = "runner: port "
FAILED_LOG_LINES = 20


class BackendError(Exception):
    """A backend could not create, inspect or remove a kernel."""


class PortInUse(BackendError):
    """The kernel's runner could not bind its port (taken meanwhile): start it on another."""


def last_lines(text: str, count: int = FAILED_LOG_LINES) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-count:])


@dataclass
class LaunchSpec:
    record: KernelRecord
    scratch: KernelScratch
    ready_timeout: float
    environ: dict[str, str] = field(default_factory=dict)  # kernel_environ(), as the agent decided it


class KernelBackend(abc.ABC):
    name: str = "abstract"
    # Whether kernels of this backend run as host uids the agent hands out (one per kernel).
    per_kernel_identity: bool = False
    # Whether kernels see their GPUs through CUDA_VISIBLE_DEVICES (else the runtime mounts them).
    gpus_by_environment: bool = False

    def __init__(self) -> None:
        self.on_exit: ExitCallback | None = None

    async def launch(self, spec: LaunchSpec) -> None:
        """create(), and on any failure: keep the kernel's last log lines (in the error and the
        agent's log), then remove whatever was started. The one copy of this rule."""
        try:
            await self.create(spec)
        except BaseException as exc:
            record = spec.record
            tail = ""
            if isinstance(exc, Exception):
                with contextlib.suppress(Exception):
                    tail = last_lines(await asyncio.wait_for(self.logs(record, 16384), 10))
            with contextlib.suppress(Exception):
                await asyncio.shield(self.destroy(record))
            if not isinstance(exc, Exception):
                raise
            message = f"kernel {record.kernel_id} failed to start: {exc}"
            if tail:
                log.error("%s; its last log lines:\n%s", message, tail)
                message += f"\n--- last lines of its log ---\n{tail}"
            else:
                log.error("%s (its log is empty)", message)
            error = PortInUse if PORT_IN_USE_MARKER in tail and "already in use" in tail else BackendError
            raise error(message) from exc

    @abc.abstractmethod
    async def create(self, spec: LaunchSpec) -> None:
        """Start the kernel; fill record.container_id, runner_host/port, backend_data.

        Returns once the runner answers or raises. Callers use launch(), which removes
        whatever was started when this raises.
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
