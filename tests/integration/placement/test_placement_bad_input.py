"""Bad input to `gpufleet place replay/plan` is refused at the edge: one line on stderr
naming the file, the place in it and the fault, exit code 2, no traceback, and no
placement made from a half-read input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

GPUFLEET = shutil.which("gpufleet") or str(Path(sys.executable).with_name("gpufleet"))
NODES_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"
PODS_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\n"
GOOD_NODES = NODES_HEADER + "".join(f"node-{i},64000,262144,8,V100\n" for i in range(4))
GOOD_PODS = PODS_HEADER + "".join(f"pod-{i:02d},4000,8192,1,1000,,LS\n" for i in range(40))
CLUSTER = "nodes:\n  - {name: gpu-a, cpu: 64, memory: 256Gi, gpus: 8}\n"


def run(tmp_path: Path, files: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return subprocess.run([GPUFLEET, "place", *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, check=False)


def replay(tmp_path: Path, nodes: str = GOOD_NODES, pods: str = GOOD_PODS, *extra: str):
    return run(tmp_path, {"nodes.csv": nodes, "pods.csv": pods},
               "replay", "--nodes", "nodes.csv", "--pods", "pods.csv", *extra)


def plan(tmp_path: Path, workloads: str, cluster: str = CLUSTER, *extra: str):
    return run(tmp_path, {"work.yaml": workloads, "cluster.yaml": cluster},
               "plan", "work.yaml", "--cluster", "cluster.yaml", *extra)


def assert_refused(proc: subprocess.CompletedProcess, *expected: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert proc.stdout == "", "nothing is printed as a result of a refused input"


REPLAY_CASES = {
    "negative GPU request": (
        dict(pods=PODS_HEADER + "pod-a,4000,8192,1,1000,,LS\npod-b,4000,8192,-2,1000,,LS\n"),
        ["pods.csv line 3", "num_gpu is -2; it cannot be negative"]),
    "negative CPU request": (
        dict(pods=PODS_HEADER + "pod-a,-4000,8192,1,1000,,LS\n"),
        ["pods.csv line 2", "cpu_milli is -4000; it cannot be negative"]),
    "node with -1 GPUs": (
        dict(nodes=NODES_HEADER + "node-a,64000,262144,8,V100\nnode-b,64000,262144,-1,V100\n"),
        ["nodes.csv line 3", "gpu is -1; it cannot be negative"]),
    "short pod row": (
        dict(pods=PODS_HEADER + "pod-a,4000,8192,1,1000,,LS\npod-b,4000,8192\n"),
        ["pods.csv line 3", "3 fields, the header has 7"]),
    "short node row": (
        dict(nodes=NODES_HEADER + "node-a,64000,262144\n"),
        ["nodes.csv line 2", "3 fields, the header has 5"]),
    "non-numeric cell": (
        dict(pods=PODS_HEADER + "pod-a,4000,8192,two,1000,,LS\n"),
        ["pods.csv line 2", "num_gpu 'two' is not a whole number"]),
    "non-numeric node cell": (
        dict(nodes=NODES_HEADER + "node-a,64 cores,262144,8,V100\n"),
        ["nodes.csv line 2", "cpu_milli '64 cores' is not a whole number"]),
    "header-only pod file": (
        dict(pods=PODS_HEADER),
        ["pods.csv: no pods in it, only a header"]),
    "header-only node file": (
        dict(nodes=NODES_HEADER),
        ["nodes.csv: no nodes in it, only a header"]),
    "node list passed as pods": (
        dict(pods=GOOD_NODES),
        ["pods.csv: not an openb pod list (it is an openb node list)", "name, num_gpu, gpu_milli"]),
    "zero-size request": (
        dict(pods=PODS_HEADER + "pod-a,4000,8192,1,1000,,LS\npod-empty,0,0,0,0,,LS\n"),
        ["pods.csv line 3", "pod-empty asks for nothing"]),
    "GPU share over one GPU": (
        dict(pods=PODS_HEADER + "pod-a,4000,8192,1,1500,,LS\n"),
        ["pods.csv line 2", "gpu_milli 1500 is more than one GPU"]),
    "more GPUs than any node": (
        dict(pods=PODS_HEADER + "pod-a,4000,8192,1,1000,,LS\npod-huge,4000,8192,16,1000,,LS\n"),
        ["pod-huge asks for 16 GPUs; the largest node of nodes.csv has 8"]),
    "more CPU than any node": (
        dict(pods=PODS_HEADER + "pod-a,128000,8192,1,1000,,LS\n"),
        ["pod-a asks for 128000 milli-CPU; the largest node of nodes.csv has 64000"]),
    "GPU share without a GPU": (
        dict(pods=PODS_HEADER + "pod-a,4000,8192,0,500,,LS\n"),
        ["pods.csv line 2", "gpu_milli 500 without a GPU"]),
    "trace too small to reach 100% arrival": (
        # One 8-GPU node, one 3-GPU task: arrivals go 37.5%, 75%, 112.5% - never "100%".
        dict(nodes=NODES_HEADER + "node-a,64000,262144,8,V100\n",
             pods=PODS_HEADER + "pod-a,4000,8192,3,1000,,LS\n"),
        ["the replay never reached 100% arrival", "too small"]),
}


@pytest.mark.parametrize("case", REPLAY_CASES, ids=str)
def test_replay_refuses(tmp_path, case):
    files, expected = REPLAY_CASES[case]
    proc = replay(tmp_path, **files)
    assert_refused(proc, *expected)
    assert "None%" not in proc.stdout + proc.stderr


def test_replay_refuses_an_unknown_policy(tmp_path):
    proc = replay(tmp_path, GOOD_NODES, GOOD_PODS, "--policy", "fgd+fastest")
    assert_refused(proc, "unknown policy 'fgd+fastest' ('fastest')", "best_fit")


def test_replay_of_the_good_files_passes(tmp_path):
    """The files the cases above spoil are themselves accepted (each refusal is the fault's)."""
    proc = replay(tmp_path, GOOD_NODES, GOOD_PODS, "--policy", "best_fit")
    assert proc.returncode == 0, proc.stderr
    assert "allocation 100.0% at 100% arrival" in proc.stdout
    # 32 GPUs taken one at a time: arrivals step from 128.1% to 131.3%, so 130% is never hit.
    assert "n/a (not reached) at 130%" in proc.stdout and "None" not in proc.stdout


PLAN_CASES = {
    "negative GPU request": (
        dict(workloads="requests:\n  - {name: w, cpu: 4, gpus: -2}\n"),
        ["work.yaml workload 1", "num_gpu is -2; it cannot be negative"]),
    "negative CPU request": (
        dict(workloads="requests:\n  - {name: w, cpu: -4, gpus: 1}\n"),
        ["work.yaml workload 1", "cpu_milli is -4000; it cannot be negative"]),
    "zero-size request": (
        dict(workloads="requests:\n  - {name: w, cpu: 4, gpus: 1}\n  - {name: idle}\n"),
        ["work.yaml workload 2", "idle asks for nothing"]),
    "more GPUs than any node": (
        dict(workloads="requests:\n  - {name: big, cpu: 4, gpus: 16}\n"),
        ["big asks for 16 GPUs; the largest node of cluster.yaml has 8"]),
    "broken YAML workloads": (
        dict(workloads="requests:\n  - {name: w, cpu: 4\n  - gpus: 1\n"),
        ["work.yaml line", "not valid YAML"]),
    "broken YAML cluster": (
        dict(workloads="requests:\n  - {name: w, cpu: 4, gpus: 1}\n", cluster="nodes: [\n  {name: a\n"),
        ["cluster.yaml line", "not valid YAML"]),
    "node with -1 GPUs": (
        dict(workloads="requests:\n  - {name: w, cpu: 4, gpus: 1}\n",
             cluster="nodes:\n  - {name: gpu-a, cpu: 64, gpus: -1}\n"),
        ["cluster.yaml node 1: gpus is -1; it cannot be negative"]),
    "node list passed as workloads": (
        dict(workloads=CLUSTER),
        ["work.yaml workload 1: a cluster file (nodes), not workloads"]),
    "empty workload file": (
        dict(workloads="# nothing\n"),
        ["work.yaml: no workloads in it"]),
}


@pytest.mark.parametrize("case", PLAN_CASES, ids=str)
def test_plan_refuses(tmp_path, case):
    files, expected = PLAN_CASES[case]
    assert_refused(plan(tmp_path, **files), *expected)


def test_plan_refuses_an_unknown_strategy(tmp_path):
    proc = plan(tmp_path, "requests:\n  - {name: w, cpu: 4, gpus: 1}\n", CLUSTER, "--strategy", "fastest")
    assert_refused(proc, "unknown policy 'fastest+topology' ('fastest')")


def test_plan_of_a_good_request_passes(tmp_path):
    proc = plan(tmp_path, "requests:\n  - {name: w, cpu: 4, gpus: 2}\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("w: node gpu-a GPUs")
