"""Backend.AI 23.09's agent RPC functions on top of the gpufleet agent core.

Each function takes the positional arguments the 23.09 manager sends (see
ai/backend/manager/registry.py) and answers the result shape it reads. Arguments
are checked here, type by type, before the core sees them; ids are UUIDs matched
whole. What a backend cannot do is answered with `NotSupported` (docs/agent.md has
the compatibility table).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import decimal
import enum
import inspect
import io
import json
import logging
import re
import stat
import tarfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from gpufleet.agent import events as ev
from gpufleet.agent.backends.base import BackendError
from gpufleet.agent.core import Agent, KernelNotFound, KernelStateError
from gpufleet.agent.protocol.codec import BinarySize, ClusterMode, KernelLifecycleEventReason
from gpufleet.agent.protocol.server import InvalidRequest, RPCFault
from gpufleet.agent.resources import ResourceError
from gpufleet.config_model import size

log = logging.getLogger(__name__)

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
MAX_TEXT = 1 << 20
MAX_KERNELS_PER_CALL = 64
MAX_ENVIRON = 256
MAX_REPORTED_IMAGES = 256  # image references announced in the heartbeat
# Backend.AI resource slots we allocate; anything else requested non-zero is refused.
KNOWN_SLOTS = {"cpu", "mem", "cuda.device"}


class NotSupported(RPCFault):
    name = "NotSupported"


class KernelNotFoundFault(RPCFault):
    name = "KernelNotFound"


class InvalidArgument(RPCFault):
    name = "InvalidArgument"


class Conflict(RPCFault):
    name = "Conflict"


class Forbidden(RPCFault):
    name = "Forbidden"


class KernelStartFailed(RPCFault):
    name = "KernelStartFailed"


# --- argument checks -------------------------------------------------------------------------

def uuid_arg(name: str, value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str) or not UUID_RE.fullmatch(value):
        raise InvalidArgument(f"{name}: expected a UUID")
    return str(uuid.UUID(value))


def str_arg(name: str, value: Any, max_len: int = 4096, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name}: expected a string")
    if len(value) > max_len or (not allow_empty and not value):
        raise InvalidArgument(f"{name}: length must be {0 if allow_empty else 1}-{max_len}")
    if "\x00" in value:
        raise InvalidArgument(f"{name}: must not contain NUL")
    return value


def map_arg(name: str, value: Any, max_items: int = 1024) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > max_items:
        raise InvalidArgument(f"{name}: expected a map of at most {max_items} items")
    return value


def int_arg(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{name}: expected an integer in {low}..{high}")
    return value


def number_arg(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, (str, decimal.Decimal)) and not isinstance(value, enum.Enum):
        try:
            value = decimal.Decimal(str(value).strip())
        except decimal.InvalidOperation:
            raise InvalidArgument(f"{name}: not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal)):
        raise InvalidArgument(f"{name}: expected a number")
    number = float(value)
    if number != number or not low <= number <= high:
        raise InvalidArgument(f"{name}: expected a number in {low:g}..{high:g}")
    return number


def bool_arg(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name}: expected a boolean")
    return value


def size_arg(name: str, value: Any) -> int:
    """Bytes as Backend.AI writes them: an int, a BinarySize, a decimal string or '4g'-style text."""
    if isinstance(value, (BinarySize, int)) and not isinstance(value, bool):
        return int_arg(name, int(value), 0, 1 << 60)
    if isinstance(value, str):  # the one size syntax, as in agent.toml
        try:
            return int_arg(name, size(value), 0, 1 << 60)
        except ValueError as exc:
            raise InvalidArgument(f"{name}: {exc}") from None
    return int(number_arg(name, value, 0, 1 << 60))


def kernel_spec(index: int, config: Any, kernel_id: str, session_id: str,
                image_ref: Any = None) -> dict[str, Any]:
    """A 23.09 KernelCreationConfig -> the core's create_kernel arguments."""
    where = f"raw_configs[{index}]"
    config = map_arg(where, config)
    slots = map_arg(f"{where}.resource_slots", config.get("resource_slots"), 64)
    for slot, amount in slots.items():
        if not isinstance(slot, str):
            raise InvalidArgument(f"{where}.resource_slots: slot names must be strings")
        if slot not in KNOWN_SLOTS and number_arg(f"{where}.resource_slots.{slot}", amount, 0, 1 << 60) > 0:
            raise NotSupported(f"{where}.resource_slots.{slot}: this agent does not provide that slot")
    cpu = number_arg(f"{where}.resource_slots.cpu", slots.get("cpu", 1), 0.001, 1024)
    mem = size_arg(f"{where}.resource_slots.mem", slots.get("mem", 512 << 20))
    gpus = number_arg(f"{where}.resource_slots.cuda.device", slots.get("cuda.device", 0), 0, 64)
    if gpus != int(gpus):
        raise NotSupported(f"{where}.resource_slots.cuda.device: fractional GPUs are not supported")
    environ = map_arg(f"{where}.environ", config.get("environ"), MAX_ENVIRON)
    for key, value in environ.items():
        str_arg(f"{where}.environ key", key, 256, allow_empty=False)
        str_arg(f"{where}.environ.{key}", value, 32768)
    image = config.get("image")
    canonical = None
    if isinstance(image, dict):
        canonical = image.get("canonical")
    if image_ref is not None and isinstance(image_ref, dict):
        canonical = image_ref.get("canonical", canonical)
    elif isinstance(image_ref, str):
        canonical = image_ref
    if canonical is not None:
        canonical = str_arg(f"{where}.image.canonical", canonical, 512, allow_empty=False)
    labels = image.get("labels", {}) if isinstance(image, dict) else {}
    service_ports = _service_port_count(labels.get("ai.backend.service-ports") if isinstance(labels, dict)
                                        else None)
    return {"cpu": cpu, "mem": mem, "gpus": int(gpus), "service_ports": service_ports,
            "session_id": session_id, "kernel_id": kernel_id, "environ": dict(environ), "image": canonical}


def _service_port_count(label: Any) -> int:
    """`ai.backend.service-ports` = "jupyter:http:8081,ssh:tcp:2200": one port each (at most 16)."""
    if not isinstance(label, str) or not label.strip():
        return 0
    return min(16, len([item for item in label.split(",") if item.strip()]))


# --- the functions -----------------------------------------------------------------------------

Function = Callable[..., Awaitable[Any]]


class AgentFunctions:
    """The RPC functions; `handlers()` gives the server its method table."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        # Runs past their flush_timeout, for `continue`: (kernel id, run id) -> task.
        self._runs: dict[tuple[str, str], asyncio.Task] = {}

    def handlers(self) -> dict[str, Callable[[tuple, dict], Awaitable[Any]]]:
        table: dict[str, Callable[[tuple, dict], Awaitable[Any]]] = {}
        for name in FUNCTIONS:
            table[name] = self._bound(name, getattr(self, name))
        return table

    @staticmethod
    def _bound(name: str, fn: Function) -> Callable[[tuple, dict], Awaitable[Any]]:
        signature = inspect.signature(fn)

        async def call(args: tuple, kwargs: dict) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise InvalidRequest(f"{name}: {exc}") from None
            try:
                return await fn(*bound.args, **bound.kwargs)
            except KernelNotFound as exc:
                raise KernelNotFoundFault(str(exc)) from None
            except (ResourceError, KernelStateError) as exc:
                raise Conflict(str(exc)) from None
            except BackendError as exc:
                # The backend could not start or reach the kernel; the message carries its own log lines.
                raise KernelStartFailed(str(exc)) from None
            except PermissionError as exc:
                raise Forbidden(str(exc)) from None
            except FileNotFoundError as exc:
                raise KernelNotFoundFault(f"no such file: {exc}") from None
            except RPCFault:
                raise
            except ValueError as exc:
                # The core's refusals of bad input (reserved environment keys, sizes, paths).
                raise InvalidArgument(str(exc)) from None

        return call

    def _kernel(self, kernel_id: Any) -> str:
        kid = uuid_arg("kernel_id", kernel_id)
        self.agent.get_kernel(kid)
        return kid

    # --- agent ------------------------------------------------------------------------------

    async def ping(self, msg: Any = "") -> str:
        return str_arg("msg", msg, 4096)

    async def health(self) -> dict[str, Any]:
        return self.agent.health()

    async def gather_hwinfo(self) -> dict[str, Any]:
        """Backend.AI's HardwareMetadata per compute plugin (all metadata values are strings)."""
        hw = self.agent.hwinfo()
        info: dict[str, Any] = {
            "cpu": {"status": "healthy", "status_info": None,
                    "metadata": {"cores": str(hw["cpu_count"]), "capacity": str(hw["capacity"]["cpu"]),
                                 "architecture": str(hw["architecture"])}},
            "mem": {"status": "healthy", "status_info": None,
                    "metadata": {"capacity": str(hw["capacity"]["mem"])}},
        }
        if hw["gpus"]:
            info["cuda"] = {"status": "healthy", "status_info": None, "metadata": {
                "devices": str(len(hw["gpus"])),
                "free": ",".join(str(i) for i in hw["free_gpu_indices"]),
                **{f"gpu{g['index']}": str(g["model"]) for g in hw["gpus"]}}}
        return info

    async def get_local_config(self) -> dict[str, Any]:
        public = self.agent.config.as_public_dict()
        return {"agent": {"abuse-report-path": "", **public["agent"]}, "watcher": {}, "gpufleet": public}

    async def update_scaling_group(self, scaling_group: Any) -> None:
        name = str_arg("scaling_group", scaling_group, 64, allow_empty=False)
        # Held in memory and announced in the next heartbeat; agent.toml (owned by Ansible) is not rewritten.
        self.agent.config.agent.scaling_group = name
        self.agent.heartbeat()

    async def shutdown_agent(self, terminate_kernels: Any = False) -> None:
        bool_arg("terminate_kernels", terminate_kernels)
        raise NotSupported("shutdown_agent: stop the agent with systemctl (23.09's agent ignores it too)")

    async def reset_agent(self) -> None:
        for record in self.agent.registry.all():
            with contextlib.suppress(KernelNotFound):
                await self.agent.destroy_kernel(record.kernel_id, reason="agent-termination")

    async def assign_port(self) -> int:
        return self.agent.assign_port()

    async def release_port(self, port_no: Any) -> None:
        self.agent.release_port(int_arg("port_no", port_no, 1, 65535))

    async def create_local_network(self, network_name: Any) -> None:
        str_arg("network_name", network_name, 256)
        raise NotSupported("create_local_network: multi-container sessions are not supported")

    async def destroy_local_network(self, network_name: Any) -> None:
        str_arg("network_name", network_name, 256)
        raise NotSupported("destroy_local_network: multi-container sessions are not supported")

    # --- kernels ----------------------------------------------------------------------------

    async def sync_kernel_registry(self, raw_kernel_session_ids: Any) -> None:
        if not isinstance(raw_kernel_session_ids, (list, tuple)) or len(raw_kernel_session_ids) > 100_000:
            raise InvalidArgument("raw_kernel_session_ids: expected an array of (kernel id, session id)")
        known = {}
        for index, pair in enumerate(raw_kernel_session_ids):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise InvalidArgument(f"raw_kernel_session_ids[{index}]: expected (kernel id, session id)")
            known[uuid_arg("kernel_id", pair[0])] = uuid_arg("session_id", pair[1])
        await self.agent.sync_registry(known)

    async def create_kernels(self, raw_session_id: Any, raw_kernel_ids: Any, raw_configs: Any,
                             raw_cluster_info: Any = None,
                             kernel_image_refs: Any = None) -> list[dict[str, Any]]:
        session_id = uuid_arg("raw_session_id", raw_session_id)
        if not isinstance(raw_kernel_ids, (list, tuple)) or not isinstance(raw_configs, (list, tuple)):
            raise InvalidArgument("raw_kernel_ids and raw_configs must be arrays")
        if not 1 <= len(raw_kernel_ids) <= MAX_KERNELS_PER_CALL or len(raw_kernel_ids) != len(raw_configs):
            raise InvalidArgument(f"give 1-{MAX_KERNELS_PER_CALL} kernel ids and as many configs")
        cluster = map_arg("raw_cluster_info", raw_cluster_info)
        mode = cluster.get("mode", ClusterMode.SINGLE_NODE)
        if mode not in (ClusterMode.SINGLE_NODE, ClusterMode.SINGLE_NODE.value) or len(raw_kernel_ids) > 1:
            raise NotSupported("only single-container sessions are supported")
        refs = kernel_image_refs if isinstance(kernel_image_refs, (dict, list, tuple)) else None
        specs = []
        for index, (kernel_id, config) in enumerate(zip(raw_kernel_ids, raw_configs, strict=True)):
            kid = uuid_arg(f"raw_kernel_ids[{index}]", kernel_id)
            ref = None
            if isinstance(refs, dict):
                ref = refs.get(kernel_id, refs.get(kid))
            elif isinstance(refs, (list, tuple)) and index < len(refs):
                ref = refs[index]
            specs.append(kernel_spec(index, config, kid, session_id, ref))
        results = []
        for spec in specs:
            record = await self.agent.create_kernel(**spec)
            if spec["image"] and len(self.agent.known_images) < MAX_REPORTED_IMAGES:
                self.agent.known_images.setdefault(spec["image"], "")
            results.append(self.agent.creation_info(record))
        return results

    async def destroy_kernel(self, kernel_id: Any, session_id: Any, reason: Any = None,
                             suppress_events: Any = False) -> dict[str, Any] | None:
        kid = uuid_arg("kernel_id", kernel_id)
        sid = uuid_arg("session_id", session_id)
        if reason is None:
            reason_value = KernelLifecycleEventReason.USER_REQUESTED.value
        elif isinstance(reason, KernelLifecycleEventReason):
            reason_value = reason.value
        elif isinstance(reason, str) and reason in KernelLifecycleEventReason._value2member_map_:
            reason_value = reason
        else:
            raise InvalidArgument("reason: expected a KernelLifecycleEventReason")
        quiet = bool_arg("suppress_events", suppress_events)
        if self.agent.registry.get(kid) is None:
            # As 23.09: an unknown kernel is already gone; tell the manager so it can finish.
            if not quiet:
                self.agent.events.emit(ev.kernel_termination("kernel_terminated", kid, sid,
                                                             "already-terminated", None))
            return None
        return await self.agent.destroy_kernel(kid, reason=reason_value, suppress_events=quiet)

    async def restart_kernel(self, session_id: Any, kernel_id: Any, updated_config: Any) -> dict[str, Any]:
        uuid_arg("session_id", session_id)
        kid = self._kernel(kernel_id)
        map_arg("updated_config", updated_config)
        record = await self.agent.restart_kernel(kid)
        return self.agent.creation_info(record)

    async def ping_kernel(self, kernel_id: Any) -> dict[str, float] | None:
        kid = self._kernel(kernel_id)
        started = time.monotonic()
        try:
            await self.agent.ping_kernel(kid)
        except KernelStateError:
            return None
        return {"rtt": time.monotonic() - started}

    async def interrupt_kernel(self, kernel_id: Any) -> dict[str, Any]:
        await self.agent.interrupt_kernel(self._kernel(kernel_id))
        return {"status": "finished"}

    async def get_completions(self, kernel_id: Any, text: Any, opts: Any) -> dict[str, Any]:
        self._kernel(kernel_id)
        str_arg("text", text, MAX_TEXT)
        map_arg("opts", opts)
        return {"status": "finished", "completions": []}

    async def get_logs(self, kernel_id: Any) -> dict[str, Any]:
        result = await self.agent.get_logs(self._kernel(kernel_id))
        return {"logs": result["logs"]}

    # --- execution --------------------------------------------------------------------------

    async def execute(self, session_id: Any, kernel_id: Any, api_version: Any, run_id: Any, mode: Any,
                      code: Any, opts: Any, flush_timeout: Any) -> dict[str, Any]:
        sid = uuid_arg("session_id", session_id)
        kid = self._kernel(kernel_id)
        int_arg("api_version", api_version, 1, 100)
        if run_id is not None:
            run_id = str_arg("run_id", run_id, 64, allow_empty=False)
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", run_id):
                raise InvalidArgument("run_id: letters, digits, '_', '.', '-' only")
        if mode not in ("query", "batch", "continue", "input"):
            raise InvalidArgument("mode: one of query, batch, continue, input")
        code = str_arg("code", code, MAX_TEXT)
        opts = map_arg("opts", opts, 64)
        wait = None if flush_timeout is None else number_arg("flush_timeout", flush_timeout, 0, 86400)
        if mode == "input":
            raise NotSupported("execute: input mode (interactive stdin) is not supported")
        record = self.agent.get_kernel(kid)
        session = record.session_id or sid
        if mode == "continue":
            task = self._runs.get((kid, run_id or ""))
            if task is None:
                raise InvalidArgument(f"execute: no run {run_id!r} to continue")
        else:
            run_id = run_id or uuid.uuid4().hex
            if (kid, run_id) in self._runs:
                raise Conflict(f"run {run_id} is still running")
            timeout = opts.get("exec_timeout")
            if timeout is not None:
                timeout = number_arg("opts.exec_timeout", timeout, 0.001, 86400)
            if mode == "batch":
                command = self._batch_command(code, opts)
                coro = self.agent.execute(kid, "batch", command, timeout=timeout, run_id=run_id)
            else:
                coro = self.agent.execute(kid, "query", code, timeout=timeout, run_id=run_id)
            self.agent.events.emit(ev.execution("execution_started", session))
            task = asyncio.ensure_future(coro)
            self._runs[(kid, run_id)] = task
            task.add_done_callback(lambda _, key=(kid, run_id): self._forget_later(key))
        try:
            done, _ = await asyncio.wait({task}, timeout=wait)
        except asyncio.CancelledError:
            raise
        if not done:
            return {"runId": run_id, "status": "continued", "exitCode": None, "options": None,
                    "console": [], "files": []}
        self._runs.pop((kid, run_id), None)
        try:
            result = task.result()
        except asyncio.CancelledError:
            self.agent.events.emit(ev.execution("execution_cancelled", session))
            raise KernelStateError(f"run {run_id} was cancelled") from None
        return self._execution_result(run_id, result, session)

    def _forget_later(self, key: tuple[str, str]) -> None:
        # A finished run nobody continues is dropped after a while (its result would leak otherwise).
        loop = asyncio.get_event_loop()
        loop.call_later(600, self._runs.pop, key, None)

    @staticmethod
    def _batch_command(code: str, opts: dict[str, Any]) -> str:
        """23.09 batch mode runs opts['build'] then opts['exec'] (shell commands); code is unused.

        Backend.AI's "*" asks the kernel image's own default procedure and "-" skips a step:
        there is no image-defined build here, so both skip `build`; `exec` must be explicit.
        """
        parts = []
        for step in ("build", "exec"):
            command = opts.get(step)
            if command is None or command in ("", "-") or (step == "build" and command == "*"):
                continue
            if command == "*":
                raise NotSupported("execute: batch exec '*' (the image's default command) is not supported; "
                                   "give the command")
            parts.append(str_arg(f"opts.{step}", command, MAX_TEXT))
        if not parts and code:
            parts.append(code)  # convenience for `gpufleet agent call exec --mode batch`
        if not parts:
            raise InvalidArgument("execute: batch mode needs opts.exec (a shell command)")
        return " && ".join(f"( {part} )" for part in parts)

    def _execution_result(self, run_id: str, result: dict[str, Any], session: str) -> dict[str, Any]:
        status = result["status"]
        console = [(kind, text) for kind, text in (("stdout", result["stdout"]), ("stderr", result["stderr"]))
                   if text]
        if status == "timeout":
            self.agent.events.emit(ev.execution("execution_timeout", session))
            bai_status = "exec-timeout"
        else:
            self.agent.events.emit(ev.execution("execution_finished", session))
            bai_status = "finished"
        return {"runId": run_id, "status": bai_status, "exitCode": result["exit_code"], "options": None,
                "console": console, "files": []}

    # --- services and commits (not provided) -----------------------------------------------

    async def start_service(self, kernel_id: Any, service: Any, opts: Any) -> dict[str, Any]:
        """As 23.09 answers an app it cannot start (the manager's API turns it into a clear error)."""
        self._kernel(kernel_id)
        name = str_arg("service", service, 64)
        map_arg("opts", opts)
        return {"status": "failed",
                "error": f"{name}: in-kernel service apps are not supported by this agent"}

    async def shutdown_service(self, kernel_id: Any, service: Any) -> None:
        # Nothing can be running (start_service never starts one); 23.09 answers none as well.
        self._kernel(kernel_id)
        str_arg("service", service, 64)

    async def get_commit_status(self, kernel_id: Any, subdir: Any) -> dict[str, Any]:
        kid = self._kernel(kernel_id)
        str_arg("subdir", subdir, 1024)
        return {"kernel": kid, "status": "ready"}

    async def commit(self, kernel_id: Any, subdir: Any, filename: Any = None) -> dict[str, Any]:
        """As 23.09: a background task id; here the task fails at once (bgtask_failed, with why)."""
        kid = self._kernel(kernel_id)
        subdir = str_arg("subdir", subdir, 1024)
        name = "" if filename is None else str_arg("filename", filename, 1024)
        task_id = str(uuid.uuid4())
        await self.agent.events.finish_bgtask(
            task_id, "failed", "commit is not supported: kernels are not containers that can become an image")
        return {"bgtask_id": task_id, "kernel": kid, "path": f"{subdir}/{name}" if name else subdir}

    # --- files ------------------------------------------------------------------------------

    async def upload_file(self, kernel_id: Any, filename: Any, filedata: Any) -> None:
        kid = self._kernel(kernel_id)
        path = str_arg("filename", filename, 4096, allow_empty=False)
        if not isinstance(filedata, (bytes, bytearray)):
            raise InvalidArgument("filedata: expected bytes")
        await self.agent.upload_file(kid, path, base64.b64encode(bytes(filedata)).decode())

    async def download_single(self, kernel_id: Any, filepath: Any) -> bytes:
        kid = self._kernel(kernel_id)
        path = str_arg("filepath", filepath, 4096, allow_empty=False)
        result = await self.agent.download_file(kid, path)
        return base64.b64decode(result["content_b64"])

    async def download_file(self, kernel_id: Any, filepath: Any) -> bytes:
        """As 23.09: a tar archive holding the file."""
        data = await self.download_single(kernel_id, filepath)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name=str(filepath).rstrip("/").rsplit("/", 1)[-1] or "file")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    async def list_files(self, kernel_id: Any, path: Any) -> dict[str, Any]:
        kid = self._kernel(kernel_id)
        path = str_arg("path", path, 4096)
        result = await self.agent.list_files(kid, path or ".")
        files = []
        for entry in result["files"]:
            kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(entry.get("type"), stat.S_IFREG)
            mode = int(str(entry.get("mode", "0o644")).replace("0o", ""), 8)
            mtime = entry.get("mtime", 0.0)
            files.append({"mode": stat.filemode(kind | mode), "size": entry.get("size", 0), "ctime": mtime,
                          "mtime": mtime, "atime": mtime, "filename": entry.get("name")})
        errors = "listing truncated" if result.get("truncated") else ""
        return {"files": json.dumps(files), "errors": errors, "abspath": path}


# 23.09's 27 functions, plus `health` (asked by newer clients).
FUNCTIONS = (
    "ping", "gather_hwinfo", "get_local_config", "update_scaling_group", "ping_kernel",
    "sync_kernel_registry", "create_kernels", "destroy_kernel", "restart_kernel", "interrupt_kernel",
    "execute", "get_completions", "get_logs", "start_service", "shutdown_service", "get_commit_status",
    "commit", "upload_file", "download_file", "download_single", "list_files", "shutdown_agent",
    "create_local_network", "destroy_local_network", "reset_agent", "assign_port", "release_port",
    "health",
)
