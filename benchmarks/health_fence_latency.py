"""Xid-to-fence latency of the GPU health agent, against the emulated Kubernetes API.

    python benchmarks/health_fence_latency.py [--rounds 50] [--interval 300]

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

from fixtures.kube_api import EmulatedKubeApi, write_kubeconfig  # noqa: E402
from fixtures.kube_emulator import EmulatorThread  # noqa: E402
from gpufleet.gpu.simulated import inject  # noqa: E402

NODE = "gpu-bench-0"
UNHEALTHY = "gpufleet.io/unhealthy"
OWNED = "gpufleet.io/owned-taints"

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
"""


def start_agent(workdir: Path, kubeconfig: str | None, interval: float) -> tuple[subprocess.Popen, Path]:
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
    args = parser.parse_args()

    server = EmulatorThread().start()
    process = None
    try:
        with tempfile.TemporaryDirectory(prefix="health-fence-", ignore_cleanup_errors=True) as tmp:
            workdir = Path(tmp)
            api = EmulatedKubeApi(server, write_kubeconfig(workdir / "kubeconfig", server.url))
            api.reset()
            api.add_node(NODE, gpus=8)
            process, faults = start_agent(workdir, api.kubeconfig, args.interval)
            latencies, missed = [], 0
            for _ in range(args.rounds):
                api.clear_requests()
                started = time.perf_counter()
                inject(faults, NODE, gpu=3, xid=79, message="GPU has fallen off the bus.")
                while not fenced(api) and time.perf_counter() - started < args.timeout:
                    time.sleep(0.001)
                if fenced(api):
                    latencies.append(time.perf_counter() - started)
                else:
                    missed += 1
                # the operator returns the node to service after a reboot
                api.update_object(
                    "nodes", NODE, {"spec": {"taints": None}, "metadata": {"annotations": {OWNED: None}}}
                )
                inject(faults, NODE, reboot=True)
                time.sleep(0.2)
            if not latencies:
                raise SystemExit("the node was never fenced")
            ms = [v * 1000 for v in latencies]
            print(
                f"Xid 79 -> taint {UNHEALTHY} on the node, {len(ms)} rounds ({missed} missed), "
                f"agent interval {args.interval:.0f} s"
            )
            print(f"  p50 {statistics.median(ms):7.1f} ms")
            print(f"  p90 {percentile(ms, 90):7.1f} ms")
            print(f"  p99 {percentile(ms, 99):7.1f} ms   (target <= 1000 ms)")
            print(f"  max {max(ms):7.1f} ms   min {min(ms):.1f} ms")
            stop(process)
    finally:
        stop(process)
        server.stop()


if __name__ == "__main__":
    main()
