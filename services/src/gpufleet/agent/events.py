"""Events to the Redis stream `events`, and stats keys with an expiry.

Entries are `{name, source=<agent id>, args=<JSON>}`. Redis being down never
blocks the agent: events wait in a bounded in-memory buffer and are sent, in
order, once Redis answers again.

Drop rule (documented in docs/agent.md): the buffer holds at most
`max_buffered` events. Heartbeats are never queued behind each other: a new
heartbeat replaces an unsent one (only the latest state matters). When the
buffer is full, the oldest event is dropped and counted in
`gpufleet_agent_events_dropped_total`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gpufleet.agent.config import HostPort

log = logging.getLogger(__name__)

STREAM = "events"
STREAM_MAXLEN = 100_000
HEARTBEAT = "agent_heartbeat"


class EventPublisher:
    def __init__(self, source: str, max_buffered: int = 1000, on_drop=None) -> None:
        self.source = source
        self.max_buffered = max_buffered
        self.buffer: collections.deque[tuple[str, dict[str, Any], float]] = collections.deque()
        self.dropped = 0
        self.sent = 0
        self.on_drop = on_drop or (lambda: None)
        self._wakeup = asyncio.Event()
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task | None = None
        self.connected = False
        self.last_error: str | None = None

    # --- producing ------------------------------------------------------------------------

    def publish(self, name: str, **args: Any) -> None:
        if name == HEARTBEAT:
            for i, (queued, _, _) in enumerate(self.buffer):
                if queued == HEARTBEAT:
                    del self.buffer[i]
                    break
        if len(self.buffer) >= self.max_buffered:
            self.buffer.popleft()
            self.dropped += 1
            self.on_drop()
        self.buffer.append((name, args, time.time()))
        self._wakeup.set()

    # --- connection and delivery -----------------------------------------------------------

    def configure(self, addr: HostPort, password: str | None, db: int = 0) -> None:
        """Point at Redis (from the config or etcd); delivery starts or resumes."""
        self._redis = aioredis.Redis(host=addr.host, port=addr.port, password=password or None, db=db,
                                     socket_timeout=2.0, socket_connect_timeout=2.0)
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
                entry = {"name": name, "source": self.source, "args": json.dumps(args), "time": str(stamp)}
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
        if self._redis is None:
            return False
        try:
            await self._redis.set(key, json.dumps(stats), px=max(1, int(ttl * 1000)))
            return True
        except (RedisError, OSError) as exc:
            self.connected, self.last_error = False, str(exc)
            return False

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
        if self._redis is not None:
            await self._redis.aclose()
