"""Events to Redis in Backend.AI 23.09's layout, and stats with an expiry.

Every event is `XADD events {name, source=<agent id>, args=msgpack(args)}` in the
stream database (db 4), where `args` is the tuple Backend.AI's event class
`serialize()`s (the `bai_*` builders below give name and tuple). Stats are msgpack
values in the stat database (db 0): the agent's under its id, each kernel's under
its id, as 23.09's stats collector writes them.

Redis being down never blocks the agent: events wait in a bounded in-memory
buffer and are sent, in order, once Redis answers again.

Drop rule (documented in docs/agent.md): the buffer holds at most
`max_buffered` events. Heartbeats are never queued behind each other: a new
heartbeat replaces an unsent one (only the latest state matters). When the
buffer is full, the oldest event is dropped and counted in
`gpufleet_agent_events_dropped_total`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gpufleet.agent.config import HostPort
from gpufleet.agent.protocol.codec import KernelLifecycleEventReason, packb

log = logging.getLogger(__name__)

STREAM = "events"
STREAM_MAXLEN = 100_000
HEARTBEAT = "agent_heartbeat"
# Backend.AI 23.09's Redis databases (ai.backend.common.defs).
REDIS_STAT_DB = 0
REDIS_STREAM_DB = 4
BGTASK_ARCHIVE_SECONDS = 86400  # 23.09's MAX_BGTASK_ARCHIVE_PERIOD


# --- Backend.AI 23.09 events: (name, serialize() tuple) ----------------------------------------

def agent_started(reason: str = "self-started") -> tuple[str, tuple]:
    return "agent_started", (reason,)


def agent_terminated(reason: str = "shutdown") -> tuple[str, tuple]:
    return "agent_terminated", (reason,)


def agent_error(message: str) -> tuple[str, tuple]:
    # (message, traceback, user, context_env, severity)
    return "agent_error", (message, None, None, {}, "error")


def agent_heartbeat(agent_info: dict[str, Any]) -> tuple[str, tuple]:
    return HEARTBEAT, (agent_info,)


def kernel_creation(name: str, kernel_id: str, session_id: str, reason: str = "",
                    creation_info: dict[str, Any] | None = None) -> tuple[str, tuple]:
    """kernel_preparing, kernel_pulling, kernel_creating, kernel_started, kernel_cancelled."""
    return name, (str(kernel_id), str(session_id), reason, creation_info or {})


def kernel_termination(name: str, kernel_id: str, session_id: str, reason: str | None,
                       exit_code: int | None) -> tuple[str, tuple]:
    """kernel_terminating, kernel_terminated: the reason is Backend.AI's enum, the exit code an int."""
    return name, (str(kernel_id), str(session_id), KernelLifecycleEventReason.lookup(reason),
                  -1 if exit_code is None else int(exit_code))


def bgtask_done(name: str, task_id: str, message: str | None) -> tuple[str, tuple]:
    """bgtask_done, bgtask_cancelled, bgtask_failed."""
    return name, (str(task_id), message)


def execution(name: str, session_id: str) -> tuple[str, tuple]:
    """execution_started, execution_finished, execution_timeout, execution_cancelled."""
    return name, (str(session_id),)


class EventPublisher:
    def __init__(self, source: str, max_buffered: int = 1000, on_drop=None) -> None:
        self.source = source
        self.max_buffered = max_buffered
        self.buffer: collections.deque[tuple[str, tuple, float]] = collections.deque()
        self.dropped = 0
        self.sent = 0
        self.on_drop = on_drop or (lambda: None)
        self._wakeup = asyncio.Event()
        self._redis: aioredis.Redis | None = None
        self._stat_redis: aioredis.Redis | None = None
        self._task: asyncio.Task | None = None
        self.connected = False
        self.last_error: str | None = None

    # --- producing ------------------------------------------------------------------------

    def publish(self, name: str, args: tuple = ()) -> None:
        if name == HEARTBEAT:
            for i, (queued, _, _) in enumerate(self.buffer):
                if queued == HEARTBEAT:
                    del self.buffer[i]
                    break
        if len(self.buffer) >= self.max_buffered:
            self.buffer.popleft()
            self.dropped += 1
            self.on_drop()
        self.buffer.append((name, tuple(args), time.time()))
        self._wakeup.set()

    def emit(self, event: tuple[str, tuple]) -> None:
        """Publish one of the (name, args) pairs built by the functions above."""
        self.publish(*event)

    # --- connection and delivery -----------------------------------------------------------

    def configure(self, addr: HostPort, password: str | None) -> None:
        """Point at Redis (from the config or etcd); delivery starts or resumes."""
        def connect(db: int) -> aioredis.Redis:
            return aioredis.Redis(host=addr.host, port=addr.port, password=password or None, db=db,
                                  socket_timeout=2.0, socket_connect_timeout=2.0)

        self._redis = connect(REDIS_STREAM_DB)
        self._stat_redis = connect(REDIS_STAT_DB)
        self._wakeup.set()

    @property
    def redis(self) -> aioredis.Redis | None:
        return self._redis

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._deliver_forever())

    async def _deliver_forever(self) -> None:
        backoff = 0.1
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.buffer and self._redis is not None:
                name, args, stamp = self.buffer[0]
                entry = {b"name": name.encode(), b"source": self.source.encode(), b"args": packb(args)}
                try:
                    await self._redis.xadd(STREAM, entry, maxlen=STREAM_MAXLEN, approximate=True)
                except (RedisError, OSError) as exc:
                    self.connected, self.last_error = False, str(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                # Remove the entry only once sent (a heartbeat may have replaced it meanwhile).
                if self.buffer and self.buffer[0][2] == stamp and self.buffer[0][0] == name:
                    self.buffer.popleft()
                self.sent += 1
                self.connected, backoff = True, 0.1

    async def write_stats(self, key: str, stats: dict[str, Any], ttl: float) -> bool:
        """Stats are state, not history: written directly with an expiry, skipped while Redis is down."""
        if self._stat_redis is None:
            return False
        try:
            await self._stat_redis.set(key, packb(stats), px=max(1, int(ttl * 1000)))
            return True
        except (RedisError, OSError) as exc:
            self.connected, self.last_error = False, str(exc)
            return False

    async def finish_bgtask(self, task_id: str, status: str, message: str) -> None:
        """A background task that ended at once, as 23.09's BackgroundTaskManager records one: the
        `bgtask.<id>` hash in the stream database (what the manager's SSE endpoint reads), then the event."""
        if self._redis is not None:
            now = str(time.time())
            try:
                await self._redis.hset(f"bgtask.{task_id}", mapping={
                    "status": status, "current": "0", "total": "0", "msg": message,
                    "started_at": now, "last_update": now})
                await self._redis.expire(f"bgtask.{task_id}", BGTASK_ARCHIVE_SECONDS)
            except (RedisError, OSError) as exc:
                self.connected, self.last_error = False, str(exc)
        self.emit(bgtask_done(f"bgtask_{status}", task_id, message))

    async def flush(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.buffer and time.monotonic() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.02)
        return not self.buffer

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for client in (self._redis, self._stat_redis):
            if client is not None:
                await client.aclose()
