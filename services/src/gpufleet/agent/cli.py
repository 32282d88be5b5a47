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

TOKEN_ENV = "GPUFLEET_AGENT_TOKEN"  # noqa: S105 - the variable name, not a token


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

    from gpufleet.agent.config import load_config, read_token
    from gpufleet.agent.core import Agent
    from gpufleet.agent.rpc import serve
    from gpufleet.service import notify, setup_logging

    setup_logging(log_level, log_format)
    try:
        config = load_config(config_path)
        token = read_token(config.rpc)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        agent_obj = Agent(config)
        await agent_obj.start()
        runners = await serve(agent_obj, token)
        logging.getLogger("gpufleet.agent").info(
            "agent %s up: rpc %s, http %s, backend %s, %d kernels adopted", agent_obj.id,
            config.agent.rpc_listen_addr, config.http.addr, config.agent.backend, len(agent_obj.registry))
        notify("READY=1")
        await stop.wait()
        notify("STOPPING=1")
        for runner in runners:
            await runner.cleanup()
        await agent_obj.stop()

    asyncio.run(main())


# --- call ----------------------------------------------------------------------------------

class CallContext:
    def __init__(self, address: str, token: str, as_json: bool, timeout: float) -> None:
        from gpufleet.agent.client import AgentClient

        self.client = AgentClient(address, token, timeout=timeout)
        self.as_json = as_json

    def call(self, method: str, **params: Any) -> Any:
        from gpufleet.agent.client import RpcCallError

        try:
            return self.client.call(method, **params)
        except RpcCallError as exc:
            raise click.ClickException(str(exc) + _error_details(exc.error)) from None
        except OSError as exc:
            raise click.ClickException(f"cannot reach the agent at {self.client.base}: {exc}") from None

    def show(self, value: Any, text: str | None = None) -> None:
        if self.as_json or text is None:
            click.echo(json.dumps(value, indent=2, sort_keys=True))
        else:
            click.echo(text)


def _error_details(error: dict[str, Any]) -> str:
    return "".join(f"\n  {e.get('path')}: {e.get('message')}" for e in error.get("errors", []))


def _resolve_target(config_path: Path | None, address: str | None, token: str | None,
                    token_file: Path | None) -> tuple[str, str]:
    config = None
    if config_path is not None or (address is None or (token is None and token_file is None)):
        from gpufleet.agent.config import load_config

        path = config_path or DEFAULT_CONFIG_PATH
        if config_path is not None or path.exists():
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
    if token is None:
        token = os.environ.get(TOKEN_ENV)
    if token is None:
        path = token_file or (config.rpc.token_file if config else None)
        if path is None:
            raise click.ClickException(f"no token: pass --token-file, --config or set {TOKEN_ENV}")
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise click.ClickException(f"cannot read the token file {path}: {exc}") from None
    return address, token


@agent.group("call")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"agent.toml to take the address and token file from [default: {DEFAULT_CONFIG_PATH}]")
@click.option("--address",
              help="host:port of the agent's RPC (default: from the config, else 127.0.0.1:6001)")
@click.option("--token", help=f"the RPC token (or set {TOKEN_ENV})")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="file holding the RPC token")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait for an answer")
@click.pass_context
def call(ctx: click.Context, config_path, address, token, token_file, as_json, timeout) -> None:
    """Call the kernel agent's RPC (replaces the seed's REPL scripts)."""
    address, token = _resolve_target(config_path, address, token, token_file)
    ctx.obj = CallContext(address, token, as_json, timeout)


pass_call = click.make_pass_decorator(CallContext)


@call.command("ping")
@pass_call
def call_ping(c: CallContext) -> None:
    """Check the agent answers and the token is accepted."""
    result = c.call("ping")
    c.show(result, f"pong from {result['agent_id']}")


@call.command("health")
@pass_call
def call_health(c: CallContext) -> None:
    """The agent's status: etcd, Redis, kernels, heartbeat age."""
    result = c.call("health")
    c.show(result, "\n".join(f"{k}: {v}" for k, v in result.items()))


@call.command("hwinfo")
@pass_call
def call_hwinfo(c: CallContext) -> None:
    """Capacity, free slots and GPUs."""
    c.show(c.call("gather_hwinfo"))


@call.command("config")
@pass_call
def call_config(c: CallContext) -> None:
    """The agent's configuration (without secrets)."""
    c.show(c.call("get_local_config"))


def _create_params(gpus: int, cpu: float, mem: str, service_ports: int) -> dict[str, Any]:
    from gpufleet.agent.config import parse_size

    try:
        mem_bytes = parse_size("--mem", mem)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    return {"gpus": gpus, "cpu": cpu, "mem": mem_bytes, "service_ports": service_ports}


def _create_options(fn):
    fn = click.option("--service-ports", default=0, show_default=True, help="extra ports for services")(fn)
    fn = click.option("--mem", default="512m", show_default=True, help="memory, e.g. 512m, 4g")(fn)
    fn = click.option("--cpu", default=1.0, show_default=True, help="CPU cores")(fn)
    return click.option("--gpus", default=0, show_default=True, help="GPUs (cuda.device slots)")(fn)


@call.command("create")
@_create_options
@pass_call
def call_create(c: CallContext, gpus, cpu, mem, service_ports) -> None:
    """Create one kernel; prints its id."""
    result = c.call("create_kernels", kernels=[_create_params(gpus, cpu, mem, service_ports)])["kernels"][0]
    if result["status"] != "running":
        raise click.ClickException(f"create failed: {result.get('error')}")
    c.show(result, result["kernel_id"])


@call.command("exec")
@click.argument("kernel_id")
@click.argument("code")
@click.option("--mode", type=click.Choice(["query", "batch"]), default="query", show_default=True)
@click.option("--exec-timeout", type=float, default=None, help="seconds before the execution is stopped")
@pass_call
def call_exec(c: CallContext, kernel_id, code, mode, exec_timeout) -> None:
    """Run CODE in a kernel (query: Python, state kept; batch: shell)."""
    params: dict[str, Any] = {"kernel_id": kernel_id, "code": code, "mode": mode}
    if exec_timeout:
        params["timeout"] = exec_timeout
    result = c.call("execute", **params)
    if c.as_json:
        c.show(result)
    else:
        sys.stdout.write(result["stdout"])
        sys.stderr.write(result["stderr"])
    if result["exit_code"]:
        sys.exit(result["exit_code"] if 0 < result["exit_code"] < 256 else 1)


@call.command("interrupt")
@click.argument("kernel_id")
@pass_call
def call_interrupt(c: CallContext, kernel_id) -> None:
    """Interrupt a kernel's running execution."""
    c.show(c.call("interrupt_kernel", kernel_id=kernel_id))


@call.command("destroy")
@click.argument("kernel_id")
@pass_call
def call_destroy(c: CallContext, kernel_id) -> None:
    """Destroy a kernel and free its resources."""
    result = c.call("destroy_kernel", kernel_id=kernel_id)
    c.show(result, f"destroyed {kernel_id} (exit code {result['exit_code']})")


@call.command("restart")
@click.argument("kernel_id")
@pass_call
def call_restart(c: CallContext, kernel_id) -> None:
    """Recreate a kernel with the same id and resources."""
    c.show(c.call("restart_kernel", kernel_id=kernel_id))


@call.command("logs")
@click.argument("kernel_id")
@pass_call
def call_logs(c: CallContext, kernel_id) -> None:
    """A kernel's console log."""
    result = c.call("get_logs", kernel_id=kernel_id)
    c.show(result, result["logs"])


@call.command("ls")
@click.argument("kernel_id")
@click.argument("path", default=".")
@pass_call
def call_ls(c: CallContext, kernel_id, path) -> None:
    """List files in a kernel's scratch (/home/work)."""
    result = c.call("list_files", kernel_id=kernel_id, path=path)
    c.show(result, "\n".join(f"{f['type']:4} {f['size']:>10} {f['name']}" for f in result["files"]))


@call.command("upload")
@click.argument("kernel_id")
@click.argument("local", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("remote")
@pass_call
def call_upload(c: CallContext, kernel_id, local, remote) -> None:
    """Copy a local file into a kernel's scratch."""
    content = base64.b64encode(local.read_bytes()).decode()
    c.show(c.call("upload_file", kernel_id=kernel_id, path=remote, content_b64=content))


@call.command("download")
@click.argument("kernel_id")
@click.argument("remote")
@click.argument("local", type=click.Path(dir_okay=False, path_type=Path))
@pass_call
def call_download(c: CallContext, kernel_id, remote, local) -> None:
    """Copy a file out of a kernel's scratch."""
    result = c.call("download_file", kernel_id=kernel_id, path=remote)
    local.write_bytes(base64.b64decode(result["content_b64"]))
    c.show({"path": str(local), "size": local.stat().st_size}, f"wrote {local}")


@call.command("sync")
@pass_call
def call_sync(c: CallContext) -> None:
    """Reconcile the agent's registry with what runs."""
    c.show(c.call("sync_kernel_registry"))


@call.command("raw")
@click.argument("method")
@click.argument("params", default="{}")
@pass_call
def call_raw(c: CallContext, method, params) -> None:
    """Call any RPC METHOD with a JSON object of PARAMS."""
    try:
        parsed = json.loads(params)
    except ValueError as exc:
        raise click.BadParameter(f"PARAMS is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("PARAMS must be a JSON object")
    c.show(c.call(method, **parsed))


LIFECYCLE_CODE = "import os, sys\nprint(sys.executable, os.environ.get('CUDA_VISIBLE_DEVICES'))"


@call.command("lifecycle")
@_create_options
@click.option("--code", default=LIFECYCLE_CODE, show_default=True, help="Python executed in the kernel")
@pass_call
def call_lifecycle(c: CallContext, gpus, cpu, mem, service_ports, code) -> None:
    """Create → execute (twice: state kept) → destroy, with timings; exits non-zero on any failure."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    created = c.call("create_kernels", kernels=[_create_params(gpus, cpu, mem, service_ports)])["kernels"][0]
    timings["create"] = time.monotonic() - started
    if created["status"] != "running":
        raise click.ClickException(f"create failed: {created.get('error')}")
    kid = created["kernel_id"]
    report: dict[str, Any] = {"kernel_id": kid, "gpu_indices": created["gpu_indices"], "ok": False}
    try:
        started = time.monotonic()
        first = c.call("execute", kernel_id=kid, code=code + "\n_gpufleet_lifecycle = 41", mode="query")
        timings["execute"] = time.monotonic() - started
        started = time.monotonic()
        second = c.call("execute", kernel_id=kid, code="print(_gpufleet_lifecycle + 1)", mode="query")
        timings["execute_state"] = time.monotonic() - started
        report.update(output=first["stdout"], first_exit_code=first["exit_code"],
                      state_kept=second["stdout"].strip() == "42")
        report["ok"] = first["exit_code"] == 0 and report["state_kept"]
    finally:
        started = time.monotonic()
        c.call("destroy_kernel", kernel_id=kid)
        timings["destroy"] = time.monotonic() - started
    report["timings"] = {k: round(v, 4) for k, v in timings.items()}
    text = (f"kernel {kid}: {'OK' if report['ok'] else 'FAILED'}\n"
            f"output: {report.get('output', '').strip()}\nstate kept: {report.get('state_kept')}\n"
            + "\n".join(f"{k:>14}: {v * 1000:8.1f} ms" for k, v in report["timings"].items()))
    c.show(report, text)
    if not report["ok"]:
        sys.exit(1)
