"""Helpers for the kernel agent's integration tests: configs and capacities."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

from gpufleet.agent.client import client_auth
from gpufleet.agent.config import parse_config
from gpufleet.agent.core import Agent
from gpufleet.agent.protocol.keys import create_keypair
from gpufleet.agent.resources import GpuDevice, SlotCapacity


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_range(size: int) -> tuple[int, int]:
    """A run of ports nobody listens on now (randomised so parallel runs rarely collide)."""
    for _ in range(50):
        low = 20000 + secrets.randbelow(20000)
        ok = True
        for port in range(low, low + size):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return low, low + size - 1
    raise RuntimeError("no free port range")


def rpc_keys(tmp_path: Path) -> dict[str, Path]:
    """The agent's and the manager's CURVE keypairs (created once per test directory)."""
    keys = tmp_path / "rpc-keys"
    paths = {"agent_secret": keys / "agent.key_secret", "agent_public": keys / "agent.key",
             "manager_secret": keys / "manager.key_secret", "manager_public": keys / "manager.key"}
    if not paths["agent_secret"].exists():
        create_keypair(keys, "agent")
        create_keypair(keys, "manager")
    return paths


def client_auth_for(tmp_path: Path):
    keys = rpc_keys(tmp_path)
    return client_auth(keys["manager_secret"], keys["agent_public"])


def make_config(tmp_path: Path, *, etcd=None, redis=None, heartbeat=20.0, ports=20, namespace="test",
                wait_for_manager=False, container_uid="agent", curve_auth=True, rpc=None, **agent_keys):
    low, high = free_port_range(ports)
    keys = rpc_keys(tmp_path)
    data = {
        "etcd": {"enabled": False},
        "agent": {"id": agent_keys.pop("id", "test-agent"), "state-dir": str(tmp_path / "state"),
                  "rpc-listen-addr": f"127.0.0.1:{free_port()}", "kernel-ready-timeout": 10,
                  "rpc-auth-agent-keypair": str(keys["agent_secret"]),
                  "rpc-auth-manager-public-key": str(keys["manager_public"]),
                  **{k.replace("_", "-"): v for k, v in agent_keys.items()}},
        # Kernels run as the agent here: the test's tmp dirs are private to root. One test
        # (test_kernels_run_as_the_configured_user) covers the default, uid 1000.
        "container": {"port-range": f"{low}-{high}", "scratch-root": str(tmp_path / "scratch"),
                      "kernel-uid": container_uid},
        "rpc": {"curve-auth": curve_auth, "require-root-owner": False, "max-request-bytes": 1 << 20,
                **(rpc or {})},
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


def rpc_address(config) -> str:
    return f"tcp://127.0.0.1:{config.agent.rpc_listen_addr.port}"


def event_names(agent: Agent) -> list[str]:
    return [name for name, _, _ in agent.events.buffer]


