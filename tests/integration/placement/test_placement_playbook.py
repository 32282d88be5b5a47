"""playbooks/placement.yml (the AWX placement job template) against the emulator."""

from __future__ import annotations

import json

import pytest
import yaml
from fixtures.ansible_runner import REPO

pytestmark = [pytest.mark.ansible, pytest.mark.integration]


def gpu_inventory(count: int) -> str:
    return json.dumps([{"index": i, "uuid": f"GPU-{i}", "model": "NVIDIA-H100-80GB-HBM3", "memory_mib": 81559,
                        "health": "pass", "nvlink_peers": []} for i in range(count)])


def pod_manifest(name: str, gpus: int) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                                     "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}


def test_survey_text_manifest_is_placed_on_the_node_with_room(kube_api, ansible_playbook):
    kube_api.add_node("gpu-full", gpus=8, annotations={"gpufleet.io/gpus": gpu_inventory(8)})
    kube_api.add_node("gpu-free", gpus=8, annotations={"gpufleet.io/gpus": gpu_inventory(8)})
    kube_api.add_pod("busy", node="gpu-full", gpus=8)
    # AWX surveys hand the manifest over as text (a textarea)
    result = ansible_playbook(REPO / "playbooks" / "placement.yml", extra_vars={
        "workload": yaml.safe_dump(pod_manifest("train", 2)), "strategy": "best_fit",
        "gpufleet_kubeconfig": kube_api.kubeconfig})
    assert result.returncode == 0, result.stdout[-3000:]
    pod = kube_api.get_pod("train")
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "gpu-free"}
    report = result.task("Report where each workload went")["msg"]
    assert len(report) == 1 and report[0].endswith("-> gpu-free") and "train" in report[0]


def test_missing_workload_fails_with_the_variable_to_set(kube_api, ansible_playbook):
    result = ansible_playbook(REPO / "playbooks" / "placement.yml",
                              extra_vars={"gpufleet_kubeconfig": kube_api.kubeconfig})
    assert result.returncode != 0
    assert "-e workload=" in result.stdout
