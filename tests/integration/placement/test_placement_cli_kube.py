"""`gpufleet place nodes/plan/submit` against the emulated API server."""

from __future__ import annotations

import json

import pytest
from test_placement_cli import gpufleet

pytestmark = [pytest.mark.integration]

INVENTORY = json.dumps(
    [
        {
            "index": i,
            "uuid": f"GPU-{i}",
            "model": "H100",
            "memory_mib": 81559,
            "health": "fail" if i == 7 else "pass",
            "nvlink_peers": [i ^ 1],
        }
        for i in range(8)
    ]
)


@pytest.fixture
def cluster(kube_api, tmp_path):
    kube_api.add_node("gpu-a", annotations={"gpufleet.io/gpus": INVENTORY})
    kube_api.add_node("gpu-b", labels={"gpufleet.io/health": "fail"})
    kube_api.add_pod("busy", node="gpu-a", gpus=2, cpu="4", annotations={"gpufleet.io/assigned-gpus": "0,1"})
    kube_api.add_pod("done", node="gpu-a", gpus=4, phase="Succeeded")
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: one, namespace: default}\n"
        "spec:\n  containers:\n  - name: main\n    image: busybox\n"
        "    resources: {limits: {nvidia.com/gpu: '1'}, requests: {cpu: '1'}}\n"
    )
    return kube_api, jobs


def test_nodes_table_reads_the_api(cluster):
    kube_api, _ = cluster
    result = gpufleet("nodes", "--kubeconfig", kube_api.kubeconfig, "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["node"]: row for row in json.loads(result.stdout)}
    # gpu-a: GPUs 0,1 used by "busy" (the finished pod does not count), GPU 7 failed → 5 free
    assert (rows["gpu-a"]["used"], rows["gpu-a"]["free"], rows["gpu-a"]["model"]) == (2, 5, "H100")
    assert rows["gpu-b"]["schedulable"] is False
    table = gpufleet("nodes", "--kubeconfig", kube_api.kubeconfig)
    assert "gpu-b" in table.stdout and "(not schedulable)" in table.stdout


def test_plan_writes_nothing_and_submit_creates(cluster):
    kube_api, jobs = cluster
    kube_api.clear_requests()
    plan = gpufleet("plan", str(jobs), "--kubeconfig", kube_api.kubeconfig, "--json")
    assert plan.returncode == 0, plan.stderr
    decision = json.loads(plan.stdout)["placements"][0]
    # topology tie-break/GPU rule: GPU 6's NVLink peer (7) is failed, so 6 keeps the pairs 2-3, 4-5 whole
    assert (decision["node"], decision["gpus"], decision["action"]) == ("gpu-a", [6], "would create")
    assert kube_api.writes() == []
    submit = gpufleet("submit", str(jobs), "--kubeconfig", kube_api.kubeconfig, "--strategy", "topology")
    assert submit.returncode == 0, submit.stderr
    assert "node gpu-a GPUs 6" in submit.stdout
    pod = kube_api.get_pod("one")
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "gpu-a"}
    assert pod["metadata"]["annotations"]["gpufleet.io/assigned-gpus"] == "6"
