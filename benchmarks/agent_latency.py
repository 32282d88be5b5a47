"""Kernel agent latency over Backend.AI's RPC: create→ready and execute round trip, and N concurrent kernels.

Starts a real `gpufleet agent run` (local backend; subprocess mode when systemd
is not PID 1) on loopback ports, with CURVE keys made for the run, and drives it
as a Backend.AI 23.09 manager does: callosum over ZeroMQ, one connection,
`create_kernels` / `execute` / `destroy_kernel` with the manager's argument shapes.

    python benchmarks/agent_latency.py [--creates 30] [--executes 200] [--concurrent 50] [--json]

Targets (issue 8): create→ready p50 <= 300 ms, execute round-trip p50 <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from gpufleet.agent.client import AgentRPCClient, client_auth
from gpufleet.agent.protocol.keys import create_keypair


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p99_ms": round(percentile(ms, 99), 2),
            "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2)}


def start_agent(workdir: Path, port_count: int) -> tuple[subprocess.Popen, str]:
    create_keypair(workdir / "keys", "agent")
    create_keypair(workdir / "keys", "manager")
    rpc, http = free_port(), free_port()
    # Below the ephemeral range (32768-60999 here): the agent's own outbound connections never take them.
    low = 20000 + secrets.randbelow(8000)
    (workdir / "agent.toml").write_text(f"""
[etcd]
enabled = false
[redis]
addr = "127.0.0.1:1"
[agent]
id = "bench"
rpc-listen-addr = "127.0.0.1:{rpc}"
advertised-host = "127.0.0.1"
state-dir = "{workdir / 'state'}"
rpc-auth-agent-keypair = "{workdir / 'keys' / 'agent.key_secret'}"
rpc-auth-manager-public-key = "{workdir / 'keys' / 'manager.key'}"
[container]
port-range = "{low}-{low + port_count}"
scratch-root = "{workdir / 'scratch'}"
kernel-uid = "agent"
[resource]
reserved-cpu = 0
reserved-mem = 0
[rpc]
require-root-owner = false
[http]
addr = "127.0.0.1:{http}"
""")
    gpufleet = shutil.which("gpufleet", path=os.path.dirname(sys.executable)) or "gpufleet"
    log = open(workdir / "agent.log", "wb")  # noqa: SIM115 - lives as long as the agent
    proc = subprocess.Popen([gpufleet, "agent", "run", "--config", str(workdir / "agent.toml")],
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise SystemExit(f"agent did not start; see {workdir / 'agent.log'}")
    return proc, f"127.0.0.1:{rpc}"


KERNEL = {"image": {"canonical": "cr.backend.ai/stable/python:3.11-ubuntu22.04", "labels": {}},
          "resource_slots": {"cpu": "0.02", "mem": str(64 << 20)}, "environ": {}}
CLUSTER = {"mode": "single-node", "size": 1, "replicas": {"main": 1}}


async def create(client: AgentRPCClient) -> tuple[str, float]:
    kid = str(uuid.uuid4())
    started = time.perf_counter()
    await client.call("create_kernels", kid, [kid], [KERNEL], CLUSTER)
    return kid, time.perf_counter() - started


async def execute(client: AgentRPCClient, kid: str, code: str) -> dict:
    result = await client.call("execute", kid, kid, 2, uuid.uuid4().hex, "query", code, {}, 30.0)
    if result["status"] != "finished" or result["exitCode"] != 0:
        raise RuntimeError(result)
    return result


async def measure(address: str, auth, args) -> dict[str, object]:
    results: dict[str, object] = {"cpus": os.cpu_count()}
    async with AgentRPCClient(address, auth, timeout=300) as client:
        # create -> ready (create_kernels returns once the runner answers), then destroy
        create_times = []
        for _ in range(args.creates):
            kid, elapsed = await create(client)
            create_times.append(elapsed)
            await client.call("destroy_kernel", kid, kid)
        results["create_ready"] = summary(create_times)

        # execute round trip: client -> agent RPC -> runner -> back
        kid, _ = await create(client)
        await execute(client, kid, "x = 0")
        exec_times = []
        out = None
        for _ in range(args.executes):
            started = time.perf_counter()
            out = await execute(client, kid, "x += 1\nx")
            exec_times.append(time.perf_counter() - started)
        assert out is not None and out["console"][0][1].strip() == str(args.executes)
        results["execute_roundtrip"] = summary(exec_times)
        await client.call("destroy_kernel", kid, kid)

        # N kernels created at once, each executes once, all destroyed
        started = time.perf_counter()
        created = await asyncio.gather(*(create(client) for _ in range(args.concurrent)))
        wall_create = time.perf_counter() - started

        async def run(kid: str) -> float:
            t0 = time.perf_counter()
            await execute(client, kid, "import os\nos.getpid()")
            return time.perf_counter() - t0

        started = time.perf_counter()
        concurrent_exec = await asyncio.gather(*(run(kid) for kid, _ in created))
        wall_exec = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(*(client.call("destroy_kernel", kid, kid) for kid, _ in created))
        wall_destroy = time.perf_counter() - started
        health = await client.call("health")
        results["concurrent"] = {
            "kernels": args.concurrent,
            "create_wall_s": round(wall_create, 3), "create": summary([t for _, t in created]),
            "execute_wall_s": round(wall_exec, 3), "execute": summary(list(concurrent_exec)),
            "destroy_wall_s": round(wall_destroy, 3), "kernels_left": health["kernels"],
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=30)
    parser.add_argument("--executes", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-agent-bench-"))
    proc, address = start_agent(workdir, port_count=max(args.concurrent, 10) + 10)
    auth = client_auth(workdir / "keys" / "manager.key_secret", workdir / "keys" / "agent.key")
    try:
        results = asyncio.run(measure(address, auth, args))
    finally:
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(workdir, ignore_errors=True)

    results["targets"] = {
        "create_ready_p50_le_300ms": results["create_ready"]["p50_ms"] <= 300,
        "execute_p50_le_20ms": results["execute_roundtrip"]["p50_ms"] <= 20,
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        cr, ex, cc = results["create_ready"], results["execute_roundtrip"], results["concurrent"]
        print(f"cpus: {results['cpus']}")
        met = {k: "met" if v else "MISSED" for k, v in results["targets"].items()}
        print(f"create->ready      p50 {cr['p50_ms']:8.1f} ms  p99 {cr['p99_ms']:8.1f} ms  (n={cr['n']}, "
              f"target p50 <= 300 ms: {met['create_ready_p50_le_300ms']})")
        print(f"execute round-trip p50 {ex['p50_ms']:8.1f} ms  p99 {ex['p99_ms']:8.1f} ms  (n={ex['n']}, "
              f"target p50 <= 20 ms: {met['execute_p50_le_20ms']})")
        print(f"{cc['kernels']} concurrent kernels: created in {cc['create_wall_s']:.2f} s "
              f"(each p50 {cc['create']['p50_ms']:.0f} ms, p99 {cc['create']['p99_ms']:.0f} ms), "
              f"executed in {cc['execute_wall_s']:.2f} s (p50 {cc['execute']['p50_ms']:.1f} ms), "
              f"destroyed in {cc['destroy_wall_s']:.2f} s, kernels left: {cc['kernels_left']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
