"""The agent's RPC server: callosum over ZeroMQ (ROUTER), CURVE-authenticated, as Backend.AI 23.09.

It is a callosum `Peer` bound with callosum's ZeroMQ RPC transport (so its ZAP
handler, framing and PING/PONG are callosum's own), with the receive loop
replaced: Backend.AI's agent stops answering RPC after an unknown method or an
undecodable body; here every request gets an answer and the loop carries on.

- an unknown method, arguments of the wrong shape or type, a body that is not
  msgpack (or carries a type we do not accept) -> a FAILURE reply naming the
  problem, never a traceback in the log;
- at most `max_concurrency` calls run at once; more are answered `AgentBusy`;
- every call has a deadline (`call_timeout`), answered `DeadlineExceeded`;
- messages above `max_body` bytes are refused by ZeroMQ itself (ZMQ_MAXMSGSIZE),
  and peers that never finish the CURVE handshake are dropped (ZMQ_HANDSHAKE_IVL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import msgpack
import zmq
from callosum.auth import AbstractServerAuthenticator, AuthResult, Credential, Identity
from callosum.lower.zeromq import ZeroMQAddress, ZeroMQRPCTransport
from callosum.rpc import Peer
from callosum.rpc.message import ErrorMetadata, NullMetadata, ResultMetadata, RPCMessage, RPCMessageTypes

from gpufleet.agent.protocol.codec import CodecError, packb, unpackb

log = logging.getLogger(__name__)

ZAP_DOMAIN = "local"  # Backend.AI's manager and agent both use the domain "local"
HEADER_LIMIT = 4096


class RPCFault(Exception):
    """An error answered to the caller as a FAILURE with this class's name and the message."""

    name = "RPCFault"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(RPCFault):
    name = "InvalidRequest"


class UnknownMethod(RPCFault):
    name = "UnknownMethod"


class AgentBusy(RPCFault):
    name = "AgentBusy"


class DeadlineExceeded(RPCFault):
    name = "DeadlineExceeded"


class Packed(bytes):
    """A result body already encoded with the Backend.AI codec (encoding errors are handled per call)."""


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError("no ext types in a message frame")


def _serialize(value: Any) -> bytes:
    return bytes(value) if isinstance(value, Packed) else packb(value)


class ManagerKeyAuthenticator(AbstractServerAuthenticator):
    """CURVE: the agent's keypair is the server identity; only the manager's public key may connect."""

    def __init__(self, agent_public_key: bytes, agent_secret_key: bytes,
                 allowed_client_keys: list[bytes]) -> None:
        self.agent_public_key = agent_public_key
        self.agent_secret_key = agent_secret_key
        self.allowed = set(allowed_client_keys)
        self.refused = 0
        self._last_warning = 0.0

    async def server_identity(self) -> Identity:
        return Identity(ZAP_DOMAIN, self.agent_secret_key)

    async def check_client(self, creds: Credential) -> AuthResult:
        if creds.public_key in self.allowed:
            return AuthResult(success=True, user_id="manager")
        self.refused += 1
        # At most one line a minute: a flood of handshakes must not flood the journal.
        if time.monotonic() - self._last_warning >= 60:
            self._last_warning = time.monotonic()
            log.warning("RPC connection refused: unknown CURVE public key (%d refused so far)", self.refused)
        return AuthResult(success=False)

    async def server_public_key(self) -> bytes:
        return self.agent_public_key


Handler = Callable[[tuple, dict], Awaitable[Any]]


class RPCServer(Peer):
    def __init__(self, bind: str, handlers: dict[str, Handler], *,
                 authenticator: ManagerKeyAuthenticator | None, max_body: int = 16 << 20,
                 max_concurrency: int = 64, call_timeout: float = 900.0,
                 on_call: Callable[[str, str, float], None] | None = None) -> None:
        super().__init__(
            bind=ZeroMQAddress(bind), transport=ZeroMQRPCTransport, authenticator=authenticator,
            serializer=_serialize, deserializer=lambda data: data,
            transport_opts={"zsock_opts": {
                zmq.MAXMSGSIZE: max_body + HEADER_LIMIT * 2,
                zmq.HANDSHAKE_IVL: 10_000,
                zmq.ROUTER_HANDOVER: 0,
                zmq.TCP_KEEPALIVE: 1,
                zmq.TCP_KEEPALIVE_IDLE: 60,
                zmq.BACKLOG: 1024,
            }})
        self.handlers = handlers
        self.max_body = max_body
        self.max_concurrency = max_concurrency
        self.call_timeout = call_timeout
        self.on_call = on_call or (lambda method, outcome, seconds: None)
        self._calls: dict[tuple, asyncio.Task] = {}
        self.dropped_frames = 0

    # --- receiving -----------------------------------------------------------------------------

    async def _recv_loop(self) -> None:
        assert self._connection is not None
        try:
            async with aclosing(self._connection.recv_message()) as frames:
                async for raw in frames:
                    if raw is None:
                        return
                    try:
                        self._accept(raw)
                    except Exception:  # noqa: BLE001 - the loop must survive anything a peer sends
                        self.dropped_frames += 1
                        log.warning("RPC: dropped a message that could not be handled", exc_info=True)
        except asyncio.CancelledError:
            for task in list(self._calls.values()):
                task.cancel()
            if self._calls:
                await asyncio.wait(list(self._calls.values()), timeout=5)
            # Returning (not re-raising) is what callosum's Peer.__aexit__ expects of this task.

    def _accept(self, raw: Any) -> None:
        header = self._header(raw.header)
        if header is None:
            self.dropped_frames += 1
            return
        msgtype, method, okey, seq, compressed = header
        request = RPCMessage(raw.peer_id, msgtype, method, okey, seq, None, None)
        key = (raw.peer_id, method, okey, seq)
        if msgtype == RPCMessageTypes.CANCEL:
            task = self._calls.get(key)
            if task is not None:
                task.cancel()
            return
        if msgtype != RPCMessageTypes.FUNCTION:
            return  # results and errors are for clients; a server has none outstanding
        if compressed:
            self._reply_fault(request, InvalidRequest("compressed (snappy) bodies are not supported"))
            return
        if key in self._calls:
            self._reply_fault(request, InvalidRequest("duplicate request id"))
            return
        if len(self._calls) >= self.max_concurrency:
            self.on_call(method, "busy", 0.0)
            self._reply_fault(request, AgentBusy(f"{self.max_concurrency} calls in progress; retry later"))
            return
        task = asyncio.ensure_future(self._call(request, raw.body))
        self._calls[key] = task
        task.add_done_callback(lambda _: self._calls.pop(key, None))

    def _header(self, data: bytes) -> tuple | None:
        if not isinstance(data, bytes) or len(data) > HEADER_LIMIT:
            return None
        try:
            header = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception:  # noqa: BLE001 - garbage header: nothing to answer to
            return None
        if not isinstance(header, dict):
            return None
        msgtype, method = header.get("type"), header.get("meth")
        okey, seq = header.get("okey"), header.get("seq")
        if not isinstance(msgtype, int) or msgtype not in iter(RPCMessageTypes):
            return None
        if not isinstance(method, str) or len(method) > 128 or not isinstance(seq, int):
            return None
        if not isinstance(okey, (str, bytes)) or len(okey) > 256:
            return None
        return RPCMessageTypes(msgtype), method, okey, seq, bool(header.get("zip"))

    # --- calling -------------------------------------------------------------------------------

    async def _call(self, request: RPCMessage, raw_body: bytes) -> None:
        started = time.monotonic()
        outcome = "ok"
        try:
            async with asyncio.timeout(self.call_timeout):
                handler = self.handlers.get(request.method)
                if handler is None:
                    raise UnknownMethod(f"no RPC function {request.method!r}")
                args, kwargs = self._arguments(raw_body)
                result = await handler(args, kwargs)
                body = Packed(packb(result))
        except TimeoutError:
            outcome = "deadline"
            self._reply_fault(request, DeadlineExceeded(f"no answer within {self.call_timeout:g} s"))
        except asyncio.CancelledError:
            outcome = "cancelled"
            self._put(RPCMessage(request.peer_id, RPCMessageTypes.CANCELLED, request.method,
                                 request.order_key, request.client_seq_id, NullMetadata(), None))
            raise
        except RPCFault as exc:
            outcome = exc.name
            self._reply_fault(request, exc)
        except Exception as exc:  # noqa: BLE001 - a bug in one call must not take the server down
            outcome = "error"
            log.error("RPC %s failed unexpectedly", request.method, exc_info=True)
            self._reply_fault(request, RPCFault(f"internal error ({type(exc).__name__})"))
        else:
            self._put(RPCMessage(request.peer_id, RPCMessageTypes.RESULT, request.method,
                                 request.order_key, request.client_seq_id, ResultMetadata(), body))
        finally:
            self.on_call(request.method, outcome, time.monotonic() - started)

    def _arguments(self, raw_data: Any) -> tuple[tuple, dict]:
        # callosum's frame: msgpack {"meta": <bytes>, "body": <bytes: the serialized {"args", "kwargs"}>}
        try:
            frame = msgpack.unpackb(raw_data, raw=False, strict_map_key=True, max_array_len=16,
                                    max_map_len=16, ext_hook=_no_ext)
        except Exception:  # noqa: BLE001 - any garbage is answered, not raised
            raise InvalidRequest("undecodable message frame") from None
        if not isinstance(frame, dict) or not isinstance(frame.get("body"), (bytes, type(None))):
            raise InvalidRequest("the message frame must be a map with a binary 'body'")
        if frame.get("body") is None:
            return (), {}
        try:
            body = unpackb(frame["body"], self.max_body)
        except CodecError as exc:
            raise InvalidRequest(f"undecodable body: {exc}") from None
        if body is None:
            return (), {}
        if not isinstance(body, dict) or not set(body) <= {"args", "kwargs"}:
            raise InvalidRequest("the body must be a map with 'args' and 'kwargs'")
        args, kwargs = body.get("args", ()), body.get("kwargs", {})
        if args is None:
            args = ()
        if kwargs is None:
            kwargs = {}
        if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
            raise InvalidRequest("'args' must be an array and 'kwargs' a map")
        if not all(isinstance(k, str) for k in kwargs):
            raise InvalidRequest("'kwargs' keys must be strings")
        return tuple(args), kwargs

    def _reply_fault(self, request: RPCMessage, fault: RPCFault) -> None:
        self._put(RPCMessage(request.peer_id, RPCMessageTypes.FAILURE, request.method, request.order_key,
                             request.client_seq_id, ErrorMetadata(fault.name, fault.message, ""), None))

    def _put(self, message: RPCMessage) -> None:
        self._outgoing_queue.put_nowait(message)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.__aexit__(None, None, None)
