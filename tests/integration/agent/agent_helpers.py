"""Helpers for the kernel agent's integration tests: configs and capacities."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from fixtures.infra_services import free_port_range
from gpufleet.agent.config import parse_config
from gpufleet.agent.core import Agent
from gpufleet.agent.resources import GpuDevice, SlotCapacity


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]




def make_config(tmp_path: Path, *, etcd=None, redis=None, heartbeat=20.0, ports=20, namespace="test",
                wait_for_manager=False, container_uid="agent", **agent_keys):
    low, high = free_port_range(ports)
    token = tmp_path / "token"
    if not token.exists():
        token.write_text(secrets.token_hex(24))
        os.chmod(token, 0o600)
    data = {
        "etcd": {"enabled": False},
        "agent": {"id": agent_keys.pop("id", "test-agent"), "state-dir": str(tmp_path / "state"),
                  "rpc-listen-addr": f"127.0.0.1:{free_port()}", "kernel-ready-timeout": 10,
                  **{k.replace("_", "-"): v for k, v in agent_keys.items()}},
        # Kernels run as the agent here: the test's tmp dirs are private to root. One test
        # (test_kernels_run_as_the_configured_user) covers the default, uid 1000.
        "container": {"port-range": f"{low}-{high}", "scratch-root": str(tmp_path / "scratch"),
                      "kernel-uid": container_uid},
        "rpc": {"token-file": str(token), "require-root-owner": False, "max-request-bytes": 65536},
        "http": {"addr": f"127.0.0.1:{free_port()}"},
        "debug": {"heartbeat-interval": heartbeat},
        "redis": {"addr": f"127.0.0.1:{free_port()}"},  # nobody there: events stay buffered
    }
    if etcd is not None:
        data["etcd"] = {"enabled": True, "addr": f"127.0.0.1:{etcd.port}", "namespace": namespace,
                        "wait-for-manager": wait_for_manager}
        data.pop("redis")
    if redis is not None:
        data["redis"] = {"addr": f"127.0.0.1:{redis.port}", "password": redis.password}
    return parse_config(data)


def capacity(gpus: int = 4) -> SlotCapacity:
    return SlotCapacity(cpu=16, mem=64 << 30, gpus=[GpuDevice(i, "sim") for i in range(gpus)])


def event_names(agent: Agent) -> list[str]:
    return [name for name, _, _ in agent.events.buffer]


