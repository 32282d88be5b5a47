"""The agent: kernels' lifecycle, resources, registry, events and registration.

Every RPC method lands in one method of `Agent`; the RPC layer only validates
and translates errors. Resources taken for a kernel (slots, ports, scratch) are
released in exactly one place, `_release`, reached from every exit path:
a failed creation, a destroy, a kernel that exits by itself, a kernel found
dead after an agent restart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import platform
import re
import secrets
import socket
import time
import uuid
import zlib
from typing import Any

from gpufleet import __version__
from gpufleet.agent import events as ev
from gpufleet.agent import kernel_fs
from gpufleet.agent.backends.base import BackendError, KernelBackend, LaunchSpec, PortInUse, kernel_environ
from gpufleet.agent.config import AgentConfig
from gpufleet.agent.etcd import AgentEtcd, EtcdUnavailable
from gpufleet.agent.events import EventPublisher
from gpufleet.agent.kernel_fs import KernelScratch
from gpufleet.agent.metrics import AgentMetrics
from gpufleet.agent.protocol.codec import packb
from gpufleet.agent.registry import KernelRecord, KernelRegistry
from gpufleet.agent.resources import (
    HEALTH_STATE_FILE,
    IdentityPool,
    PortPool,
    ResourceAllocator,
    ResourceError,
    SlotCapacity,
    unhealthy_gpu_uuids,
)
from gpufleet.agent.runner_client import RunnerError, runner_request

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 8 << 20
# A kernel whose runner finds its port taken is started again on other ports, this often.
PORT_ATTEMPTS = 3
# Environment keys a create request may not set: they grant or describe resources (GPUs) or
# are the runner's own. GPUs are given by the allocation, never by a user's variable.
RESERVED_ENV_KEYS = frozenset({
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GPU_DEVICE_ORDINAL", "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
})
RESERVED_ENV_PREFIXES = ("NVIDIA_", "GPUFLEET_")
# Set by the agent for every kernel. A Backend.AI manager sends them (and other BACKENDAI_*
# keys, which pass through) in every create request: the agent's values win, nothing is refused.
AGENT_ENV_KEYS = ("BACKENDAI_KERNEL_ID", "BACKENDAI_SESSION_ID", "BACKENDAI_AGENT_ID")
ENV_KEY_MAX = 256
ENV_VALUE_MAX = 32768
# platform.machine() -> Backend.AI's architecture names (ai.backend.agent.utils.get_arch_name).
ARCHITECTURES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


def _metric(current: float, capacity: float | None, unit: str | None) -> dict[str, Any]:
    """One metric as 23.09's stats collector stores it (decimal strings)."""
    pct = f"{current * 100 / capacity:.2f}" if capacity else "0.00"
    return {"current": f"{current:g}" if isinstance(current, float) else str(current),
            "capacity": None if capacity is None else (f"{capacity:g}" if isinstance(capacity, float)
                                                        else str(capacity)),
            "pct": pct, "unit_hint": unit}


def _rss_bytes(record: KernelRecord) -> int:
    """Resident memory of a local kernel's process (0 where the backend gives no pid)."""
    pid = record.backend_data.get("pid")
    if not isinstance(pid, int):
        return 0
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class KernelNotFound(LookupError):
    pass


class KernelStateError(Exception):
    """The kernel exists but cannot do this now (e.g. not running yet)."""


class InvalidKernelRequest(ValueError):
    """A create request the agent refuses as asked (a reserved environment key, a bad name).

    The RPC transport answers it with an error reply naming the field; nothing was allocated."""


# Kernel and session ids name directories, units and pods: matched whole, never searched.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_id(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value) or ".." in value:
        raise InvalidKernelRequest(f"{kind} {str(value)[:80]!r} is not a valid id "
                                   "(letters, digits, '_-.'; at most 64, starting with a letter or digit)")
    return value


def check_environ(environ: Any) -> dict[str, str]:
    """The user's environment for a kernel, or InvalidKernelRequest naming the first bad key."""
    if environ is None:
        return {}
    if not isinstance(environ, dict):
        raise InvalidKernelRequest("environ must be an object of strings")
    for key, value in environ.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidKernelRequest(f"environ: {key!r} must map a string to a string")
        if not key or len(key) > ENV_KEY_MAX or not (key[0].isalpha() or key[0] == "_") \
                or not all(c.isascii() and (c.isalnum() or c == "_") for c in key):
            raise InvalidKernelRequest(f"environ: {key[:60]!r} is not a valid variable name "
                                       f"([A-Za-z_][A-Za-z0-9_]*, at most {ENV_KEY_MAX} characters)")
        if key in RESERVED_ENV_KEYS or key.startswith(RESERVED_ENV_PREFIXES):
            raise InvalidKernelRequest(
                f"environ: {key} is reserved (set by the agent from the kernel's allocation; GPUs are "
                f"requested with the cuda.device slot, never through the environment)")
        if "\x00" in value or "\n" in value or len(value) > ENV_VALUE_MAX:
            raise InvalidKernelRequest(f"environ: the value of {key} contains a NUL or newline or is "
                                       f"longer than {ENV_VALUE_MAX} characters")
    return dict(environ)


def make_backend(config: AgentConfig) -> KernelBackend:
    if config.agent.backend == "kubernetes":
        from gpufleet.agent.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(config)
    from gpufleet.agent.backends.local import LocalBackend

    if config.container.kernel_python:
        return LocalBackend(mode=config.agent.local_mode, python=config.container.kernel_python)
    return LocalBackend(mode=config.agent.local_mode)


def default_host_ip() -> str:
    """The address other nodes reach us on: the source address of the default route."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
        return sock.getsockname()[0]
    return "127.0.0.1"


class Agent:
    def __init__(self, config: AgentConfig, backend: KernelBackend | None = None,
                 capacity: SlotCapacity | None = None) -> None:
        self.config = config
        self.id = config.agent.id
        self.backend = backend or make_backend(config)
        self.capacity = capacity or self._detect_capacity()
        health_state = config.agent.state_dir / HEALTH_STATE_FILE
        self.allocator = ResourceAllocator(self.capacity, unhealthy=lambda: unhealthy_gpu_uuids(health_state))
        self.ports = PortPool(*config.container.port_range)
        self.registry = KernelRegistry(config.agent.state_dir)
        self.kernel_owner = config.container.kernel_owner()
        # One uid per kernel when the agent can give them (root, local backend, a range set).
        uid_range = config.container.kernel_uid_range
        self.identities = IdentityPool(*uid_range) if (
            uid_range and self.kernel_owner is not None and self.backend.per_kernel_identity) else None
        self.backend.on_exit = self._kernel_exited
        self.metrics = AgentMetrics()
        self.events = EventPublisher(self.id, on_drop=self.metrics.events_dropped.inc)
        self.etcd: AgentEtcd | None = None
        self.etcd_status = "disabled" if not config.etcd.enabled else "connecting"
        self.host_ip = config.agent.advertised_host or default_host_ip()
        self.started_at = time.time()
        self.last_heartbeat: float | None = None
        self._tasks: list[asyncio.Task] = []
        self._kernel_locks: dict[str, asyncio.Lock] = {}
        # Kernels between kernel_preparing and kernel_started: a registry sync leaves them alone.
        self._creating: set[str] = set()
        # The agent's CURVE public key (z85), announced in the heartbeat; None with auth off.
        self.public_key: bytes | None = None
        # Image references this agent runs (name -> digest), announced in the heartbeat.
        self.known_images: dict[str, str] = {config.agent.kernel_image: ""}
        # Failure injection for tests: a callable(stage, kernel_id) that may raise.
        self.fault_hook = None

    def _detect_capacity(self) -> SlotCapacity:
        """The cluster's allocatable slots for the kubernetes backend, else this host's."""
        cluster_capacity = getattr(self.backend, "cluster_capacity", None)
        if cluster_capacity is not None:
            try:
                return cluster_capacity()
            except Exception as exc:  # noqa: BLE001 - API down at start: fall back, say so
                log.warning("cluster capacity unavailable (%s); using this host's", exc)
        return SlotCapacity.from_host(self.config.resource)

    # --- startup / shutdown -------------------------------------------------------------------

    async def start(self) -> None:
        scratch_root = self.config.container.scratch_root
        scratch_root.mkdir(parents=True, exist_ok=True)
        if self.kernel_owner is not None:
            scratch_root.chmod(0o711)  # kernels reach their own dir through it, list nothing
        await self.reconcile()
        self.events.start()
        if self.config.redis_addr is not None:
            self.events.configure(self.config.redis_addr, self.config.redis_password)
        self.events.emit(ev.agent_started("self-started"))
        if self.config.etcd.enabled:
            self.etcd = AgentEtcd(self.config.etcd, self.id)
            self._tasks.append(asyncio.ensure_future(self._etcd_loop()))
        self._tasks.append(asyncio.ensure_future(self._heartbeat_loop()))

    async def stop(self, destroy_kernels: bool = False) -> None:
        """Stop the agent; kernels keep running (and are adopted on restart) unless asked."""
        if destroy_kernels:
            for record in self.registry.all():
                with contextlib.suppress(Exception):
                    await self.destroy_kernel(record.kernel_id, reason="agent-shutdown")
        if self.etcd is not None:
            with contextlib.suppress(EtcdUnavailable):
                await asyncio.wait_for(self.etcd.put(f"nodes/agents/{self.id}", "terminated"), 3)
        self.events.emit(ev.agent_terminated("shutdown"))
        if self.events.connected:  # unreachable Redis: keep nothing waiting on shutdown
            await self.events.flush(timeout=2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.backend.close()
        await self.events.close()

    async def _etcd_loop(self) -> None:
        """Register (starting → running), learn Redis from the global config; repeat to survive restarts."""
        assert self.etcd is not None
        registered_running = False
        wait_started = time.monotonic()
        delay = 0.2
        while True:
            try:
                if not registered_running:
                    await self.etcd.register("starting", self.host_ip)
                    self.etcd_status = "starting"
                if self.config.redis_addr is None and self.events.redis is None:
                    addr, password = await self.etcd.redis_config()
                    if addr is None:
                        raise EtcdUnavailable("config/redis/addr is not set yet")
                    self.events.configure(addr, password)
                if not registered_running:
                    waited = time.monotonic() - wait_started
                    timeout = self.config.etcd.manager_wait_timeout
                    if self.config.etcd.wait_for_manager and not await self.etcd.managers():
                        if not timeout or waited < timeout:
                            raise EtcdUnavailable("waiting for a manager under nodes/manager/")
                    await self.etcd.register("running", self.host_ip)
                    registered_running = True
                    self.etcd_status = "running"
                else:
                    # Re-assert the keys: an etcd that lost its data gets them back.
                    await self.etcd.register("running", self.host_ip)
                    self.etcd_status = "running"
                delay = 0.2
                await asyncio.sleep(min(self.config.debug.heartbeat_interval, 5.0))
            except EtcdUnavailable as exc:
                if self.etcd_status == "running":
                    self.events.emit(ev.agent_error(f"etcd unavailable: {exc}"))
                self.etcd_status = f"waiting: {exc}" if "waiting" in str(exc) or "not set" in str(exc) \
                    else "unreachable"
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _heartbeat_loop(self) -> None:
        while True:
            self.heartbeat()
            await self.write_stats()
            await asyncio.sleep(self.config.debug.heartbeat_interval)

    def heartbeat(self) -> None:
        self.last_heartbeat = time.time()
        self.events.emit(ev.agent_heartbeat(self.heartbeat_info()))

    @property
    def agent_addr(self) -> str:
        """The RPC address the manager dials (Backend.AI's `agent_addr`)."""
        return f"tcp://{self.host_ip}:{self.config.agent.rpc_listen_addr.port}"

    def heartbeat_info(self) -> dict[str, Any]:
        """Backend.AI 23.09's `agent_info` (AgentHeartbeatEvent), as its manager reads it."""
        slot_types = {"cpu": "count", "mem": "bytes", "cuda.device": "count"}
        plugins: dict[str, Any] = {"cpu": {"version": __version__}, "mem": {"version": __version__}}
        if self.capacity.gpus:
            plugins["cuda"] = {"version": __version__, "devices": len(self.capacity.gpus)}
        images = [(name, digest) for name, digest in sorted(self.known_images.items())]
        return {
            "ip": self.host_ip, "region": self.config.agent.region,
            "scaling_group": self.config.agent.scaling_group, "addr": self.agent_addr,
            "public_key": self.public_key, "public_host": self.host_ip,
            "resource_slots": {slot: (slot_types.get(slot, "count"), str(amount))
                               for slot, amount in self.capacity.slots().items()},
            "version": __version__, "compute_plugins": plugins,
            "images": zlib.compress(packb(images)), "images.opts": {"compression": "zlib"},
            "architecture": ARCHITECTURES.get(platform.machine(), platform.machine()),
            "auto_terminate_abusing_kernel": False,
        }

    def creation_info(self, record: KernelRecord) -> dict[str, Any]:
        """What KernelStartedEvent carries and create_kernels returns (the manager's finalize step)."""
        slots = record.allocation_obj
        gpus = list(record.allocation.get("gpus", []))
        models = {g.index: g.model for g in self.capacity.gpus}
        host = self.host_ip if record.runner_host in ("127.0.0.1", "localhost", "::1") else record.runner_host
        allocations: dict[str, Any] = {"cpu": {"cpu": {"0": str(slots.cpu)}},
                                       "mem": {"mem": {"root": str(slots.mem)}}}
        attached: dict[str, Any] = {}
        if gpus:
            allocations["cuda"] = {"cuda.device": {str(i): "1" for i in gpus}}
            attached["cuda"] = [{"device_id": str(i), "model_name": models.get(i, ""), "data": {}}
                                for i in gpus]
        return {
            "id": record.kernel_id, "kernel_host": host,
            "repl_in_port": record.runner_port, "repl_out_port": record.runner_port,
            "stdin_port": record.runner_port, "stdout_port": record.runner_port,
            "service_ports": [{"name": f"port{n}", "protocol": "tcp", "container_ports": [port],
                               "host_ports": [port]} for n, port in enumerate(record.ports[1:], 1)],
            "container_id": record.container_id,
            "resource_spec": {"allocations": allocations},
            "attached_devices": attached,
            "agent_addr": self.agent_addr,
            "scaling_group": self.config.agent.scaling_group,
        }

    def available_slots(self) -> dict[str, Any]:
        used = self.allocator.used()
        available = {k: v - used[k] for k, v in self.capacity.slots().items()}
        available["cuda.device"] = len(self.allocator.free_gpu_indices())  # bad GPUs are not offered
        return available

    async def write_stats(self) -> None:
        """23.09's stat database: the agent's node metrics under its id, each kernel's under its id."""
        ttl = self.config.debug.heartbeat_interval * 3
        used = self.allocator.used()
        self.metrics.observe_agent(self, used)
        capacity = self.capacity.slots()
        node = {"mem": _metric(used["mem"], capacity["mem"], "bytes"),
                "cpu_slots": _metric(used["cpu"], capacity["cpu"], None)}
        await self.events.write_stats(self.id, {"node": node, "devices": {}}, ttl)
        for record in self.registry.all():
            slots = record.allocation_obj
            stats = {"mem": _metric(_rss_bytes(record), slots.mem, "bytes")}
            await self.events.write_stats(record.kernel_id, stats, ttl)

    # --- reconcile --------------------------------------------------------------------------

    async def reconcile(self) -> dict[str, list[str]]:
        """Adopt kernels that still run; report the others terminated and free what they held."""
        adopted, lost = [], []
        records = self.registry.load() if not len(self.registry) else self.registry.all()
        for record in records:
            if record.kernel_id in self._creating:
                continue  # its create_kernels call is still running and owns it
            alive = await self.backend.is_alive(record)
            if alive and record.status != "running":
                # Caught mid-creation or mid-destroy by the restart: finish it off.
                with contextlib.suppress(BackendError):
                    await self.backend.destroy(record)
                alive = False
            if alive:
                if self.allocator.allocations().get(record.kernel_id) is None:
                    self.allocator.restore(record.allocation_obj)
                    self.ports.claim(record.kernel_id, record.ports)
                    if self.identities is not None and record.identity:
                        self.identities.claim(record.kernel_id, record.identity[0])
                    await self.backend.adopt(record)
                adopted.append(record.kernel_id)
            else:
                lost.append(record.kernel_id)
                await self._release(record, reason="terminated-unknown-container", exit_code=None)
        self.metrics.kernels.set(len(self.registry))
        return {"adopted": adopted, "terminated": lost}

    async def sync_registry(self, known: dict[str, str]) -> dict[str, list[str]]:
        """Backend.AI's sync_kernel_registry: `known` maps kernel id -> session id as the manager has them.

        A kernel the manager knows but we do not is reported terminated; a running kernel the
        manager does not know is destroyed (no events: the manager has no record to update).
        Kernels still being created are left alone either way.
        """
        reported, destroyed = [], []
        for kernel_id, session_id in known.items():
            if self.registry.get(kernel_id) is None and kernel_id not in self._creating:
                self.events.emit(ev.kernel_termination("kernel_terminated", kernel_id, session_id,
                                                       "already-terminated", None))
                reported.append(kernel_id)
        for record in self.registry.all():
            if record.kernel_id in known or record.kernel_id in self._creating or record.status != "running":
                continue
            with contextlib.suppress(KernelNotFound):
                await self.destroy_kernel(record.kernel_id, reason="not-found-in-manager",
                                          suppress_events=True)
                destroyed.append(record.kernel_id)
        return {"reported_terminated": reported, "destroyed": destroyed}

    # --- kernel lifecycle -------------------------------------------------------------------

    def _lock(self, kernel_id: str) -> asyncio.Lock:
        return self._kernel_locks.setdefault(kernel_id, asyncio.Lock())

    def _inject(self, stage: str, kernel_id: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(stage, kernel_id)

    def get_kernel(self, kernel_id: str) -> KernelRecord:
        record = self.registry.get(kernel_id)
        if record is None:
            raise KernelNotFound(f"kernel {kernel_id} not found")
        return record

    async def create_kernel(self, *, cpu: float = 1.0, mem: int = 512 << 20, gpus: int = 0,
                            service_ports: int = 0, session_id: str | None = None,
                            kernel_id: str | None = None, environ: dict[str, str] | None = None,
                            image: str | None = None, suppress_events: bool = False) -> KernelRecord:
        kid = check_id("kernel_id", kernel_id) if kernel_id is not None else str(uuid.uuid4())
        if session_id is not None:
            check_id("session_id", session_id)
        environ = check_environ(environ)  # before anything is taken or announced
        if self.registry.get(kid) is not None:
            raise KernelStateError(f"kernel {kid} already exists")
        session_id = session_id or kid
        self._creating.add(kid)
        if not suppress_events:
            self.events.emit(ev.kernel_creation("kernel_preparing", kid, session_id))
        try:
            allocation = self.allocator.allocate(kid, cpu, mem, gpus)
        except ResourceError:
            # Nothing was taken; the event closes the kernel_preparing just sent.
            self._creating.discard(kid)
            self.events.emit(ev.kernel_termination("kernel_terminated", kid, session_id,
                                                   "failed-to-create", None))
            raise
        record: KernelRecord | None = None
        backend_started = False
        try:
            ports = self.ports.take(kid, 1 + service_ports)
            owner = self.kernel_owner
            if self.identities is not None:
                owner = self.identities.take(kid)
            record = KernelRecord(
                kernel_id=kid, session_id=session_id, status="preparing", allocation=allocation.to_dict(),
                ports=ports, runner_token=secrets.token_hex(16), backend=self.backend.name,
                image=image or self.config.agent.kernel_image, environ=environ,
                identity=list(owner) if owner is not None else None)
            self._inject("prepare", kid)
            scratch = KernelScratch(self.config.container.scratch_root, kid, owner)
            scratch.create(self._kernel_environ(record), allocation.slots(), list(allocation.gpus))
            record.status = "creating"
            self.registry.put(record)
            if not suppress_events:
                self.events.emit(ev.kernel_creation("kernel_creating", kid, session_id))
            self._inject("create", kid)
            started = time.monotonic()
            await self._launch(record, scratch)
            backend_started = True
            self.metrics.kernel_creation_seconds.observe(time.monotonic() - started)
            self._inject("started", kid)
            record.status, record.started_at = "running", time.time()
            self.registry.put(record)
        except BaseException as exc:
            if backend_started:
                # The backend started it but a later step failed: stop it too.
                with contextlib.suppress(Exception):
                    await self.backend.destroy(record)
            self._creating.discard(kid)
            reason = "failed-to-start" if not isinstance(exc, asyncio.CancelledError) else "task-cancelled"
            if record is None:
                self.allocator.release(kid)
                self.ports.release_owner(kid)
                if self.identities is not None:
                    self.identities.release_owner(kid)
                self.events.emit(ev.kernel_termination("kernel_terminated", kid, session_id, reason, None))
            else:
                await self._release(record, reason=reason, exit_code=None, error=str(exc))
            self.metrics.kernel_failures.inc()
            raise
        self._creating.discard(kid)
        if not suppress_events:
            self.events.emit(ev.kernel_creation("kernel_started", kid, session_id,
                                                creation_info=self.creation_info(record)))
        self.metrics.kernels.set(len(self.registry))
        return record

    async def _launch(self, record: KernelRecord, scratch: KernelScratch) -> None:
        """Start the kernel; a runner that finds its port taken is started again on fresh ports."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                await self.backend.launch(LaunchSpec(record, scratch, self.config.agent.kernel_ready_timeout,
                                                     self._kernel_environ(record)))
                return
            except PortInUse:
                if attempt == PORT_ATTEMPTS:
                    raise
                taken = list(record.ports)
                record.ports = self.ports.take(record.kernel_id, len(taken))
                self.ports.release(taken, owner=record.kernel_id)  # the pool's probe skips them while bound
                self.registry.put(record)
                log.warning("kernel %s: port %d was taken, starting it again on %d (attempt %d of %d)",
                            record.kernel_id, taken[0], record.ports[0], attempt + 1, PORT_ATTEMPTS)

    def _kernel_environ(self, record: KernelRecord) -> dict[str, str]:
        return kernel_environ(record, self.id, cuda=self.backend.gpus_by_environment)

    async def _release(self, record: KernelRecord, *, reason: str, exit_code: int | None,
                       error: str | None = None, suppress_events: bool = False) -> None:
        """The one place a kernel's slots, ports, scratch and registry entry are given back."""
        kid = record.kernel_id
        self.allocator.release(kid)
        self.ports.release_owner(kid)
        try:
            KernelScratch(self.config.container.scratch_root, kid).remove()
        except OSError as exc:  # kept, and said: never a reason to keep the kernel's slots
            log.error("kernel %s: removing its scratch failed: %s", kid, exc)
        if self.identities is not None:
            self.identities.release_owner(kid)
        self.registry.remove(kid)
        self._kernel_locks.pop(kid, None)
        if error:
            log.warning("kernel %s ended (%s): %s", kid, reason, error)
        if not suppress_events:
            self.events.emit(ev.kernel_termination("kernel_terminated", kid, record.session_id, reason,
                                                   exit_code))
        self.metrics.kernels.set(len(self.registry))

    async def destroy_kernel(self, kernel_id: str, reason: str = "user-requested",
                             suppress_events: bool = False) -> dict[str, Any]:
        record = self.get_kernel(kernel_id)
        async with self._lock(kernel_id):
            if self.registry.get(kernel_id) is None:
                raise KernelNotFound(f"kernel {kernel_id} not found")
            record.status = "terminating"
            if not suppress_events:
                self.events.emit(ev.kernel_termination("kernel_terminating", kernel_id, record.session_id,
                                                       reason, None))
            exit_code = None
            try:
                exit_code = await self.backend.destroy(record)
            except BackendError as exc:
                self.events.emit(ev.agent_error(f"destroying {kernel_id}: {exc}"))
            finally:
                await self._release(record, reason=reason, exit_code=exit_code,
                                    suppress_events=suppress_events)
        return {"kernel_id": kernel_id, "exit_code": exit_code, "reason": reason}

    async def restart_kernel(self, kernel_id: str) -> KernelRecord:
        """A fresh kernel with the same id and resources (the namespace is reset).

        As 23.09's agent restarts one, the manager hears nothing of the stop and the start (its
        kernel stays RUNNING); only a re-creation that fails is reported terminated.
        """
        record = self.get_kernel(kernel_id)
        slots = record.allocation_obj
        await self.destroy_kernel(kernel_id, reason="restarting", suppress_events=True)
        return await self.create_kernel(cpu=slots.cpu, mem=slots.mem, gpus=len(slots.gpus),
                                        service_ports=len(record.ports) - 1, session_id=record.session_id,
                                        kernel_id=kernel_id, environ=record.environ, image=record.image,
                                        suppress_events=True)

    async def _kernel_exited(self, kernel_id: str, exit_code: int | None) -> None:
        record = self.registry.get(kernel_id)
        if record is None or record.status != "running":
            return
        await self._release(record, reason="self-terminated", exit_code=exit_code)

    # --- execution -------------------------------------------------------------------------

    def _running(self, kernel_id: str) -> KernelRecord:
        record = self.get_kernel(kernel_id)
        if record.status != "running":
            raise KernelStateError(f"kernel {kernel_id} is {record.status}")
        return record

    async def execute(self, kernel_id: str, mode: str, code: str, timeout: float | None = None,
                      run_id: str | None = None) -> dict[str, Any]:
        record = self._running(kernel_id)
        request = {"op": "execute", "mode": mode, "code": code, "timeout": timeout,
                   "run_id": run_id or uuid.uuid4().hex}
        # The runner enforces `timeout`; the agent waits a little longer for its answer.
        wait = None if timeout is None else timeout + 10
        try:
            result = await runner_request(record.runner_host, record.runner_port, record.runner_token,
                                          request, timeout=wait)
        except RunnerError as exc:
            raise KernelStateError(f"kernel {kernel_id}: {exc}") from exc
        return {"kernel_id": kernel_id, "run_id": result["run_id"], "status": result["status"],
                "exit_code": result["exit_code"], "duration": result.get("duration"),
                "console": [["stdout", result["stdout"]], ["stderr", result["stderr"]]],
                "stdout": result["stdout"], "stderr": result["stderr"]}

    async def ping_kernel(self, kernel_id: str) -> dict[str, Any]:
        record = self._running(kernel_id)
        try:
            return await runner_request(record.runner_host, record.runner_port, record.runner_token,
                                        {"op": "ping"}, timeout=5.0)
        except RunnerError as exc:
            raise KernelStateError(f"kernel {kernel_id}: {exc}") from exc

    async def interrupt_kernel(self, kernel_id: str) -> dict[str, Any]:
        record = self._running(kernel_id)
        try:
            result = await runner_request(record.runner_host, record.runner_port, record.runner_token,
                                          {"op": "interrupt"})
        except RunnerError as exc:
            raise KernelStateError(f"kernel {kernel_id}: {exc}") from exc
        return {"kernel_id": kernel_id, "interrupted": result.get("interrupted", False)}

    async def get_logs(self, kernel_id: str) -> dict[str, Any]:
        record = self.get_kernel(kernel_id)
        return {"kernel_id": kernel_id, "logs": await self.backend.logs(record)}

    # --- files (inside the kernel's scratch work dir only; see kernel_fs) -------------------

    def _scratch(self, kernel_id: str) -> KernelScratch:
        record = self.get_kernel(kernel_id)
        owner = tuple(record.identity) if record.identity else self.kernel_owner
        return KernelScratch(self.config.container.scratch_root, kernel_id, owner)

    async def list_files(self, kernel_id: str, path: str = ".") -> dict[str, Any]:
        scratch = self._scratch(kernel_id)
        with scratch.work_fd() as work_fd:
            listing = kernel_fs.list_dir(work_fd, path)
        return {"kernel_id": kernel_id, "path": path, **listing}

    async def upload_file(self, kernel_id: str, path: str, content_b64: str) -> dict[str, Any]:
        scratch = self._scratch(kernel_id)
        kernel_fs.split_path(path)  # a bad path is refused before the content is decoded
        if not isinstance(content_b64, str):
            raise kernel_fs.KernelFileError("content must be base64 text")
        if len(content_b64) > (MAX_FILE_BYTES + 2) // 3 * 4 + 4:
            raise kernel_fs.KernelFileError(f"file larger than {MAX_FILE_BYTES} bytes")
        data = base64.b64decode(content_b64, validate=True)
        if len(data) > MAX_FILE_BYTES:
            raise kernel_fs.KernelFileError(f"file larger than {MAX_FILE_BYTES} bytes")
        with scratch.work_fd() as work_fd:
            size = kernel_fs.upload(work_fd, path, data, scratch.owner)  # the kernel owns what it gets
        return {"kernel_id": kernel_id, "path": path, "size": size}

    async def download_file(self, kernel_id: str, path: str) -> dict[str, Any]:
        scratch = self._scratch(kernel_id)
        with scratch.work_fd() as work_fd:
            data = kernel_fs.download(work_fd, path, scratch.owner, MAX_FILE_BYTES)
        return {"kernel_id": kernel_id, "path": path, "content_b64": base64.b64encode(data).decode()}

    # --- ports and info --------------------------------------------------------------------

    def assign_port(self) -> int:
        return self.ports.take("agent:assigned", 1)[0]

    def release_port(self, port: int) -> bool:
        return bool(self.ports.release([port], owner="agent:assigned"))

    def health(self) -> dict[str, Any]:
        age = None if self.last_heartbeat is None else time.time() - self.last_heartbeat
        return {"status": "ok", "id": self.id, "version": __version__, "backend": self.backend.name,
                "etcd": self.etcd_status, "redis": "connected" if self.events.connected else "disconnected",
                "events_buffered": len(self.events.buffer), "events_dropped": self.events.dropped,
                "kernels": len(self.registry), "heartbeat_age": age,
                "uptime": time.time() - self.started_at}

    def hwinfo(self) -> dict[str, Any]:
        backend_info: dict[str, Any] = {"name": self.backend.name}
        if getattr(self.backend, "mode", None):
            backend_info["mode"] = self.backend.mode
            backend_info["limits_enforced"] = self.backend.mode == "systemd"
        return {"id": self.id, "architecture": platform.machine(), "kernel": platform.release(),
                "cpu_count": os.cpu_count(), "capacity": self.capacity.slots(),
                "available": self.available_slots(),
                "gpus": [{"index": g.index, "model": g.model, "memory": g.memory, "uuid": g.uuid}
                         for g in self.capacity.gpus],
                "free_gpu_indices": self.allocator.free_gpu_indices(),
                "ports": {"range": [self.ports.low, self.ports.high], "free": self.ports.free_count()},
                "backend": backend_info}

    def resource_error_types(self) -> tuple[type[Exception], ...]:
        return (ResourceError,)
