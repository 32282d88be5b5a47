"""FGD's fragment measure, the replay protocol's arrival order, files and manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gpufleet.placement.fragmentation import TypicalTasks, fragment
from gpufleet.placement.model import Decision, Request
from gpufleet.placement.replay import arrival_order, replay
from gpufleet.placement.sources import cluster_from_dict, load_openb_pods, parse_memory_mib
from gpufleet.placement.workloads import existing_placement, placed_manifest, request_from_manifest


def test_typical_tasks_keep_the_most_frequent_until_the_coverage():
    requests = [Request(name=f"a{i}", num_gpu=1) for i in range(6)]
    requests += [Request(name=f"b{i}", cpu_milli=1000) for i in range(3)]
    requests += [Request(name="rare", num_gpu=2)]
    typical = TypicalTasks.from_requests(requests, coverage=0.9)
    assert len(typical) == 2  # 6 + 3 of 10 tasks reach 90%
    assert list(typical.probability) == pytest.approx([6 / 9, 3 / 9])


def test_fragment_by_hand():
    typical = TypicalTasks.from_requests(
        [Request(name="w", cpu_milli=4000, num_gpu=1), Request(name="c", cpu_milli=1000)]
    )
    table = typical.model_table(["A100"])
    states = np.array([[1000, 500], [1000, 500]])
    # cpu 2000: the GPU task cannot be placed (CPU) → all 1500 idle; CPU-only → 1500. → 1500
    # cpu 8000: the GPU task fits → only GPU 1 (500 < 1000) is fragment → ½·500 + ½·1500 = 1000
    result = fragment(typical, table, states, np.array([2000, 8000]), np.array([0, 0]))
    assert list(result) == pytest.approx([1500, 1000])


def test_arrival_order_inflates_to_130_percent_with_clones_at_the_end():
    pods = [Request(name=f"p{i}", num_gpu=1, sequence=i) for i in range(10)]  # 10 GPUs asked
    order = arrival_order(pods, seed=1, capacity_milli=10_000)
    assert sorted(r.name for r in order[:10]) == sorted(p.name for p in pods)
    assert all("-clone-" in r.name for r in order[10:])
    assert sum(r.gpu_total_milli for r in order) == 13_000
    assert [r.name for r in arrival_order(pods, 1, 10_000)] == [r.name for r in order]
    assert [r.name for r in arrival_order(pods, 2, 10_000)] != [r.name for r in order]


def test_arrival_order_trims_a_trace_that_asks_for_too_much():
    pods = [Request(name=f"p{i}", num_gpu=1) for i in range(20)]
    order = arrival_order(pods, seed=0, capacity_milli=10_000)
    assert sum(r.gpu_total_milli for r in order) == 13_000


def test_replay_on_a_tiny_cluster_reports_the_protocol_numbers():
    cluster = cluster_from_dict(
        {"nodes": [{"name": f"n{i}", "cpu": 64, "memory": "256Gi", "gpus": 2} for i in range(5)]}
    )
    pods = [
        Request(name=f"p{i:02d}", cpu_milli=4000, memory_mib=1024, num_gpu=1, gpu_milli=500)
        for i in range(20)
    ]
    result = replay(cluster, pods, "best_fit", seed=0)
    # 10 GPUs; 20 × 500 = 100%, inflated to 130% with clones; shares pack perfectly up to 100%.
    assert result["alloc_at_100"] == pytest.approx(100.0, abs=5.0)
    assert result["failed_tasks"] == 6  # the 30% beyond capacity
    assert 0 < result["alloc_at_130"] <= 100


def test_openb_pod_csv(tmp_path):
    path = tmp_path / "pods.csv"
    path.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\n"
        "p0,6000,12288,1,460,,LS\np1,88000,327680,8,1000,V100M16|V100M32,BE\np2,4000,1024,0,0,,BE\n"
    )
    pods = load_openb_pods(path)
    assert [(p.num_gpu, p.gpu_milli, p.gpu_models, p.priority) for p in pods] == [
        (1, 460, (), 2),
        (8, 1000, ("V100M16", "V100M32"), 0),
        (0, 0, (), 0),
    ]


def test_memory_quantities():
    assert parse_memory_mib("16Gi") == 16384
    assert parse_memory_mib("1000Mi") == 1000
    assert parse_memory_mib("1G") == 954  # 10^9 bytes, rounded up to MiB


def job(annotations=None, gpus=2):
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train", "namespace": "ml", "annotations": annotations or {}},
        "spec": {
            "template": {
                "spec": {
                    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "main",
                            "resources": {
                                "requests": {"cpu": "8", "memory": "32Gi"},
                                "limits": {"nvidia.com/gpu": str(gpus)},
                            },
                        },
                        {"name": "sidecar", "resources": {"requests": {"cpu": "500m"}}},
                    ],
                }
            }
        },
    }


def test_request_from_a_job_manifest():
    request = request_from_manifest(job({"gpufleet.io/priority": "7", "gpufleet.io/gpu-models": "H100|A100"}))
    assert request.name == "Job/ml/train"
    assert (request.cpu_milli, request.memory_mib, request.num_gpu, request.gpu_milli) == (
        8500,
        32768,
        2,
        1000,
    )
    assert request.gpu_models == ("A100", "H100")
    assert request.priority == 7
    assert request.tolerations[0].key == "dedicated"


def test_gpu_share_annotation():
    request = request_from_manifest(job({"gpufleet.io/gpu-milli": "250"}, gpus=0))
    assert (request.num_gpu, request.gpu_milli, request.is_share) == (1, 250, True)


def test_placed_manifest_pins_node_and_gpus():
    manifest = job()
    decision = Decision(
        request=request_from_manifest(manifest), node="gpu-3", gpus=(4, 5), score=88, strategy="fgd"
    )
    placed = placed_manifest(manifest, decision, visible_devices=True)
    template = placed["spec"]["template"]
    assert template["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "gpu-3"}
    assert template["metadata"]["annotations"]["gpufleet.io/assigned-gpus"] == "4,5"
    assert [c["env"] for c in template["spec"]["containers"]][0] == [
        {"name": "NVIDIA_VISIBLE_DEVICES", "value": "4,5"}
    ]
    assert json.loads(placed["metadata"]["annotations"]["gpufleet.io/placement"])["node"] == "gpu-3"
    assert existing_placement(placed)["gpus"] == [4, 5]
    assert existing_placement(manifest) is None
    assert "nodeSelector" not in manifest["spec"]["template"]["spec"]  # the input is not modified
    affinity = placed_manifest(manifest, decision, pin="node_affinity")["spec"]["template"]["spec"]
    term = affinity["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["gpu-3"]
    assert "env" not in affinity["containers"][0]
