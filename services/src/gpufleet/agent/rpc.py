"""The agent's two listeners: Backend.AI RPC (callosum/ZeroMQ, CURVE) on :6001, HTTP on :6003.

:6001 speaks Backend.AI 23.09's manager<->agent protocol (gpufleet.agent.protocol);
:6003 serves `/health` and `/metrics`, unauthenticated and read-only.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass

from aiohttp import web

from gpufleet.agent.config import AgentConfig, ConfigError
from gpufleet.agent.core import Agent
from gpufleet.agent.protocol.functions import AgentFunctions
from gpufleet.agent.protocol.keys import KeyFileError, load_keypair, load_public_key
from gpufleet.agent.protocol.server import ManagerKeyAuthenticator, RPCServer

log = logging.getLogger(__name__)


def http_app(agent: Agent) -> web.Application:
    """:6003 — /health and /metrics, unauthenticated and read-only."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response(agent.health(), status=200)

    async def metrics(request: web.Request) -> web.Response:
        agent.metrics.observe_agent(agent)
        return web.Response(body=agent.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


def rpc_authenticator(config: AgentConfig) -> ManagerKeyAuthenticator | None:
    """The CURVE authenticator from the configured key files; None only when auth is switched off."""
    if not config.rpc.curve_auth:
        log.warning("RPC authentication is OFF ([rpc] curve-auth = false): anyone who reaches "
                    "%s can run code on this node", config.agent.rpc_listen_addr)
        return None
    try:
        public, secret = load_keypair(config.agent.rpc_auth_agent_keypair, config.rpc.require_root_owner)
        manager = load_public_key(config.agent.rpc_auth_manager_public_key)
    except KeyFileError as exc:
        raise ConfigError(f"[agent] rpc-auth-*: {exc}") from None
    return ManagerKeyAuthenticator(public, secret, [manager])


def raise_open_files_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: each RPC connection costs a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Listeners:
    rpc: RPCServer
    http: web.AppRunner

    async def close(self) -> None:
        await self.rpc.close()
        await self.http.cleanup()


async def serve(agent: Agent, authenticator: ManagerKeyAuthenticator | None) -> Listeners:
    """Start both listeners (call .close() on the result to stop them)."""
    config = agent.config
    agent.public_key = authenticator.agent_public_key if authenticator is not None else None

    def on_call(method: str, outcome: str, seconds: float) -> None:
        metrics = agent.metrics
        label = method if method in functions_table else "-"  # callers must not create label values
        metrics.rpc_requests.labels(label).inc()
        metrics.rpc_duration.labels(label).observe(seconds)
        if outcome != "ok":
            metrics.rpc_failures.labels(label, outcome).inc()

    functions_table = AgentFunctions(agent).handlers()
    listen = config.agent.rpc_listen_addr
    server = RPCServer(f"tcp://{listen.host}:{listen.port}", functions_table, authenticator=authenticator,
                       max_body=config.rpc.max_request_bytes, max_concurrency=config.rpc.max_concurrency,
                       call_timeout=config.rpc.call_timeout, on_call=on_call)
    await server.__aenter__()
    runner = web.AppRunner(http_app(agent), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.http.addr.host, config.http.addr.port).start()
    except OSError:
        await server.close()
        await runner.cleanup()
        raise
    return Listeners(server, runner)


async def run_agent(agent: Agent, authenticator: ManagerKeyAuthenticator | None, stop: asyncio.Event) -> None:
    await agent.start()
    listeners = await serve(agent, authenticator)
    try:
        await stop.wait()
    finally:
        await listeners.close()
        await agent.stop()
