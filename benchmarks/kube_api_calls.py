"""API calls per node made by fleet_health_info and node_taint, on an emulated fleet.

    python benchmarks/kube_api_calls.py [--nodes 1000] [--module-sample 20]

Starts the test emulator (tests/fixtures/kube_emulator.py) with N GPU nodes
that already carry the maintenance taint (owned by gpufleet.cluster), then:

1. runs `fleet_health_info` through ansible-playbook once: expected ONE
   request (GET /api/v1/nodes), never one per node;
2. runs `node_taint` (state=present, the taint the nodes already have) through
   ansible-playbook on a sample of nodes: expected one GET and no write each;
3. calls gpufleet.kube.nodes.set_taints (what node_taint runs) for every node,
   to cover the whole fleet without paying Ansible's start-up per node.

Prints requests by method, calls per node and wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fixtures.ansible_runner import run_playbook  # noqa: E402
from fixtures.kube_api import EmulatedKubeApi, write_kubeconfig  # noqa: E402
from fixtures.kube_emulator import EmulatorThread  # noqa: E402
from gpufleet.kube.api import KubeApi  # noqa: E402
from gpufleet.kube.nodes import set_taints  # noqa: E402

TAINT = {"key": "gpufleet.io/maintenance", "value": "sweep", "effect": "NoSchedule"}
OWNED = json.dumps({"gpufleet.io/maintenance:NoSchedule": "gpufleet.cluster"})


def summarize(label: str, requests, nodes: int, seconds: float) -> None:
    by_method = Counter(r.method for r in requests)
    writes = sum(n for m, n in by_method.items() if m != "GET")
    node_gets = sum(1 for r in requests if r.method == "GET" and r.path.startswith("/api/v1/nodes/"))
    lists = sum(1 for r in requests if r.method == "GET" and r.path == "/api/v1/nodes")
    print(f"{label}:")
    print(f"  nodes covered        {nodes}")
    print(f"  requests             {len(requests)}  {dict(by_method)}")
    print(f"  node LISTs           {lists}")
    print(f"  per-node GETs        {node_gets}")
    print(f"  writes               {writes}")
    print(f"  calls per node       {len(requests) / max(nodes, 1):.3f}")
    print(f"  writes per node      {writes / max(nodes, 1):.3f}")
    print(f"  wall time            {seconds:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument(
        "--module-sample",
        type=int,
        default=20,
        help="nodes to run the node_taint module on through ansible-playbook",
    )
    args = parser.parse_args()

    server = EmulatorThread().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
            kube = EmulatedKubeApi(server, kubeconfig)
            kube.reset()
            for index in range(args.nodes):
                kube.add_node(
                    f"gpu-{index:04d}",
                    taints=[TAINT],
                    labels={"gpufleet.io/health": "pass"},
                    annotations={"gpufleet.io/owned-taints": OWNED},
                )
            print(f"emulated fleet: {args.nodes} GPU nodes at {server.url}\n")

            kube.clear_requests()
            started = time.perf_counter()
            result = run_playbook(
                [{"name": "info", "gpufleet.cluster.fleet_health_info": {"kubeconfig": str(kubeconfig)}}],
                tmp_path,
            )
            elapsed = time.perf_counter() - started
            reported = len(result.task("info")["nodes"])
            summarize(
                f"fleet_health_info (module, reported {reported} nodes)", kube.requests, args.nodes, elapsed
            )

            sample = [f"gpu-{index:04d}" for index in range(min(args.module_sample, args.nodes))]
            kube.clear_requests()
            started = time.perf_counter()
            result = run_playbook(
                [
                    {
                        "name": "taint",
                        "loop": sample,
                        "gpufleet.cluster.node_taint": {
                            "kubeconfig": str(kubeconfig),
                            "name": "{{ item }}",
                            "taints": [TAINT],
                        },
                    }
                ],
                tmp_path,
            )
            elapsed = time.perf_counter() - started
            changed = sum(1 for r in result.task("taint")["results"] if r["changed"])
            summarize(
                f"\nnode_taint (module via ansible-playbook, taint already present, {changed} changed)",
                kube.requests,
                len(sample),
                elapsed,
            )

            api = KubeApi(kube.api_client)
            kube.clear_requests()
            started = time.perf_counter()
            changed = sum(
                set_taints(api, f"gpu-{index:04d}", [TAINT], owner="gpufleet.cluster").changed
                for index in range(args.nodes)
            )
            elapsed = time.perf_counter() - started
            summarize(
                f"\nnode_taint logic (gpufleet.kube.nodes.set_taints) on every node, {changed} changed",
                kube.requests,
                args.nodes,
                elapsed,
            )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
