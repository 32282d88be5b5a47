"""`gpufleet health run` as systemd runs it: sd_notify READY/RELOADING/STOPPING, SIGHUP, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.integration

CONFIG = """
interval = {interval}
state_file = "{state}"
[backend]
type = "simulated"
node = "sim-node-0"
faults = "{faults}"
[kubernetes]
enabled = false
[http]
address = "127.0.0.1"
port = {port}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def receive(sock: socket.socket, wanted: str, timeout: float = 15.0) -> list[str]:
    messages, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        messages.append(message)
        if wanted in message:
            return messages
    raise AssertionError(f"no {wanted!r} from the agent; got {messages}")


def test_the_service_lifecycle(tmp_path):
    port = free_port()
    config = tmp_path / "health.toml"
    state = tmp_path / "health.json"
    config.write_text(CONFIG.format(interval=30, state=state, faults=tmp_path / "faults.json", port=port))
    notify_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), JOURNAL_STREAM="8:1234")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from gpufleet.cli import main; main()",
            "health",
            "run",
            "--config",
            str(config),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert any(m.startswith("READY=1") for m in receive(receiver, "READY=1"))
        ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read())
        assert ready["ready"] is True and ready["status"] == "pass"
        assert json.loads(state.read_text())["report"]["status"] == "pass"

        config.write_text("interval = 'often'\n")  # a broken edit: the agent keeps its config
        process.send_signal(signal.SIGHUP)
        receive(receiver, "READY=1")
        config.write_text(CONFIG.format(interval=7, state=state, faults=tmp_path / "faults.json", port=port))
        process.send_signal(signal.SIGHUP)
        assert "RELOADING=1" in receive(receiver, "READY=1")
        process.send_signal(signal.SIGTERM)
        receive(receiver, "STOPPING=1")
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        receiver.close()
    log = process.stderr.read()
    assert "<3>level=error" in log and "config reload failed" in log and "interval must be a number" in log
    assert "<6>level=info" in log and 'msg="config reloaded"' in log and "interval=7.0" in log
    assert "stopped; the node keeps its labels and any fence" in log
