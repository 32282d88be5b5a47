"""Xid-to-fence latency of the GPU health agent, against the emulated Kubernetes API.

    python benchmarks/health_fence_latency.py [--rounds 50] [--interval 300]
        [--outage 30] [--outage-rounds 3] [--outage-kind black-hole|refuse] [--request-timeout 10]

Starts the test emulator (tests/fixtures/kube_emulator.py) with one GPU node
and `gpufleet health run` as a separate process (simulated backend, the
Kubernetes sink pointed at the emulator, lightweight interval 300 s so only
the Xid path can be what fences). Each round injects a critical Xid (79) with
`gpufleet.gpu.simulated.inject` — what `gpufleet health inject` does — and
polls the emulator's store every millisecond until the node carries
`gpufleet.io/unhealthy`. Then it plays the operator (removes the taint and the
ownership record in the store) and simulates a reboot of the node, so the
next round starts clean.

Prints p50, p90, p99 and max; the target is p99 <= 1 s.

Then the outage rounds: the agent reaches the API through a loopback front
(tests/fixtures/api_switch.py) that turns into a black hole (accepts, never
answers; `--outage-kind refuse`: closes every connection, as a stopped API
server). Each round injects Xid 79 when the outage starts, keeps the API away
for `--outage` seconds, lets it answer again and times API recovery -> taint.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fixtures.api_switch import ApiSwitch  # noqa: E402
from fixtures.kube_api import EmulatedKubeApi, write_kubeconfig  # noqa: E402
from fixtures.kube_emulator import EmulatorThread  # noqa: E402
from gpufleet.gpu.simulated import inject  # noqa: E402

NODE = "gpu-bench-0"
UNHEALTHY = "gpufleet.io/unhealthy"
OWNED = "gpufleet.io/owned-taints"
ANNOTATION_FENCE = "gpufleet.io/health-fence"

CONFIG = """
interval = {interval}
periodic_interval = {periodic}
state_file = "{state}"
log_level = "error"
[backend]
type = "simulated"
node = "{node}"
fleet_spec = "{spec}"
faults = "{faults}"
[http]
address = "127.0.0.1"
port = 0
[kubernetes]
enabled = "{kube_enabled}"
kubeconfig = "{kubeconfig}"
request_timeout = {request_timeout}
"""


def start_agent(
    workdir: Path, kubeconfig: str | None, interval: float, request_timeout: float = 10.0
) -> tuple[subprocess.Popen, Path]:
    """`gpufleet health run` in its own process; returns it and its fault file."""
    spec, faults = workdir / "fleet.yaml", workdir / "faults.json"
    spec.write_text(f"nodes:\n  {NODE}: {{profile: h100-sxm-8}}\n")
    config = workdir / "health.toml"
    config.write_text(
        CONFIG.format(
            interval=interval,
            periodic=max(interval, 21600),
            state=workdir / "health.json",
            node=NODE,
            spec=spec,
            faults=faults,
            kube_enabled="true" if kubeconfig else "false",
            kubeconfig=kubeconfig or "",
            request_timeout=request_timeout,
        )
    )
    gpufleet = Path(sys.executable).with_name("gpufleet")
    command = (
        [str(gpufleet)]
        if gpufleet.exists()
        else [sys.executable, "-c", "from gpufleet.cli import main; main()"]
    )
    process = subprocess.Popen(
        command + ["health", "run", "--config", str(config)],
        env=dict(os.environ, GPUFLEET_SIM_FAULTS=str(faults)),
    )
    state = workdir / "health.json"
    deadline = time.monotonic() + 60
    while not state.exists():  # the first cycle is done when the state file appears
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the agent did not start")
        time.sleep(0.05)
    return process, faults


def stop(process: subprocess.Popen | None) -> None:
    """SIGTERM, as systemd stops the agent; wait for it to finish writing its state."""
    if process is not None and process.poll() is None:
        process.terminate()
        process.wait(15)


def fenced(api: EmulatedKubeApi) -> bool:
    return any(t.get("key") == UNHEALTHY for t in (api.get_node(NODE)["spec"].get("taints") or []))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--interval", type=float, default=300.0, help="the agent's lightweight interval")
    parser.add_argument("--timeout", type=float, default=10.0, help="give up on a round after this long")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the API is away per outage round")
    parser.add_argument("--outage-rounds", type=int, default=3, help="0: skip the outage rounds")
    parser.add_argument("--outage-kind", choices=("black-hole", "refuse"), default="black-hole")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="the agent's request_timeout")
    args = parser.parse_args()

    server = EmulatorThread().start()
    switch = ApiSwitch(server.url).start()
    process = None
    try:
        with tempfile.TemporaryDirectory(prefix="health-fence-", ignore_cleanup_errors=True) as tmp:
            workdir = Path(tmp)
            api = EmulatedKubeApi(server, write_kubeconfig(workdir / "kubeconfig", server.url))
            api.reset()
            api.add_node(NODE, gpus=8)
            agent_kubeconfig = write_kubeconfig(workdir / "agent.kubeconfig", switch.url)
            process, faults = start_agent(workdir, str(agent_kubeconfig), args.interval, args.request_timeout)
            latencies, missed = run_rounds(api, faults, args.rounds, args.timeout)
            report(
                f"Xid 79 -> taint {UNHEALTHY} on the node, API healthy, {len(latencies)} rounds "
                f"({missed} missed), agent interval {args.interval:.0f} s",
                latencies,
            )
            if args.outage_rounds:
                recoveries, missed = run_outages(api, switch, faults, args)
                report(
                    f"API recovery -> taint after a {args.outage:.0f} s {args.outage_kind} outage (Xid 79 "
                    f"injected as it started), {len(recoveries)} rounds ({missed} missed), "
                    f"request_timeout {args.request_timeout:.0f} s",
                    recoveries,
                )
            stop(process)
    finally:
        stop(process)
        switch.stop()
        server.stop()


def return_to_service(api: EmulatedKubeApi, faults: Path) -> None:
    """The operator returns the node to service after a reboot, so the next round starts clean."""
    api.update_object(
        "nodes",
        NODE,
        {"spec": {"taints": None}, "metadata": {"annotations": {OWNED: None, ANNOTATION_FENCE: None}}},
    )
    inject(faults, NODE, reboot=True)
    time.sleep(0.3)


def run_rounds(api: EmulatedKubeApi, faults: Path, rounds: int, timeout: float) -> tuple[list[float], int]:
    latencies, missed = [], 0
    for _ in range(rounds):
        api.clear_requests()
        started = time.perf_counter()
        inject(faults, NODE, gpu=3, xid=79, message="GPU has fallen off the bus.")
        while not fenced(api) and time.perf_counter() - started < timeout:
            time.sleep(0.001)
        if fenced(api):
            latencies.append(time.perf_counter() - started)
        else:
            missed += 1
        return_to_service(api, faults)
    return latencies, missed


def run_outages(api: EmulatedKubeApi, switch: ApiSwitch, faults: Path, args) -> tuple[list[float], int]:
    recoveries, missed = [], 0
    for _ in range(args.outage_rounds):
        time.sleep(1.0)  # the agent has published the return to service
        switch.black_hole() if args.outage_kind == "black-hole" else switch.refuse()
        inject(faults, NODE, gpu=3, xid=79, message="GPU has fallen off the bus.")
        time.sleep(args.outage)
        if fenced(api):
            raise SystemExit("the fence got through the outage: the switch does not work")
        switch.forward()
        answered = time.perf_counter()
        limit = 4 * args.request_timeout + 30
        while not fenced(api) and time.perf_counter() - answered < limit:
            time.sleep(0.002)
        if fenced(api):
            recoveries.append(time.perf_counter() - answered)
        else:
            missed += 1
        return_to_service(api, faults)
    return recoveries, missed


def report(title: str, seconds: list[float]) -> None:
    print(title)
    if not seconds:
        print("  no fence at all")
        return
    ms = [v * 1000 for v in seconds]
    print(f"  p50 {statistics.median(ms):8.1f} ms")
    print(f"  p90 {percentile(ms, 90):8.1f} ms")
    print(f"  p99 {percentile(ms, 99):8.1f} ms   (target <= 1000 ms with the API healthy)")
    print(f"  max {max(ms):8.1f} ms   min {min(ms):.1f} ms")

if __name__ == "__main__":
    main()
