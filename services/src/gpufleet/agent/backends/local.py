"""The local backend: each kernel a transient systemd unit, or a supervised subprocess.

With systemd as PID 1 a kernel is `systemd-run --unit gpufleet-kernel-<kid>`
with CPUQuota/MemoryMax from its slots, its own uid, a sandbox (ProtectProc=invisible,
ProtectSystem=strict with only its work dir writable, PrivateTmp, NoNewPrivileges,
SystemCallFilter=@system-service, ...) and DevicePolicy=closed with DeviceAllow= for
exactly its /dev/nvidiaN (N: each GPU's minor number, read through NVML) plus nvidiactl
and nvidia-uvm, so the cgroup enforces the limits and the GPUs. Without systemd
(containers, CI) the kernel is a child process in its own session, with its own uid,
no_new_privs and rlimits; cpu/mem limits and GPUs are then not enforced (only
advertised), which `gather_hwinfo` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pwd
import resource
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gpufleet.agent import kernel_fs
from gpufleet.agent.backends.base import RUNNER_SOURCE, BackendError, KernelBackend, LaunchSpec
from gpufleet.agent.registry import KernelRecord
from gpufleet.agent.runner_client import RunnerError, wait_runner_ready

STOP_GRACE_SECONDS = 3.0
ADOPTED_POLL_SECONDS = 1.0


def systemd_is_running() -> bool:
    """systemd's own test (sd_booted): /run/systemd/system exists only under systemd as init."""
    return os.path.isdir("/run/systemd/system")


def unit_name(kernel_id: str) -> str:
    return f"gpufleet-kernel-{kernel_id}.service"


# Device nodes every GPU kernel needs besides its own /dev/nvidiaN (control, unified memory).
NVIDIA_SHARED_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
# The kernel unit's sandbox (see docs/agent.md, "Threat model"); ReadWritePaths and
# DeviceAllow are per kernel.
KERNEL_SANDBOX = (
    # No ProcSubset=pid: CUDA reads /proc/driver/nvidia, numerical libraries /proc/cpuinfo.
    "ProtectProc=invisible", "ProtectSystem=strict", "PrivateTmp=yes",
    "NoNewPrivileges=yes", "RestrictSUIDSGID=yes", "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "ProtectClock=yes",
    "ProtectHostname=yes", "LockPersonality=yes", "RestrictRealtime=yes", "RestrictNamespaces=yes",
    "SystemCallArchitectures=native", "SystemCallFilter=@system-service", "SystemCallErrorNumber=EPERM",
    "AmbientCapabilities=", "RemoveIPC=yes", "KeyringMode=private",
    "UMask=0077", "DevicePolicy=closed",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",  # getifaddrs (NCCL, Gloo)
)
KERNEL_NPROC = 4096  # processes per kernel uid (subprocess mode; systemd mode has TasksMax)
PR_SET_NO_NEW_PRIVS = 38


def gpu_device_paths(minors: Sequence[int]) -> list[str]:
    """The device nodes a kernel with the GPUs of these minor numbers may open (none without GPUs)."""
    if not minors:
        return []
    return [f"/dev/nvidia{minor}" for minor in minors] + list(NVIDIA_SHARED_DEVICES)


def kernel_environment(environ: dict[str, str], workdir: Path) -> dict[str, str]:
    """A process's defaults under the kernel's environment (kernel_environ: the agent's keys win)."""
    defaults = {
        "HOME": str(workdir),
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    return {**defaults, **environ}


def runner_argv(python: str, runner: Path, port: int, token_file: Path, workdir: Path,
                host: str = "127.0.0.1") -> list[str]:
    return [python, "-u", str(runner), "--host", host, "--port", str(port),
            "--token-file", str(token_file), "--workdir", str(workdir)]


def uid_is_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def systemd_run_argv(record: KernelRecord, env: dict[str, str], command: list[str], workdir: Path,
                     log_path: Path, owner: tuple[int, int] | None = None,
                     owner_is_user: bool | None = None) -> list[str]:
    """The transient unit for one kernel: limits from its slots, a sandbox, its GPUs' devices only.

    systemd runs a unit only as a uid its user database knows; a kernel uid that is not a user
    (the kernel-uid-range needs no accounts) is taken by setpriv as the unit's first step, which
    then drops every capability and the bounding set before the runner starts."""
    cpu_percent = max(1, round(float(record.allocation["cpu"]) * 100))
    argv = [
        "systemd-run", f"--unit={unit_name(record.kernel_id)}", "--collect",
        "--service-type=exec",
        f"--property=CPUQuota={cpu_percent}%",
        f"--property=MemoryMax={int(record.allocation['mem'])}",
        "--property=MemorySwapMax=0",
        "--property=KillMode=control-group",
        f"--property=TimeoutStopSec={int(STOP_GRACE_SECONDS)}",
        f"--property=StandardOutput=append:{log_path}",
        f"--property=StandardError=append:{log_path}",
        f"--working-directory={workdir}",
        "--description=gpufleet kernel " + record.kernel_id,
    ]
    if owner is not None and (uid_is_user(owner[0]) if owner_is_user is None else owner_is_user):
        argv += [f"--uid={owner[0]}", f"--gid={owner[1]}", "--property=CapabilityBoundingSet="]
    elif owner is not None:
        argv.append("--property=CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_SETPCAP")
        command = ["setpriv", f"--reuid={owner[0]}", f"--regid={owner[1]}", "--clear-groups",
                   "--inh-caps=-all", "--bounding-set=-all", "--", *command]
    else:
        argv.append("--property=CapabilityBoundingSet=")
    argv += [f"--property={prop}" for prop in KERNEL_SANDBOX]
    argv.append(f"--property=ReadWritePaths={workdir}")
    if not any(str(workdir).startswith(p) for p in ("/home/", "/root/", "/run/user/")):
        argv.append("--property=ProtectHome=yes")
    # By minor number, not NVML index: the two differ on some hosts (the allocation keeps both).
    devices = gpu_device_paths(record.allocation_obj.gpu_minors)
    argv += [f"--property=DeviceAllow={path} rw" for path in devices]
    argv += [f"--setenv={key}={value}" for key, value in sorted(env.items())]
    return argv + ["--", *command]


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (read once: the process may vanish any time)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a live kernel from a recycled pid."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


async def _run(argv: list[str], timeout: float = 15.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"{argv[0]} timed out"
    return proc.returncode, out.decode(errors="replace")


def _confine_child() -> None:
    """In the forked child, after the uid switch: no privilege gain by exec, bounded resources."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        os._exit(126)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (KERNEL_NPROC, KERNEL_NPROC))


def kill_uid_processes(uid: int, rounds: int = 20) -> int:
    """SIGKILL every process whose real uid is `uid` (a kernel's, in subprocess mode: anything it
    left behind outside its session must not meet the next kernel given the same uid)."""
    killed = 0
    for _ in range(rounds):
        found = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status") as fh:
                    fields = dict(line.split(":", 1) for line in fh if ":" in line)
            except OSError:
                continue
            if fields.get("State", "").strip().startswith("Z"):
                continue  # already dead, waiting for its parent
            if int(fields.get("Uid", "-1 ").split()[0]) == uid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry), signal.SIGKILL)
                    found += 1
        killed += found
        if not found:
            break
    return killed


class LocalBackend(KernelBackend):
    name = "local"
    per_kernel_identity = True
    gpus_by_environment = True

    def __init__(self, mode: str = "auto", python: str = sys.executable) -> None:
        super().__init__()
        if mode == "auto":
            mode = "systemd" if systemd_is_running() else "subprocess"
        self.mode = mode
        self.python = python
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: dict[str, asyncio.Task] = {}
        self._stopping: set[str] = set()

    async def create(self, spec: LaunchSpec) -> None:
        record = spec.record
        scratch = spec.scratch
        runner = scratch.write_runner(RUNNER_SOURCE, record.runner_token)
        record.runner_host, record.runner_port = "127.0.0.1", record.ports[0]
        command = runner_argv(self.python, runner, record.runner_port, scratch.config / "runner.token",
                              scratch.work)
        env = kernel_environment(spec.environ, scratch.work)
        record.backend_data = {"mode": self.mode, "config_dir": str(scratch.config)}
        if scratch.owner is not None:
            record.backend_data["uid"] = scratch.owner[0]
        try:
            if self.mode == "systemd":
                await self._start_unit(record, env, command, scratch.work, scratch.log_path, scratch.owner)
                alive = self._unit_alive_check(record)
            else:
                alive = await self._start_child(record, env, command, scratch, scratch.owner)
            await wait_runner_ready(record.runner_host, record.runner_port, record.runner_token,
                                    spec.ready_timeout, alive=alive)
        except (RunnerError, OSError) as exc:
            raise BackendError(str(exc)) from exc
        self._watch(record)

    def _unit_alive_check(self, record: KernelRecord):
        """An async liveness probe for wait_runner_ready, at most one systemctl call per 0.5 s."""
        last = {"at": 0.0, "alive": True}

        async def alive() -> bool:
            now = asyncio.get_running_loop().time()
            if now - last["at"] >= 0.5:
                last["at"], last["alive"] = now, await self.is_alive(record)
            return last["alive"]
        return alive

    async def _start_child(self, record, env, command, scratch, owner):
        log_fd = scratch.open_log()  # the agent's file; the child gets only the descriptor
        identity = {} if owner is None else {"user": owner[0], "group": owner[1], "extra_groups": []}
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, cwd=scratch.work, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                preexec_fn=_confine_child, **identity)  # noqa: PLW1509 - async-signal-safe enough: ctypes + setrlimit
        finally:
            os.close(log_fd)
        self._children[record.kernel_id] = proc
        record.container_id = f"pid-{proc.pid}"
        record.backend_data.update(pid=proc.pid, start_time=process_start_time(proc.pid))
        return lambda: proc.returncode is None

    async def _start_unit(self, record, env, command, workdir, log_path, owner):
        unit = unit_name(record.kernel_id)
        code, out = await _run(systemd_run_argv(record, env, command, workdir, log_path, owner))
        if code != 0:
            # systemd-run only says "Job failed"; the unit's journal says why (e.g. unknown user).
            _, journal = await _run(["journalctl", "-u", unit, "-n", "5", "-o", "cat", "--no-pager"])
            raise BackendError(f"systemd-run failed for {unit}: {out.strip()} {journal.strip()}".strip())
        record.container_id = unit
        record.backend_data["unit"] = unit

    def _watch(self, record: KernelRecord) -> None:
        proc = self._children.get(record.kernel_id)
        self._watchers[record.kernel_id] = asyncio.ensure_future(self._supervise(record, proc))

    async def _supervise(self, record: KernelRecord, proc) -> None:
        """Report an exit the agent did not ask for (crash, OOM kill, `exit()` of the runner)."""
        if proc is not None:
            exit_code = await proc.wait()
        else:
            while await self.is_alive(record):
                await asyncio.sleep(ADOPTED_POLL_SECONDS)
            exit_code = await self._unit_exit_code(record) if self.mode == "systemd" else None
        self._children.pop(record.kernel_id, None)
        self._watchers.pop(record.kernel_id, None)
        if record.kernel_id not in self._stopping:
            await self._kill_leftovers(record)  # before its uid can be handed out again
            await self._report_exit(record.kernel_id, exit_code)

    async def _kill_leftovers(self, record: KernelRecord) -> None:
        """Subprocess mode: every process of the kernel's uid (units: KillMode=control-group)."""
        uid = record.backend_data.get("uid")
        if uid and record.backend_data.get("mode", self.mode) != "systemd":
            await asyncio.get_running_loop().run_in_executor(None, kill_uid_processes, uid)

    async def _unit_exit_code(self, record: KernelRecord) -> int | None:
        code, out = await _run(["systemctl", "show", "-p", "ExecMainStatus", "--value",
                                record.backend_data.get("unit", unit_name(record.kernel_id))])
        return int(out.strip()) if code == 0 and out.strip().isdigit() else None

    async def destroy(self, record: KernelRecord) -> int | None:
        kid = record.kernel_id
        self._stopping.add(kid)
        try:
            watcher = self._watchers.pop(kid, None)
            if record.backend_data.get("mode", self.mode) == "systemd":
                exit_code = await self._stop_unit(record)
            else:
                exit_code = await self._stop_child(record)
                await self._kill_leftovers(record)  # whatever escaped the kernel's session
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
            return exit_code
        finally:
            self._stopping.discard(kid)

    async def _stop_unit(self, record: KernelRecord) -> int | None:
        unit = record.backend_data.get("unit", unit_name(record.kernel_id))
        exit_code = None
        if await self.is_alive(record):
            await _run(["systemctl", "stop", unit], timeout=STOP_GRACE_SECONDS + 10)
            exit_code = await self._unit_exit_code(record)
        await _run(["systemctl", "reset-failed", unit])
        return exit_code

    async def _stop_child(self, record: KernelRecord) -> int | None:
        proc = self._children.pop(record.kernel_id, None)
        pid = proc.pid if proc is not None else record.backend_data.get("pid")
        if pid is None:
            return None
        if proc is None and not await self.is_alive(record):
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        if proc is not None:
            try:
                return await asyncio.wait_for(proc.wait(), STOP_GRACE_SECONDS)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                return await proc.wait()
        # An adopted kernel is not our child: poll until it is gone.
        for _ in range(int(STOP_GRACE_SECONDS / 0.05)):
            if not await self.is_alive(record):
                return None
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        return None

    async def is_alive(self, record: KernelRecord) -> bool:
        if record.backend_data.get("mode", self.mode) == "systemd":
            unit = record.backend_data.get("unit", unit_name(record.kernel_id))
            code, _ = await _run(["systemctl", "is-active", "--quiet", unit])
            return code == 0
        proc = self._children.get(record.kernel_id)
        if proc is not None:
            return proc.returncode is None
        pid, start_time = record.backend_data.get("pid"), record.backend_data.get("start_time")
        if not pid:
            return False
        fields = _proc_stat(pid)
        # Same start time (not a recycled pid) and not a zombie waiting to be reaped.
        return fields is not None and int(fields[19]) == start_time and fields[0] != "Z"

    async def adopt(self, record: KernelRecord) -> None:
        self._watch(record)

    async def logs(self, record: KernelRecord, tail_bytes: int = 65536) -> str:
        config_dir = record.backend_data.get("config_dir")
        if not config_dir:
            return ""
        return kernel_fs.read_tail(Path(config_dir), kernel_fs.KernelScratch.LOG_NAME,
                                   tail_bytes).decode(errors="replace")

    async def close(self) -> None:
        for task in list(self._watchers.values()):
            task.cancel()
        self._watchers.clear()
