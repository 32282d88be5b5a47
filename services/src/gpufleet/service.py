"""What every gpufleet service shares: sd_notify(3), structured logs, the /healthz /readyz /metrics endpoint.

sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET (READY=1, WATCHDOG=1, ...).

Logs go to stderr, one line per event, logfmt (`level=info event=fence node=gpu-1 ...`)
or JSON. Under systemd (JOURNAL_STREAM set) each line starts with the syslog priority
(`<4>`), which journald turns into the entry's PRIORITY, and no timestamp (journald adds
its own).

    log.info("fenced", extra={"fields": {"node": name, "verdict": "RESET"}})
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST


def notify(message: str) -> bool:
    """Send `message` to systemd; False (and nothing done) when not run by systemd with Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when the watchdog is off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.5, int(usec) / 1e6 / 2)
    except ValueError:
        return None

PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _logfmt_value(value) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\') or not text.isprintable():
        return json.dumps(text)
    return text


class StructuredFormatter(logging.Formatter):
    def __init__(self, style: str = "logfmt", journald: bool = False):
        super().__init__()
        self.style_name = style
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        fields = {"level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        fields.update({k: v for k, v in (getattr(record, "fields", {}) or {}).items() if v is not None})
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if not self.journald:
            fields = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z", **fields}
        if self.style_name == "json":
            line = json.dumps(fields, default=str, separators=(",", ":"))
        else:
            line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())
        if self.journald:
            line = f"<{PRIORITIES.get(record.levelno, 6)}>{line}"
        return line


def setup_logging(level: str = "info", style: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(style, journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger("gpufleet")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# --- /healthz, /readyz, /metrics ------------------------------------------------------------

http_log = logging.getLogger("gpufleet.http")


class StatusHttpServer:
    """/healthz, /readyz and /metrics of one service, on a thread.

    `service` answers `liveness()` and `readiness()` with (ok, detail dict) and has
    `metrics.render()` (Prometheus text): 200 when ok, 503 when not.
    """

    def __init__(self, service, address: str, port: int, name: str = "status-http"):
        handler = type("Handler", (_Handler,), {"service": service})
        self.server = ThreadingHTTPServer((address, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 1.0}, name=name, daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> StatusHttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    service = None  # set per server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.service.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            alive, detail = self.service.liveness()
            self._send_json(200 if alive else 503, detail)
        elif path == "/readyz":
            ready, detail = self.service.readiness()
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
        http_log.debug(format % args)
