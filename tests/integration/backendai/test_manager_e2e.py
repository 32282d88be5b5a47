"""End to end with a real Backend.AI 23.09 manager: the gpufleet agent joins it, the manager's
API runs a session on it (backend.ai-client 23.9.x), and the agent survives a restart.
The first tests check the harness itself, before the agent exists.

The manager follows the agent's events (heartbeat, kernel_started, kernel_terminated), so
every assertion here is about what the manager and its client see, never the agent's word.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from decimal import Decimal

import pytest
from fixtures.backendai import PEER_DIR, backendai_python, manager_agents, run_peer, wait_agent_alive

ALIVE_TIMEOUT = 240  # heartbeats every 3 s; the manager registers the agent on the first


def list_agents(manager, status="ALIVE"):
    return manager_agents(manager, status)


def wait_alive(manager, agent_id, timeout=ALIVE_TIMEOUT):
    return wait_agent_alive(manager, agent_id, timeout)


def wait_not_alive(manager, agent_id, timeout=ALIVE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(agent["id"] != agent_id for agent in list_agents(manager, "ALIVE")):
            return
        time.sleep(1)
    raise AssertionError(f"the manager still lists agent {agent_id} ALIVE {timeout}s after it stopped")


def host_memory_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def kernel_rows(manager, session_id):
    rows = manager.postgres.psql(
        f"SELECT id, status, agent, status_info FROM kernels WHERE session_id = '{session_id}'")
    fields = ("id", "status", "agent", "status_info")
    return [dict(zip(fields, row.split("|", 3), strict=True)) for row in rows.splitlines()]


def wait_kernel_status(manager, session_id, status, timeout=120):
    deadline = time.monotonic() + timeout
    rows = []
    while time.monotonic() < deadline:
        rows = kernel_rows(manager, session_id)
        if rows and all(row["status"] == status for row in rows):
            return rows
        time.sleep(0.5)
    raise AssertionError(f"kernels of {session_id} not {status} after {timeout}s: {rows}\n"
                         f"manager log:\n{manager.log_tail(3000)}")


# -- the harness, before any agent exists ------------------------------------------------

def test_manager_answers_a_signed_request_with_no_agents(backendai_manager):
    listed = run_peer("client_ops.py", "agents", "--status", "ALIVE", env=backendai_manager.client_env())
    assert listed == {"agents": [], "total": 0}


def test_the_manager_refuses_a_wrong_secret_key(backendai_manager):
    env = {**backendai_manager.client_env(), "BACKEND_SECRET_KEY": "x" * 40}
    proc = subprocess.run([str(backendai_python()), str(PEER_DIR / "client_ops.py"), "agents"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stdout
    assert "BackendAPIError(401" in json.loads(proc.stdout)["error"]


def test_everything_the_manager_is_told_about_is_on_loopback(backendai_manager):
    addresses = [line for line in backendai_manager.config_path.read_text().splitlines()
                 if line.split("=")[0].strip() in ("addr", "service-addr")]
    assert len(addresses) == 3
    assert all('"127.0.0.1:' in line for line in addresses), addresses
    assert backendai_manager.etcd_get("config/redis/addr") == f"127.0.0.1:{backendai_manager.redis.port}"
    assert backendai_manager.etcd_get("volumes/proxies/local/manager_api").startswith("http://127.0.0.1:")


# -- with the gpufleet agent ---------------------------------------------------------------

@pytest.fixture(scope="module")
def alive_agent(backendai_manager, gpufleet_agent):
    return wait_alive(backendai_manager, gpufleet_agent.agent_id)


def test_the_agent_appears_alive_with_its_slots(backendai_manager, gpufleet_agent, alive_agent):
    assert alive_agent["status"] == "ALIVE"
    assert alive_agent["scaling_group"] == backendai_manager.scaling_group
    assert alive_agent["architecture"] == backendai_manager.architecture
    assert alive_agent["addr"] == gpufleet_agent.rpc_addr
    slots = {k: Decimal(v) for k, v in _json(alive_agent["available_slots"]).items()}
    assert slots["cpu"] == Decimal(str(os.cpu_count() - gpufleet_agent.reserved_cpu))
    assert slots["mem"] == host_memory_bytes() - gpufleet_agent.reserved_mem
    assert slots["cuda.device"] == gpufleet_agent.gpus
    assert all(v == 0 for v in _json(alive_agent["occupied_slots"]).values())


def test_the_manager_reads_the_agents_live_stats(backendai_manager, gpufleet_agent, alive_agent):
    """Node stats in Redis' stat database, msgpack, where the manager's GraphQL resolvers read them."""
    deadline = time.monotonic() + ALIVE_TIMEOUT
    agent = alive_agent
    while not agent.get("live_stat") and time.monotonic() < deadline:
        time.sleep(2)
        agent = wait_alive(backendai_manager, gpufleet_agent.agent_id)
    live_stat = _json(agent.get("live_stat"))
    assert live_stat, f"the manager reads no live_stat for the agent: {agent}"
    mem = live_stat["node"]["mem"]
    assert Decimal(mem["capacity"]) == host_memory_bytes() - gpufleet_agent.reserved_mem
    assert 0 <= Decimal(mem["current"]) <= Decimal(mem["capacity"])
    # the manager's own resolver parses the same value
    assert agent["mem_cur_bytes"] == int(Decimal(mem["current"]))


def test_a_session_runs_through_the_managers_api(backendai_manager, gpufleet_agent, alive_agent):
    env = backendai_manager.client_env()
    created = run_peer("client_ops.py", "create", backendai_manager.image_alias, env=env)
    assert created["status"] == "RUNNING"
    rows = kernel_rows(backendai_manager, created["session_id"])
    assert [row["agent"] for row in rows] == [gpufleet_agent.agent_id]
    assert [row["status"] for row in rows] == ["RUNNING"]

    executed = run_peer("client_ops.py", "execute", created["name"], "print(6*7)", env=env)
    assert executed["status"] == "finished"
    assert executed["stdout"].strip() == "42"

    batch = run_peer("client_ops.py", "batch", created["name"], "exit 3", env=env)
    assert batch["status"] == "finished"
    assert batch["exit_code"] == 3

    run_peer("client_ops.py", "destroy", created["name"], env=env)
    rows = wait_kernel_status(backendai_manager, created["session_id"], "TERMINATED")
    assert rows[0]["agent"] == gpufleet_agent.agent_id


def test_an_agent_restarted_mid_session_is_alive_again_and_its_kernel_answers(
        backendai_manager, gpufleet_agent, alive_agent):
    env = backendai_manager.client_env()
    created = run_peer("client_ops.py", "create", backendai_manager.image_alias, env=env)
    assert created["status"] == "RUNNING"
    wait_alive(backendai_manager, gpufleet_agent.agent_id)

    gpufleet_agent.stop()
    # The manager must notice (AgentTerminated on a clean stop, or LOST after its heartbeat
    # timeout) before "ALIVE again" means anything.
    wait_not_alive(backendai_manager, gpufleet_agent.agent_id)
    gpufleet_agent.start()
    wait_alive(backendai_manager, gpufleet_agent.agent_id)
    executed = run_peer("client_ops.py", "execute", created["name"], "print(6*7)", env=env)
    assert executed["stdout"].strip() == "42", executed
    assert [row["status"] for row in kernel_rows(backendai_manager, created["session_id"])] == ["RUNNING"]

    run_peer("client_ops.py", "destroy", created["name"], env=env)
    wait_kernel_status(backendai_manager, created["session_id"], "TERMINATED")


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _tcp_endpoints(pids: set[int]) -> list[tuple[str, str]]:
    """(local, remote) hex address pairs of every TCP socket the processes hold."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    endpoints = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    endpoints.append((fields[1].split(":")[0], fields[2].split(":")[0]))
    return endpoints


LOOPBACK_OR_UNSET = {"0100007F", "00000000",  # 127.0.0.1, 0.0.0.0 (IPv4, little-endian hex)
                     "00000000000000000000000001000000", "00000000000000000000000000000000",  # ::1, ::
                     "0000000000000000FFFF00000100007F"}  # ::ffff:127.0.0.1


def test_the_manager_talks_to_loopback_only(backendai_manager, gpufleet_agent, alive_agent):
    """After a session's worth of work, every TCP socket of the manager's processes is on loopback."""
    manager_pid = backendai_manager.process.pid
    # start-server runs in its own process group (workers included)
    pids = {int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == manager_pid}
    endpoints = _tcp_endpoints(pids)
    assert endpoints, "found no TCP sockets of the manager"
    foreign = [pair for pair in endpoints if not set(pair) <= LOOPBACK_OR_UNSET]
    assert not foreign, foreign


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
