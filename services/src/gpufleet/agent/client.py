"""A client of the agent's Backend.AI RPC (callosum over ZeroMQ, CURVE), as the 23.09 manager calls it.

`AgentRPCClient` is asynchronous (one connection, many calls); `call_agent` is the
synchronous one-shot used by `gpufleet agent call`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import zmq
from callosum.auth import AbstractClientAuthenticator, Identity
from callosum.exceptions import AuthenticationError
from callosum.lower.zeromq import ZeroMQAddress, ZeroMQRPCTransport
from callosum.rpc import Peer, RPCInternalError, RPCUserError

from gpufleet.agent.protocol.codec import packb, unpackb
from gpufleet.agent.protocol.keys import load_keypair, load_public_key
from gpufleet.agent.protocol.server import ZAP_DOMAIN


class RpcCallError(Exception):
    """The agent answered with an error: `name` is its kind (e.g. KernelNotFound), `message` the text."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class AgentUnreachable(Exception):
    """No answer: the address is wrong, the agent is down, or it refused our CURVE key."""


class ManagerKeyClientAuth(AbstractClientAuthenticator):
    def __init__(self, agent_public_key: bytes, client_public_key: bytes, client_secret_key: bytes) -> None:
        self._agent_public = agent_public_key
        self._public = client_public_key
        self._secret = client_secret_key

    async def server_public_key(self) -> bytes:
        return self._agent_public

    async def client_identity(self) -> Identity:
        return Identity(ZAP_DOMAIN, self._secret)

    async def client_public_key(self) -> bytes:
        return self._public


def client_auth(manager_keypair: str | os.PathLike | None,
                agent_public_key: str | os.PathLike | bytes | None) -> ManagerKeyClientAuth | None:
    """Auth from key files (None when both are None: an agent with curve-auth = false)."""
    if manager_keypair is None and agent_public_key is None:
        return None
    if manager_keypair is None or agent_public_key is None:
        raise ValueError("CURVE needs both the manager keypair and the agent's public key")
    public, secret = load_keypair(manager_keypair)
    agent_key = agent_public_key if isinstance(agent_public_key, bytes) else load_public_key(agent_public_key)
    return ManagerKeyClientAuth(agent_key, public, secret)


def _address(address: str) -> str:
    return address if address.startswith("tcp://") else f"tcp://{address}"


class AgentRPCClient:
    """`async with AgentRPCClient(addr, auth) as c: await c.call("ping", "hi")`."""

    def __init__(self, address: str, auth: ManagerKeyClientAuth | None, *, timeout: float | None = 120.0,
                 handshake_timeout: float = 5.0) -> None:
        self.address = _address(address)
        self.timeout = timeout
        self._peer = Peer(
            connect=ZeroMQAddress(self.address), transport=ZeroMQRPCTransport, authenticator=auth,
            transport_opts={"handshake_timeout": handshake_timeout, "zsock_opts": {zmq.LINGER: 0}},
            serializer=packb, deserializer=unpackb, invoke_timeout=timeout)

    async def __aenter__(self) -> AgentRPCClient:
        try:
            await self._peer.__aenter__()
        except AuthenticationError:
            await self._close()
            raise AgentUnreachable(f"no answer from {self.address} (agent down, or our CURVE key refused)") \
                from None
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._close()

    async def _close(self) -> None:
        with contextlib.suppress(Exception):  # closing a half-open peer must not hide the real error
            await self._peer.__aexit__(None, None, None)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._peer.invoke(method, {"args": args, "kwargs": kwargs})
        except (RPCUserError, RPCInternalError) as exc:
            raise RpcCallError(exc.name, exc.repr) from None
        except TimeoutError:
            raise AgentUnreachable(f"{method}: no answer from {self.address} within {self.timeout} s") \
                from None


def call_agent(address: str, auth: ManagerKeyClientAuth | None, method: str, *args: Any,
               timeout: float | None = 120.0, **kwargs: Any) -> Any:
    """One synchronous call (a fresh connection)."""

    async def once() -> Any:
        async with AgentRPCClient(address, auth, timeout=timeout) as client:
            return await client.call(method, *args, **kwargs)

    return asyncio.run(once())
