"""The agent's side of the runner protocol (JSON lines over TCP, see runner.py)."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from typing import Any


class RunnerError(Exception):
    """The runner cannot be reached or answered with an error."""


async def runner_request(host: str, port: int, token: str, request: dict[str, Any],
                         timeout: float | None = 10.0) -> dict[str, Any]:
    payload = json.dumps({**request, "token": token}).encode() + b"\n"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=64 << 20), 5.0)
    except (OSError, asyncio.TimeoutError) as exc:
        raise RunnerError(f"runner at {host}:{port} unreachable: {exc}") from exc
    try:
        writer.write(payload)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise RunnerError(f"runner at {host}:{port} did not answer: {exc!r}") from exc
    finally:
        writer.close()
    if not line:
        raise RunnerError(f"runner at {host}:{port} closed the connection")
    try:
        response = json.loads(line)
    except ValueError:
        raise RunnerError(f"runner at {host}:{port} answered something that is not JSON") from None
    if not isinstance(response, dict):
        raise RunnerError(f"runner at {host}:{port} answered something that is not an object")
    if "error" in response:
        raise RunnerError(f"runner: {response['error']}")
    return response


async def wait_runner_ready(host: str, port: int, token: str, timeout: float,
                            alive=lambda: True) -> dict[str, Any]:
    """Ping until the runner answers; give up after `timeout` or when `alive()` (a function or a
    coroutine function) turns false."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        still_alive = alive()
        if inspect.isawaitable(still_alive):
            still_alive = await still_alive
        if not still_alive:
            raise RunnerError(f"kernel exited before its runner came up ({last_error})")
        try:
            # Short: a runner answers a ping in milliseconds; a stranger on the port never does.
            return await runner_request(host, port, token, {"op": "ping"}, timeout=0.5)
        except RunnerError as exc:
            last_error = exc
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.1)
    raise RunnerError(f"runner at {host}:{port} not ready after {timeout}s ({last_error})")
