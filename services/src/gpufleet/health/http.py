"""The agent's HTTP endpoint (:9401): /healthz, /readyz, /metrics.

/healthz  200 while the agent's loop is alive (a cycle in progress counts, up
          to its time limit); 503 otherwise — what the systemd watchdog also
          relies on.
/readyz   200 once the first cycle finished and was saved; 503 before.
/metrics  Prometheus text format.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger("gpufleet.health.http")


class AgentHttpServer:
    def __init__(self, agent, address: str, port: int):
        handler = type("Handler", (_Handler,), {"agent": agent})
        self.server = ThreadingHTTPServer((address, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 1.0}, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> AgentHttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    agent = None  # set per server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.agent.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            alive, detail = self.agent.liveness()
            self._send_json(200 if alive else 503, detail)
        elif path == "/readyz":
            ready, detail = self.agent.readiness()
            self._send_json(200 if ready else 503, detail)
        else:
            self._send_json(404, {"error": f"no such path {path}; try /healthz, /readyz, /metrics"})

    def _send_json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data).encode() + b"\n", "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        log.debug(format % args)
