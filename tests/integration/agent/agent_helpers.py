"""Helpers for the kernel agent's integration tests: configs and capacities."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from fixtures.infra_services import free_port_range
from gpufleet.agent.client import client_auth
from gpufleet.agent.config import parse_config
from gpufleet.agent.core import Agent
from gpufleet.agent.protocol.keys import create_keypair
from gpufleet.agent.resources import GpuDevice, SlotCapacity


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def python_for_uid(uid: int) -> str | None:
    """A Python another uid can run (the runner needs only the standard library), or None.

    The test venv's interpreter may live where only root reaches (pyenv under /root), so the
    candidates are tried for real, as that uid."""
    if os.geteuid() != 0:
        return None
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.isfile(candidate):
            continue
        try:
            probe = subprocess.run([candidate, "-c", "import json, socketserver"], user=uid, group=uid,
                                   extra_groups=[], cwd="/", capture_output=True, check=False)
        except OSError:  # not executable by that uid (e.g. a directory above it is 0700)
            continue
        if probe.returncode == 0:
            return candidate
    return None


def real_uids(pid: int | str) -> tuple[int, ...] | None:
    """(real, effective, saved, filesystem) uid of a live (not zombie) process, or None."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
    except OSError:
        return None
    if fields["State"].strip().startswith("Z"):
        return None
    return tuple(int(uid) for uid in fields["Uid"].split())


def pids_of_uids(low: int, high: int) -> list[int]:
    """Live processes whose real uid is in LOW-HIGH."""
    return [int(pid) for pid in os.listdir("/proc")
            if pid.isdigit() and low <= ((real_uids(pid) or (-1,))[0]) <= high]


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


