"""Kernel agent latency through a real Backend.AI 23.09 manager.

Starts the test stack on loopback (etcd, Redis, a private PostgreSQL, `backend.ai mgr
start-server` from .venv-backendai) and a `gpufleet agent run` joined to it (local backend,
CURVE on), then drives sessions with backend.ai-client 23.9.x from one client process:

  - create -> RUNNING: `get_or_create` (enqueue) until the manager reports RUNNING, polled
    every 50 ms (the manager's scheduler tick, the agent's create and the KernelStarted
    event all count);
  - execute round trip: `print(6*7)` in query mode until `finished` (client -> manager ->
    agent RPC -> runner and back).

    .venv/bin/python benchmarks/agent_latency_manager.py [--sessions 10] [--executes 20] [--json]

For comparison, the same measured straight to a stand-alone agent with Backend.AI's own
manager-side RPC code (PeerInvoker over callosum, CURVE on, no manager in between):
create_kernels until the kernel_started event, and execute round trips on one kept
connection and on a new connection (CURVE handshake) per call, as the manager's
agent_cache opens one per call. The gpufleet
client's numbers (`gpufleet agent call`) are benchmarks/agent_latency.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fixtures.backendai import (  # noqa: E402
    ARCHITECTURE,
    IMAGE_CANONICAL,
    REGISTRY,
    REGISTRY_URL,
    SCALING_GROUP,
    GpufleetAgentProcess,
    joined_agent,
    make_rpc_keypair,
    run_peer,
    running_manager,
    wait_agent_alive,
)
from fixtures.infra_services import make_etcd, make_redis  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(percentile(ms, 99), 1),
            "min_ms": round(min(ms), 1), "max_ms": round(max(ms), 1)}


def measure_direct(workdir: Path, redis, args) -> dict:
    """A stand-alone agent (Redis given directly) driven by rpc_ops.py's bench."""
    keys = workdir / "direct-keys"
    manager_key, agent_key = make_rpc_keypair(keys, "manager"), make_rpc_keypair(keys, "agent")
    agent = GpufleetAgentProcess(workdir=Path(tempfile.mkdtemp(prefix="direct-", dir=workdir)),
                                 agent_public_key=agent_key[0], agent_secret_key=agent_key[1],
                                 manager_public_key=manager_key[0], manager_secret_key=manager_key[1],
                                 redis=redis)
    agent.write_config()
    agent.start()
    common = [*agent.rpc_args(), "--redis", f"127.0.0.1:{redis.port}", "--redis-password", redis.password,
              "--agent-id", agent.agent_id, "--image", IMAGE_CANONICAL, "--architecture", ARCHITECTURE,
              "--registry", REGISTRY, "--registry-url", REGISTRY_URL, "--scaling-group", SCALING_GROUP,
              "--kernels", str(args.sessions), "--executes", str(args.executes)]
    try:
        kept = run_peer("rpc_ops.py", "bench", *common, timeout=3600)
        fresh = run_peer("rpc_ops.py", "bench", *common, "--connect-per-call", timeout=3600)
        kept["execute_connect_per_call_s"] = fresh["execute_roundtrip_s"]
        return kept
    finally:
        agent.kill_everything()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--executes", type=int, default=20, help="per session")
    parser.add_argument("--direct", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure straight to a stand-alone agent (default: on)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-bench-"))
    etcd, redis = make_etcd(workdir), make_redis(workdir)
    agent = None
    setup_started = time.monotonic()
    try:
        etcd.start()
        redis.start()
        with running_manager(etcd, redis) as manager:
            agent_dir = Path(tempfile.mkdtemp(prefix="gpufleet-agent-", dir=manager.workdir))
            agent = joined_agent(manager, agent_dir)
            wait_agent_alive(manager, agent.agent_id)
            setup_seconds = time.monotonic() - setup_started
            raw = run_peer("client_ops.py", "bench", manager.image_alias, "--sessions", str(args.sessions),
                           "--executes", str(args.executes), env=manager.client_env(), timeout=3600)
            agent.kill_everything()
            agent = None
        direct = measure_direct(workdir, redis, args) if args.direct else None
    finally:
        if agent is not None:
            agent.kill_everything()
        redis.stop()
        etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "setup_s": round(setup_seconds, 1),
        "create_to_running": summary(raw["create_to_running_s"]),
        "execute_roundtrip": summary(raw["execute_roundtrip_s"]),
        "destroy_call": summary(raw["destroy_call_s"]),
    }
    if direct is not None:
        result["direct_create_to_started"] = summary(direct["create_to_started_s"])
        result["direct_execute_roundtrip"] = summary(direct["execute_roundtrip_s"])
        result["direct_execute_new_connection"] = summary(direct["execute_connect_per_call_s"])
    if args.json:
        print(json.dumps(result))
    else:
        print(f"stack up (PostgreSQL, manager, agent ALIVE) in {result['setup_s']} s")
        for name in [key for key in result if key != "setup_s"]:
            s = result[name]
            print(f"{name:26} n={s['n']:4}  p50 {s['p50_ms']:8.1f} ms  p99 {s['p99_ms']:8.1f} ms  "
                  f"min {s['min_ms']:8.1f}  max {s['max_ms']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
