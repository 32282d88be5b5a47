"""Kernel agent latency: create→ready and execute round-trip (local backend), and 50 concurrent kernels.

Starts a real `gpufleet agent run` (local backend; subprocess mode when systemd
is not PID 1) on loopback ports and drives it over its RPC like a client would.

    python benchmarks/agent_latency.py [--creates 30] [--executes 200] [--concurrent 50] [--json]
    python benchmarks/agent_latency.py --kubernetes [--creates 30] [--kernels 5] [--idle 10] [--json]

Targets (issue 8): create→ready p50 <= 300 ms, execute round-trip p50 <= 20 ms.
"""

from __future__ import annotations

import argparse
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpufleet.agent.client import AgentClient


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


def start_agent(workdir: Path, port_count: int) -> tuple[subprocess.Popen, str, str]:
    token = secrets.token_hex(24)
    token_file = workdir / "token"
    token_file.write_text(token)
    os.chmod(token_file, 0o600)
    rpc, http = free_port(), free_port()
    # Below the ephemeral range (32768+ by default), where outbound connections take ports.
    low = 20000 + secrets.randbelow(10000)
    (workdir / "agent.toml").write_text(f"""
[etcd]
enabled = false
[redis]
addr = "127.0.0.1:1"
[agent]
id = "bench"
rpc-listen-addr = "127.0.0.1:{rpc}"
state-dir = "{workdir / 'state'}"
[container]
port-range = "{low}-{low + port_count}"
scratch-root = "{workdir / 'scratch'}"
kernel-uid = "agent"
[resource]
reserved-cpu = 0
reserved-mem = 0
[rpc]
token-file = "{token_file}"
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
    return proc, f"127.0.0.1:{rpc}", token


KERNEL = {"cpu": 0.02, "mem": 64 << 20}


def create(client: AgentClient) -> tuple[str, float]:
    started = time.perf_counter()
    result = client.call("create_kernels", kernels=[KERNEL])["kernels"][0]
    elapsed = time.perf_counter() - started
    if result["status"] != "running":
        raise RuntimeError(result.get("error"))
    return result["kernel_id"], elapsed


def main() -> int:
    if "--kubernetes" in sys.argv[1:]:  # the Kubernetes backend: its own measurement, agent_latency_kube.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from agent_latency_kube import kubernetes_main

        return kubernetes_main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=30)
    parser.add_argument("--executes", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-agent-bench-"))
    proc, address, token = start_agent(workdir, port_count=max(args.concurrent, 10) + 10)
    client = AgentClient(address, token, timeout=120)
    results: dict[str, object] = {"cpus": os.cpu_count()}
    try:
        # create -> ready (the RPC returns once the runner answers), then destroy
        create_times = []
        for _ in range(args.creates):
            kid, elapsed = create(client)
            create_times.append(elapsed)
            client.call("destroy_kernel", kernel_id=kid)
        results["create_ready"] = summary(create_times)

        # execute round-trip: client -> agent RPC -> runner -> back
        kid, _ = create(client)
        client.call("execute", kernel_id=kid, code="x = 0")
        exec_times = []
        for _ in range(args.executes):
            started = time.perf_counter()
            out = client.call("execute", kernel_id=kid, code="x += 1\nx")
            exec_times.append(time.perf_counter() - started)
        assert out["stdout"].strip() == str(args.executes)
        results["execute_roundtrip"] = summary(exec_times)
        client.call("destroy_kernel", kernel_id=kid)

        # N kernels created at once, each executes once, all destroyed
        with ThreadPoolExecutor(args.concurrent) as pool:
            started = time.perf_counter()
            created = list(pool.map(lambda _: create(client), range(args.concurrent)))
            wall_create = time.perf_counter() - started

            def run(kid: str) -> float:
                t0 = time.perf_counter()
                result = client.call("execute", kernel_id=kid, code="import os\nos.getpid()")
                if result["exit_code"] != 0:
                    raise RuntimeError(result)
                return time.perf_counter() - t0

            started = time.perf_counter()
            concurrent_exec = list(pool.map(run, [kid for kid, _ in created]))
            wall_exec = time.perf_counter() - started
            started = time.perf_counter()
            list(pool.map(lambda item: client.call("destroy_kernel", kernel_id=item[0]), created))
            wall_destroy = time.perf_counter() - started
        health = client.call("health")
        results["concurrent"] = {
            "kernels": args.concurrent,
            "create_wall_s": round(wall_create, 3), "create": summary([t for _, t in created]),
            "execute_wall_s": round(wall_exec, 3), "execute": summary(concurrent_exec),
            "destroy_wall_s": round(wall_destroy, 3), "kernels_left": health["kernels"],
        }
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
