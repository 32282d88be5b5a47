"""Optional: health changes as events on the Redis stream `events` (what the kernel agent uses).

One entry per change of the node's status or verdict, and per fence action
(fence, lift, suppressed):

    XADD events MAXLEN ~ 100000 * name gpu_health_changed source <node> args <JSON>

args = {node, status, verdict, previous_status, previous_verdict, fence, findings: [first 5], time}.

Redis being down never delays the checks: events wait in a bounded buffer and
go out, in order, when Redis answers again (the agent's Redis thread retries
with backoff). The drop rule: at most MAX_BUFFERED (100) events wait; when
the buffer is full the oldest is dropped and counted
(gpufleet_health_redis_events_dropped_total). An event Redis took before it
restarted is as durable as Redis' own persistence makes it.
"""

from __future__ import annotations

import json
import logging
from collections import deque

log = logging.getLogger("gpufleet.health.redis")

STREAM = "events"
STREAM_MAXLEN = 100_000
EVENT_NAME = "gpu_health_changed"
MAX_BUFFERED = 100


class RedisEventSink:
    def __init__(self, url: str, node: str, stream: str = STREAM, client=None, on_drop=None):
        import redis

        self.on_drop = on_drop  # called once per event dropped from a full buffer
        self.node = node
        self.stream = stream
        self.client = client or redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.buffer: deque[dict] = deque(maxlen=MAX_BUFFERED)
        self.last: tuple[str, str] | None = None
        self.sent = 0

    def observe(self, report, fence_action: str | None) -> None:
        """Queue an event when the status/verdict changed or the fence moved, then send what is queued."""
        self.queue(report, fence_action)
        self.flush()

    def queue(self, report, fence_action: str | None) -> None:
        """Queue an event when the status/verdict changed or the fence moved (no I/O)."""
        current = (report.status.value, report.verdict.name)
        moved = fence_action in ("fence", "lift", "suppressed")
        if current != self.last or moved:
            previous = self.last or (None, None)
            if len(self.buffer) == self.buffer.maxlen and self.on_drop is not None:
                self.on_drop()
            self.buffer.append(
                {
                    "node": self.node,
                    "status": current[0],
                    "verdict": current[1],
                    "previous_status": previous[0],
                    "previous_verdict": previous[1],
                    "fence": fence_action,
                    "findings": [
                        {"check": f.check, "gpu": f.gpu, "severity": f.severity.name, "message": f.message}
                        for f in report.findings
                        if f.severity > 0
                    ][:5],
                    "time": report.time,
                }
            )
            self.last = current

    def flush(self) -> bool:
        """Send the queued events in order; False (events kept) when Redis does not answer."""
        from redis.exceptions import RedisError

        while self.buffer:
            event = self.buffer[0]
            try:
                self.client.xadd(
                    self.stream,
                    {
                        "name": EVENT_NAME,
                        "source": self.node,
                        "args": json.dumps(event, separators=(",", ":")),
                    },
                    maxlen=STREAM_MAXLEN,
                    approximate=True,
                )
            except (RedisError, OSError) as exc:
                log.warning(
                    "Redis event not sent; will retry",
                    extra={"fields": {"error": str(exc), "queued": len(self.buffer)}},
                )
                return False
            self.buffer.popleft()
            self.sent += 1
        return True
