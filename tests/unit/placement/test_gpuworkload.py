"""GPUWorkload: validation, the pods it asks for, its status, and the CRD that ships for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from gpufleet.kube.api import GPU_WORKLOADS
from gpufleet.placement import gpuworkload

ROOT = Path(__file__).resolve().parents[3]


def workload(**spec):
    base = {"replicas": 2, "gpusPerReplica": 1,
            "template": {"spec": {"containers": [{"name": "main", "image": "x",
                                                  "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}}}
    base.update(spec)
    return {"apiVersion": "gpufleet.io/v1alpha1", "kind": "GPUWorkload",
            "metadata": {"name": "w", "namespace": "ml", "uid": "u-1"}, "spec": base}


@pytest.mark.parametrize(("spec", "field"), [
    ({"replicas": 0}, "spec.replicas"),
    ({"replicas": "3"}, "spec.replicas"),
    ({"gpusPerReplica": -1}, "spec.gpusPerReplica"),
    ({"gpuMilli": 1000}, "spec.gpuMilli"),
    ({"gpuMilli": 500, "gpusPerReplica": 2}, "spec.gpuMilli"),
    ({"gang": "yes"}, "spec.gang"),
    ({"gpuModels": ["A100|H100"]}, "spec.gpuModels"),
    ({"template": {"spec": {"containers": []}}}, "spec.template.spec.containers"),
])
def test_bad_specs_are_refused_naming_the_field(spec, field):
    with pytest.raises(gpuworkload.WorkloadError, match=field.replace(".", r"\.")):
        gpuworkload.validate(workload(**spec))


def test_pods_get_gpus_only_through_the_resource_and_carry_the_placement_hints():
    pods = gpuworkload.pods_for(workload(gpuMilli=250, gpusPerReplica=0, gpuModels=["A100"], priority=7,
                                         gang=True, strategy="best_fit"), "gpufleet")
    assert [p["metadata"]["name"] for p in pods] == ["w-0", "w-1"]
    pod = pods[0]
    assert pod["spec"]["schedulerName"] == "gpufleet"
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert pod["metadata"]["annotations"] == {
        "gpufleet.io/priority": "7", "gpufleet.io/gpu-milli": "250", "gpufleet.io/gpu-models": "A100",
        "gpufleet.io/strategy": "best_fit", "gpufleet.io/gang": "w", "gpufleet.io/gang-size": "2"}
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_status_follows_the_pods():
    w = workload(replicas=2)
    bound = {"metadata": {"name": "w-0", "annotations": {"gpufleet.io/assigned-gpus": "3"}},
             "spec": {"nodeName": "n1"}}
    pending = {"metadata": {"name": "w-1"}, "spec": {}}
    status = gpuworkload.status_for(w, [bound, pending], unschedulable="no node fits")
    assert status["phase"] == "PartiallyPlaced" and status["placements"] == [
        {"pod": "w-0", "node": "n1", "gpus": [3]}]
    assert status["conditions"][0]["reason"] == "Unschedulable"
    assert not gpuworkload.status_differs(status, gpuworkload.with_transition_time(dict(status), None))
    done = gpuworkload.status_for(w, [bound, {**pending, "spec": {"nodeName": "n2"}}])
    assert done["phase"] == "Placed" and gpuworkload.status_differs(status, done)


def test_the_shipped_crd_names_what_the_scheduler_reads():
    crd = yaml.safe_load((ROOT / "roles/gpu_scheduler/templates/gpuworkload-crd.yaml.j2").read_text())
    group, version = GPU_WORKLOADS.api_version.split("/")
    assert crd["spec"]["group"] == group
    assert crd["spec"]["names"]["plural"] == GPU_WORKLOADS.plural
    assert crd["spec"]["names"]["kind"] == GPU_WORKLOADS.kind
    assert [v["name"] for v in crd["spec"]["versions"]] == [version]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert {"replicas", "gpusPerReplica", "gpuMilli", "gpuModels", "priority", "strategy", "gang",
            "template"} == set(schema)
