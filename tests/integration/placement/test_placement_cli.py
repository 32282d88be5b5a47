"""`gpufleet place replay` and `place bench` run through the real command on a small sample."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[3]
# The openb trace is not in the repository: CI clones `shared` beside the checkout.
# OPENB_DATA points elsewhere (e.g. from a git worktree).
OPENB = Path(os.environ.get("OPENB_DATA") or REPO.parent / "shared" / "data" / "openb")


def openb_trace() -> Path:
    """The trace directory; in CI (CI=true) its absence is a failure, elsewhere a skip."""
    if not OPENB.is_dir():
        message = f"the openb trace is not at {OPENB} (clone `shared` beside the checkout, or set OPENB_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return OPENB
GPUFLEET = shutil.which("gpufleet") or str(Path(sys.executable).with_name("gpufleet"))


def gpufleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GPUFLEET, "place", *args], capture_output=True, text=True, timeout=240, check=False
    )


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory) -> tuple[Path, Path]:
    """An openb-format trace: 120 nodes (2/4/8 GPUs, two models) and ~400 pods filling them."""
    rng = random.Random(42)
    folder = tmp_path_factory.mktemp("openb")
    nodes, pods = folder / "nodes.csv", folder / "pods.csv"
    gpu_total = 0
    with nodes.open("w") as out:
        out.write("sn,cpu_milli,memory_mib,gpu,model\n")
        for i in range(120):
            gpus = rng.choice([2, 4, 8])
            gpu_total += gpus
            out.write(f"node-{i:03d},{16000 * gpus},{65536 * gpus},{gpus},{rng.choice(['T4', 'V100'])}\n")
    with pods.open("w") as out:
        out.write("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\n")
        asked, i = 0, 0
        while asked < gpu_total * 1000:
            kind = rng.random()
            if kind < 0.1:
                num, milli = 0, 0
            elif kind < 0.45:
                num, milli = 1, rng.choice([250, 300, 500, 750])
            elif kind < 0.85:
                num, milli = 1, 1000
            else:
                num, milli = rng.choice([2, 4, 8]), 1000
            out.write(f"pod-{i:04d},{rng.choice([2000, 4000, 8000])},{8192},{num},{milli},,LS\n")
            asked += num * milli
            i += 1
    return nodes, pods


def replay(nodes: Path, pods: Path, policy: str, *extra: str) -> dict:
    result = gpufleet(
        "replay", "--nodes", str(nodes), "--pods", str(pods), "--policy", policy, "--json", *extra
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_replay_reports_the_protocol_numbers(small_trace):
    nodes, pods = small_trace
    result = replay(nodes, pods, "fgd", "--seed", "3")
    for key in (
        "alloc_at_100",
        "alloc_at_130",
        "frag_ratio_at_100",
        "frag_ratio_at_130",
        "failed_tasks",
        "tasks",
    ):
        assert key in result
    assert 0 < result["alloc_at_100"] <= 100
    assert result["alloc_at_100"] <= result["alloc_at_130"] <= 100
    assert 0 <= result["frag_ratio_at_100"] <= 100
    assert 0 < result["failed_tasks"] < result["tasks"]  # 130% arrival cannot all fit
    assert result["final_arrived_pct"] == pytest.approx(130, abs=0.5)
    assert result["seed"] == 3 and result["policy"] == "fgd"
    again = replay(nodes, pods, "fgd", "--seed", "3")
    assert again["alloc_at_100"] == result["alloc_at_100"]  # deterministic for a seed


def test_best_fit_and_fgd_beat_random(small_trace):
    nodes, pods = small_trace
    seeds = ("--seed", "0", "--seed", "1", "--seed", "2")

    def mean(policy: str) -> float:
        runs = replay(nodes, pods, policy, *seeds)
        assert [r["seed"] for r in runs] == [0, 1, 2]
        return sum(r["alloc_at_100"] for r in runs) / len(runs)

    baseline = mean("random")
    assert mean("best_fit") >= baseline
    assert mean("fgd") >= baseline


def test_replay_a_sample_of_openb():
    trace = openb_trace()
    result = replay(
        trace / "openb_node_list_gpu_node.csv",
        trace / "openb_pod_list_default.csv",
        "best_fit",
        "--sample",
        "150",
    )
    assert result["nodes"] == 150
    assert 50 < result["alloc_at_100"] <= 100


def test_bench_reports_decisions_per_second():
    result = gpufleet(
        "bench",
        "--nodes",
        "300",
        "--gpus-per-node",
        "8",
        "--decisions",
        "200",
        "--strategy",
        "best_fit",
        "--strategy",
        "fgd",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["strategy"] for row in rows] == ["best_fit", "fgd"]
    for row in rows:
        assert row["decisions"] == 200 and row["nodes"] == 300
        assert row["decisions_per_second"] > 0 and row["warm_decisions_per_second"] > 0
        assert 0 < row["placed"] <= 200
        assert 40 <= row["initial_gpu_allocation_pct"] <= 60  # "half full"
    table = gpufleet("bench", "--nodes", "50", "--decisions", "20", "--strategy", "binpack")
    assert table.returncode == 0 and "binpack" in table.stdout
