"""What every gpufleet service shares with systemd: sd_notify(3) and structured logs.

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
import time


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
