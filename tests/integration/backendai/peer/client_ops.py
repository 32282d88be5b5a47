"""Drive a Backend.AI 23.09 manager with backend.ai-client 23.9.x (run with .venv-backendai's python).

The manager's endpoint and keypair come from BACKEND_* environment variables, as for the
`backend.ai` command. Each sub-command prints one JSON object on stdout; errors print
{"error": ...} and exit 1.

  agents [--status ALIVE]                       the agents the manager lists
  create IMAGE [--name N] [--timeout S]         create a session and wait until it is RUNNING
  execute NAME CODE                             run code in query mode until finished
  batch NAME COMMAND                            run a batch command until finished
  destroy NAME                                  destroy the session
  bench IMAGE [--sessions N] [--executes M]      timings for benchmarks/agent_latency_manager.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time

from ai.backend.client.output.fields import agent_fields
from ai.backend.client.session import AsyncSession

AGENT_FIELDS = [agent_fields[name] for name in (
    "id", "status", "scaling_group", "architecture", "available_slots", "occupied_slots", "addr",
    "version", "compute_plugins", "first_contact", "lost_at", "live_stat", "mem_cur_bytes",
)]


async def list_agents(status: str) -> dict:
    async with AsyncSession() as api:
        result = await api.Agent.paginated_list(status=status, fields=AGENT_FIELDS, page_size=100)
        return {"agents": list(result.items), "total": result.total_count}


async def wait_status(api, name: str, wanted: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    info: dict = {}
    while time.monotonic() < deadline:
        info = await api.ComputeSession(name).get_info()
        if info.get("status") in wanted:
            return info
        if info.get("status") in {"ERROR", "CANCELLED", "TERMINATED"} - wanted:
            raise RuntimeError(f"session {name} became {info.get('status')}: {info.get('statusInfo')}")
        await asyncio.sleep(0.2)
    raise TimeoutError(f"session {name} not {sorted(wanted)} after {timeout}s (last: {info.get('status')})")


async def create(image: str, name: str | None, timeout: float) -> dict:
    name = name or "gpufleet-" + secrets.token_hex(4)
    started = time.monotonic()
    async with AsyncSession() as api:
        session = await api.ComputeSession.get_or_create(
            image, name=name, enqueue_only=True, resources={"cpu": 1, "mem": "256m"},
        )
        info = await wait_status(api, name, {"RUNNING"}, timeout)
    return {"name": name, "session_id": str(session.id), "status": info["status"],
            "create_seconds": time.monotonic() - started}


async def run_until_finished(api, name: str, mode: str, code: str, opts: dict | None, timeout: float) -> dict:
    """The client's loop: the first call may return `continue`; call again until `finished`."""
    session = api.ComputeSession(name)
    console: list = []
    run_id = None
    deadline = time.monotonic() + timeout
    result = await session.execute(run_id, code, mode=mode, opts=opts)
    while True:
        run_id = result["runId"]
        console.extend(result.get("console") or [])
        if result["status"] == "finished":
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{mode} execution in {name} not finished after {timeout}s")
        if result["status"] not in ("continued", "waiting-input", "build-finished", "clean-finished"):
            raise RuntimeError(f"unexpected execution status {result['status']!r}: {result}")
        result = await session.execute(run_id, "", mode="continue")
    stdout = "".join(data for kind, data in console if kind == "stdout")
    stderr = "".join(data for kind, data in console if kind == "stderr")
    return {"run_id": run_id, "status": result["status"], "exit_code": result.get("exitCode"),
            "stdout": stdout, "stderr": stderr, "console": console}


async def execute(name: str, code: str, timeout: float) -> dict:
    async with AsyncSession() as api:
        started = time.monotonic()
        out = await run_until_finished(api, name, "query", code, None, timeout)
        out["execute_seconds"] = time.monotonic() - started
        return out


async def batch(name: str, command: str, timeout: float) -> dict:
    async with AsyncSession() as api:
        return await run_until_finished(api, name, "batch", "", {"exec": command}, timeout)


async def destroy(name: str) -> dict:
    async with AsyncSession() as api:
        result = await api.ComputeSession(name).destroy()
        return {"name": name, "result": result}


async def bench(image: str, sessions: int, executes: int, timeout: float) -> dict:
    """Timings through the manager, in one client process: create -> RUNNING per session
    (status polled every 50 ms), then execute round trips (query until finished)."""
    create_s, execute_s, destroy_s = [], [], []
    async with AsyncSession() as api:
        for _ in range(sessions):
            name = "bench-" + secrets.token_hex(4)
            started = time.monotonic()
            await api.ComputeSession.get_or_create(image, name=name, enqueue_only=True,
                                                   resources={"cpu": 1, "mem": "256m"})
            deadline = started + timeout
            while (await api.ComputeSession(name).get_info()).get("status") != "RUNNING":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"session {name} not RUNNING after {timeout}s")
                await asyncio.sleep(0.05)
            create_s.append(time.monotonic() - started)
            for _ in range(executes):
                started = time.monotonic()
                out = await run_until_finished(api, name, "query", "print(6*7)", None, timeout)
                if out["stdout"].strip() != "42":
                    raise RuntimeError(f"execute returned {out['stdout']!r}")
                execute_s.append(time.monotonic() - started)
            started = time.monotonic()
            await api.ComputeSession(name).destroy()
            destroy_s.append(time.monotonic() - started)
    return {"create_to_running_s": create_s, "execute_roundtrip_s": execute_s, "destroy_call_s": destroy_s}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("agents")
    p.add_argument("--status", default="ALIVE")
    p = sub.add_parser("create")
    p.add_argument("image")
    p.add_argument("--name")
    p.add_argument("--timeout", type=float, default=300)
    for command, arg in (("execute", "code"), ("batch", "shell_command")):
        p = sub.add_parser(command)
        p.add_argument("name")
        p.add_argument(arg)
        p.add_argument("--timeout", type=float, default=300)
    p = sub.add_parser("destroy")
    p.add_argument("name")
    p = sub.add_parser("bench")
    p.add_argument("image")
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--executes", type=int, default=20)
    p.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    calls = {
        "agents": lambda: list_agents(args.status),
        "create": lambda: create(args.image, args.name, args.timeout),
        "execute": lambda: execute(args.name, args.code, args.timeout),
        "batch": lambda: batch(args.name, args.shell_command, args.timeout),
        "destroy": lambda: destroy(args.name),
        "bench": lambda: bench(args.image, args.sessions, args.executes, args.timeout),
    }
    try:
        result = asyncio.run(calls[args.command]())
    except Exception as exc:  # the test shows the peer's error, not a traceback of this script
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
