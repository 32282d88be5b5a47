"""`gpufleet agent …` commands: `run` (the daemon) and `call` (its RPC client)."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from gpufleet.agent.config import DEFAULT_CONFIG_PATH, ConfigError


@click.group()
def agent() -> None:
    """The kernel agent and its RPC client."""


# --- run -----------------------------------------------------------------------------------

@agent.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=DEFAULT_CONFIG_PATH, show_default=True, help="agent.toml")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--log-format", default="logfmt", show_default=True, type=click.Choice(["logfmt", "json"]),
              help="One line per event on stderr (journald keeps the priority).")
def run_command(config_path: Path, log_level: str, log_format: str) -> None:
    """Run the kernel agent (RPC on [agent] rpc-listen-addr, health/metrics on [http] addr)."""
    import asyncio
    import logging
    import signal

    from gpufleet.agent.config import load_config
    from gpufleet.agent.core import Agent
    from gpufleet.agent.rpc import raise_open_files_limit, rpc_authenticator, serve
    from gpufleet.service import notify, setup_logging

    setup_logging(log_level, log_format)
    try:
        config = load_config(config_path)
        authenticator = rpc_authenticator(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    raise_open_files_limit()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        agent_obj = Agent(config)
        agent_obj.public_key = authenticator.agent_public_key if authenticator is not None else None
        await agent_obj.start()
        listeners = await serve(agent_obj, authenticator)
        logging.getLogger("gpufleet.agent").info(
            "agent %s up: rpc %s (callosum/ZeroMQ, CURVE %s), http %s, backend %s, %d kernels adopted",
            agent_obj.id, config.agent.rpc_listen_addr, "on" if authenticator else "OFF", config.http.addr,
            config.agent.backend, len(agent_obj.registry))
        notify("READY=1")
        await stop.wait()
        notify("STOPPING=1")
        await listeners.close()
        await agent_obj.stop()

    asyncio.run(main())


# --- call ---------------------------------------------------------------------------------

MANAGER_KEYPAIR_ENV = "GPUFLEET_MANAGER_KEYPAIR"
DEFAULT_MANAGER_KEYPAIR = Path("~/.config/gpufleet/rpc-keys/manager.key_secret")


class CallContext:
    """Where and how to call; the target (config, keys) is resolved at the first call, so that a
    subcommand's --help works without keys."""

    def __init__(self, resolve_target: Any, as_json: bool, timeout: float) -> None:
        self._resolve_target = resolve_target
        self._target: tuple[str, Any] | None = None
        self.as_json = as_json
        self.timeout = timeout

    def _resolved(self) -> tuple[str, Any]:
        if self._target is None:
            self._target = self._resolve_target()
        return self._target

    def call(self, method: str, *args: Any) -> Any:
        from gpufleet.agent.client import AgentUnreachable, RpcCallError, call_agent

        address, auth = self._resolved()
        try:
            return call_agent(address, auth, method, *args, timeout=self.timeout)
        except RpcCallError as exc:
            raise click.ClickException(str(exc)) from None
        except AgentUnreachable as exc:
            raise click.ClickException(str(exc)) from None

    def show(self, value: Any, text: str | None = None) -> None:
        if self.as_json or text is None:
            click.echo(json.dumps(_jsonable(value), indent=2, sort_keys=True))
        else:
            click.echo(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _resolve_target(config_path: Path | None, address: str | None, manager_keypair: Path | None,
                    agent_public_key: Path | None, no_auth: bool) -> tuple[str, Any]:
    config = None
    path = config_path or DEFAULT_CONFIG_PATH
    if config_path is not None or path.exists():
        from gpufleet.agent.config import load_config

        try:
            config = load_config(path)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    if address is None:
        if config is None:
            address = "127.0.0.1:6001"
        else:
            listen = config.agent.rpc_listen_addr
            host = "127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host  # noqa: S104
            address = f"{host}:{listen.port}"
    if no_auth:
        return address, None
    if agent_public_key is None and config is not None:
        # The public certificate sits beside the keypair (agent.key next to agent.key_secret).
        keypair = config.agent.rpc_auth_agent_keypair
        agent_public_key = keypair.with_name(keypair.name.removesuffix("_secret"))
    if agent_public_key is None:
        raise click.ClickException("no agent public key: pass --agent-public-key or --config")
    if manager_keypair is None:
        manager_keypair = Path(os.environ.get(MANAGER_KEYPAIR_ENV, str(DEFAULT_MANAGER_KEYPAIR))).expanduser()
    from gpufleet.agent.client import client_auth
    from gpufleet.agent.protocol.keys import KeyFileError

    try:
        return address, client_auth(manager_keypair, agent_public_key)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None


@agent.group("call")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="agent.toml to take the address and the agent's public key from "
                   f"[default: {DEFAULT_CONFIG_PATH}]")
@click.option("--address",
              help="host:port of the agent's RPC (default: from the config, else 127.0.0.1:6001)")
@click.option("--manager-keypair", type=click.Path(dir_okay=False, path_type=Path),
              help=f"the manager's CURVE keypair (*.key_secret, mode 0600) [env {MANAGER_KEYPAIR_ENV}, "
                   f"default {DEFAULT_MANAGER_KEYPAIR}]")
@click.option("--agent-public-key", type=click.Path(dir_okay=False, path_type=Path),
              help="the agent's public certificate (agent.key)")
@click.option("--no-auth", is_flag=True,
              help="connect without CURVE (only for an agent with curve-auth = false)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait for an answer")
@click.pass_context
def call(ctx: click.Context, config_path, address, manager_keypair, agent_public_key, no_auth, as_json,
         timeout) -> None:
    """Call the kernel agent over Backend.AI's RPC (callosum/ZeroMQ, CURVE), as a manager does."""
    ctx.obj = CallContext(
        lambda: _resolve_target(config_path, address, manager_keypair, agent_public_key, no_auth),
        as_json, timeout)


pass_call = click.make_pass_decorator(CallContext)


@call.command("ping")
@pass_call
def call_ping(c: CallContext) -> None:
    """Check the agent answers and accepts our key."""
    c.show({"pong": c.call("ping", "pong")}, "pong")


@call.command("health")
@pass_call
def call_health(c: CallContext) -> None:
    """The agent's status: etcd, Redis, kernels, heartbeat age."""
    result = c.call("health")
    c.show(result, "\n".join(f"{k}: {v}" for k, v in result.items()))


@call.command("hwinfo")
@pass_call
def call_hwinfo(c: CallContext) -> None:
    """Hardware per compute plugin (gather_hwinfo)."""
    c.show(c.call("gather_hwinfo"))


@call.command("config")
@pass_call
def call_config(c: CallContext) -> None:
    """The agent's configuration (without secrets)."""
    c.show(c.call("get_local_config"))


def kernel_config(gpus: int, cpu: float, mem: str, service_ports: int, image: str) -> dict[str, Any]:
    """A Backend.AI KernelCreationConfig for one kernel."""
    from gpufleet.agent.config import parse_size

    try:
        mem_bytes = parse_size("--mem", mem)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    labels = {"ai.backend.service-ports": ",".join(f"port{n}:tcp:{8080 + n}" for n in range(service_ports))}
    return {"image": {"canonical": image, "labels": labels, "registry": {"name": "", "url": ""}},
            "resource_slots": {"cpu": str(cpu), "mem": str(mem_bytes), "cuda.device": str(gpus)},
            "environ": {}, "session_type": "interactive", "cluster_role": "main", "cluster_idx": 1}


def create_kernel(c: CallContext, config: dict[str, Any]) -> dict[str, Any]:
    import uuid

    kernel_id = str(uuid.uuid4())  # the session id is the kernel id for a one-kernel session
    return c.call("create_kernels", kernel_id, [kernel_id], [config],
                  {"mode": "single-node", "size": 1, "replicas": {"main": 1}})[0]


def execute(c: CallContext, kernel_id: str, code: str, mode: str,
            exec_timeout: float | None) -> dict[str, Any]:
    """Run and follow `continued` answers until the run finishes; console items are joined."""
    import uuid

    run_id = uuid.uuid4().hex
    opts: dict[str, Any] = {"exec": code} if mode == "batch" else {}
    if exec_timeout:
        opts["exec_timeout"] = exec_timeout
    result = c.call("execute", kernel_id, kernel_id, 2, run_id, mode, code, opts, 5.0)
    console = list(result["console"])
    while result["status"] == "continued":
        result = c.call("execute", kernel_id, kernel_id, 2, run_id, "continue", "", {}, 5.0)
        console += list(result["console"])
    result = dict(result, console=console)
    result["stdout"] = "".join(text for kind, text in console if kind == "stdout")
    result["stderr"] = "".join(text for kind, text in console if kind == "stderr")
    return result


def _create_options(fn):
    fn = click.option("--image", default="python:3.11-slim", show_default=True,
                      help="Backend.AI image reference (local backend: runs the host's Python)")(fn)
    fn = click.option("--service-ports", default=0, show_default=True, help="extra ports for services")(fn)
    fn = click.option("--mem", default="512m", show_default=True, help="memory, e.g. 512m, 4g")(fn)
    fn = click.option("--cpu", default=1.0, show_default=True, help="CPU cores")(fn)
    return click.option("--gpus", default=0, show_default=True, help="GPUs (cuda.device slots)")(fn)


@call.command("create")
@_create_options
@pass_call
def call_create(c: CallContext, gpus, cpu, mem, service_ports, image) -> None:
    """Create one kernel (a one-kernel session); prints its id."""
    result = create_kernel(c, kernel_config(gpus, cpu, mem, service_ports, image))
    c.show(result, result["id"])


@call.command("exec")
@click.argument("kernel_id")
@click.argument("code")
@click.option("--mode", type=click.Choice(["query", "batch"]), default="query", show_default=True)
@click.option("--exec-timeout", type=float, default=None, help="seconds before the execution is stopped")
@pass_call
def call_exec(c: CallContext, kernel_id, code, mode, exec_timeout) -> None:
    """Run CODE in a kernel (query: Python, state kept; batch: shell)."""
    result = execute(c, kernel_id, code, mode, exec_timeout)
    if c.as_json:
        c.show(result)
    else:
        sys.stdout.write(result["stdout"])
        sys.stderr.write(result["stderr"])
    code = result["exitCode"]
    if result["status"] != "finished" or code:
        sys.exit(code if isinstance(code, int) and 0 < code < 256 else 1)


@call.command("interrupt")
@click.argument("kernel_id")
@pass_call
def call_interrupt(c: CallContext, kernel_id) -> None:
    """Interrupt a kernel's running execution."""
    c.show(c.call("interrupt_kernel", kernel_id))


@call.command("destroy")
@click.argument("kernel_id")
@click.option("--session-id", default=None, help="the kernel's session (default: the kernel id)")
@pass_call
def call_destroy(c: CallContext, kernel_id, session_id) -> None:
    """Destroy a kernel and free its resources."""
    result = c.call("destroy_kernel", kernel_id, session_id or kernel_id)
    exit_code = result.get("exit_code") if isinstance(result, dict) else None
    c.show(result, f"destroyed {kernel_id} (exit code {exit_code})")


@call.command("restart")
@click.argument("kernel_id")
@click.option("--session-id", default=None, help="the kernel's session (default: the kernel id)")
@pass_call
def call_restart(c: CallContext, kernel_id, session_id) -> None:
    """Recreate a kernel with the same id and resources."""
    c.show(c.call("restart_kernel", session_id or kernel_id, kernel_id, {}))


@call.command("logs")
@click.argument("kernel_id")
@pass_call
def call_logs(c: CallContext, kernel_id) -> None:
    """A kernel's console log."""
    result = c.call("get_logs", kernel_id)
    c.show(result, result["logs"])


@call.command("ls")
@click.argument("kernel_id")
@click.argument("path", default=".")
@pass_call
def call_ls(c: CallContext, kernel_id, path) -> None:
    """List files in a kernel's scratch (/home/work)."""
    result = c.call("list_files", kernel_id, path)
    files = json.loads(result["files"])
    listing = "\n".join(f"{f['mode']} {f['size']:>10} {f['filename']}" for f in files)
    c.show(dict(result, files=files), listing)


@call.command("upload")
@click.argument("kernel_id")
@click.argument("local", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("remote")
@pass_call
def call_upload(c: CallContext, kernel_id, local, remote) -> None:
    """Copy a local file into a kernel's scratch."""
    data = local.read_bytes()
    c.call("upload_file", kernel_id, remote, data)
    c.show({"path": remote, "size": len(data)}, f"uploaded {len(data)} bytes to {remote}")


@call.command("download")
@click.argument("kernel_id")
@click.argument("remote")
@click.argument("local", type=click.Path(dir_okay=False, path_type=Path))
@pass_call
def call_download(c: CallContext, kernel_id, remote, local) -> None:
    """Copy a file out of a kernel's scratch."""
    local.write_bytes(c.call("download_single", kernel_id, remote))
    c.show({"path": str(local), "size": local.stat().st_size}, f"wrote {local}")


@call.command("sync")
@click.argument("pairs", nargs=-1)
@pass_call
def call_sync(c: CallContext, pairs) -> None:
    """sync_kernel_registry with KERNEL_ID:SESSION_ID pairs (kernels not listed are destroyed)."""
    parsed = []
    for pair in pairs:
        kernel_id, _, session_id = pair.partition(":")
        parsed.append((kernel_id, session_id or kernel_id))
    c.show(c.call("sync_kernel_registry", parsed), "synced")


@call.command("raw")
@click.argument("method")
@click.argument("args", default="[]")
@pass_call
def call_raw(c: CallContext, method, args) -> None:
    """Call any RPC METHOD with ARGS, a JSON array of its positional arguments."""
    try:
        parsed = json.loads(args)
    except ValueError as exc:
        raise click.BadParameter(f"ARGS is not JSON: {exc}") from None
    if not isinstance(parsed, list):
        raise click.BadParameter("ARGS must be a JSON array")
    c.show(c.call(method, *parsed))


LIFECYCLE_CODE = "import os, sys\nprint(sys.executable, os.environ.get('CUDA_VISIBLE_DEVICES'))"


@call.command("lifecycle")
@_create_options
@click.option("--code", default=LIFECYCLE_CODE, show_default=True, help="Python executed in the kernel")
@pass_call
def call_lifecycle(c: CallContext, gpus, cpu, mem, service_ports, image, code) -> None:
    """Create → execute (twice: state kept) → destroy, with timings; exits non-zero on any failure."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    created = create_kernel(c, kernel_config(gpus, cpu, mem, service_ports, image))
    timings["create"] = time.monotonic() - started
    kid = created["id"]
    gpu_indices = sorted(int(i) for i in created["resource_spec"]["allocations"]
                         .get("cuda", {}).get("cuda.device", {}))
    report: dict[str, Any] = {"kernel_id": kid, "gpu_indices": gpu_indices, "ok": False}
    try:
        started = time.monotonic()
        first = execute(c, kid, code + "\n_gpufleet_lifecycle = 41", "query", None)
        timings["execute"] = time.monotonic() - started
        started = time.monotonic()
        second = execute(c, kid, "print(_gpufleet_lifecycle + 1)", "query", None)
        timings["execute_state"] = time.monotonic() - started
        report.update(output=first["stdout"], first_exit_code=first["exitCode"],
                      state_kept=second["stdout"].strip() == "42")
        report["ok"] = first["exitCode"] == 0 and report["state_kept"]
    finally:
        started = time.monotonic()
        c.call("destroy_kernel", kid, kid)
        timings["destroy"] = time.monotonic() - started
    report["timings"] = {k: round(v, 4) for k, v in timings.items()}
    text = (f"kernel {kid}: {'OK' if report['ok'] else 'FAILED'}\n"
            f"output: {report.get('output', '').strip()}\nstate kept: {report.get('state_kept')}\n"
            + "\n".join(f"{k:>14}: {v * 1000:8.1f} ms" for k, v in report["timings"].items()))
    c.show(report, text)
    if not report["ok"]:
        sys.exit(1)
