"""The RBAC the roles ship is enough for each service, and no more.

Each service runs against the API emulator with only the token of the ServiceAccount its
role's manifest creates; the emulator authorizes every request by that manifest's
Roles/ClusterRoles and bindings and answers 403 (kube-apiserver's words) to the rest. A
verb missing from a manifest therefore fails here as it would on a cluster, where an
admin kubeconfig would have hidden it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml
from fixtures.infra_services import wait_until
from fixtures.kube_api import pod_object
from fixtures.kube_rbac import role_manifest
from gpufleet.gpu.simulated import inject
from gpufleet.health.config import config_from_dict
from gpufleet.health.daemon import HealthAgent
from gpufleet.kube.api import KubeApi, KubeError, api_error_message
from gpufleet.kube.client import api_client
from gpufleet.placement.serve import GpuScheduler, ServeConfig
from kubernetes.client.rest import ApiException

pytestmark = [pytest.mark.integration]



def health_manifest(namespace: str = "kube-system") -> str:
    return role_manifest(
        "gpu_health_agent", "gpufleet-health-rbac.yaml.j2", gpu_health_agent_kube_namespace=namespace
    )


def without_rule(manifest: str, resource: str) -> str:
    """The manifest with every rule naming `resource` dropped from its ClusterRoles."""
    documents = [d for d in yaml.safe_load_all(manifest) if d]
    for document in documents:
        if document["kind"] == "ClusterRole":
            document["rules"] = [r for r in document["rules"] if resource not in r.get("resources", [])]
    return yaml.safe_dump_all(documents)


def health_agent(tmp_path: Path, node: str, kubeconfig: str) -> HealthAgent:
    spec, faults = tmp_path / "fleet.yaml", tmp_path / "faults.json"
    spec.write_text(yaml.safe_dump({"nodes": {node: {"profile": "h100-sxm-8"}}}))
    if not faults.exists():
        faults.write_text("{}")
    return HealthAgent(
        config_from_dict(
            {
                "interval": 5,
                "state_file": str(tmp_path / f"{node}.state.json"),
                "backend": {
                    "type": "simulated",
                    "node": node,
                    "fleet_spec": str(spec),
                    "faults": str(faults),
                    "keeper_window": 0,
                },
                "kubernetes": {"kubeconfig": kubeconfig, "enabled": "true", "lift_after": 1},
                "http": {"address": "127.0.0.1", "port": 0},
            },
            source="test",
        )
    )


def refusal(exc: Exception) -> str:
    return api_error_message(exc) if isinstance(exc, ApiException) else str(exc)


def fence_taints(node: dict) -> list[str]:
    return [t["value"] for t in node["spec"].get("taints") or [] if t["key"] == "gpufleet.io/unhealthy"]


def gpu_condition(node: dict) -> str | None:
    return next(
        (c["status"] for c in node["status"].get("conditions") or [] if c["type"] == "GpuHealthy"), None
    )


def event_reasons(kube_api) -> list[str]:
    return [
        e["reason"]
        for e in sorted(kube_api.list_objects("events.events.k8s.io"), key=lambda e: e["eventTime"])
    ]


def test_the_health_agent_fences_and_lifts_with_only_its_service_account(kube_api, tmp_path):
    kubeconfig = kube_api.service_account_kubeconfig(
        tmp_path / "health.kubeconfig", health_manifest(), "kube-system", "gpufleet-health"
    )
    kube_api.add_node("gpu-1")
    agent = health_agent(tmp_path, "gpu-1", kubeconfig)
    inject(tmp_path / "faults.json", "gpu-1", gpu=3, settings={"remapped_rows.pending": True})

    agent.cycle()
    node = kube_api.get_node("gpu-1")
    assert fence_taints(node) == ["RESET"]
    assert node["metadata"]["labels"]["gpufleet.io/fenced"] == "true"
    assert gpu_condition(node) == "False"
    assert event_reasons(kube_api) == ["GpuFenced"]
    # The pods on the node (what intensive checks wait for) are readable under the same identity.
    assert KubeApi(api_client(kubeconfig=kubeconfig)).list_pods_on_node("gpu-1") == []

    inject(tmp_path / "faults.json", "gpu-1", clear=True)
    agent.cycle()
    node = kube_api.get_node("gpu-1")
    assert fence_taints(node) == [] and gpu_condition(node) == "True"
    assert event_reasons(kube_api) == ["GpuFenced", "GpuFenceLifted"]


def test_without_its_status_rule_the_condition_is_refused_as_a_cluster_would(kube_api, tmp_path):
    """The check above is not vacuous: drop one rule and the emulator refuses that write."""
    kubeconfig = kube_api.service_account_kubeconfig(
        tmp_path / "health.kubeconfig",
        without_rule(health_manifest(), "nodes/status"),
        "kube-system",
        "gpufleet-health",
    )
    kube_api.add_node("gpu-1")
    api = KubeApi(api_client(kubeconfig=kubeconfig))
    with pytest.raises((ApiException, KubeError)) as refused:
        api.patch_node_status("gpu-1", {"status": {"conditions": []}})
    assert getattr(refused.value, "status", None) == 403
    assert refusal(refused.value) == (
        'nodes "gpu-1" is forbidden: User "system:serviceaccount:kube-system:gpufleet-health" cannot patch '
        'resource "nodes/status" in API group "" at the cluster scope'
    )


@pytest.mark.parametrize(
    "call, verb_and_resource",
    [
        (lambda api: api.delete_node("gpu-1"), 'cannot delete resource "nodes"'),
        (
            lambda api: api.request("GET", "/api/v1/namespaces/kube-system/secrets"),
            'cannot list resource "secrets"',
        ),
        (
            lambda api: api.request("DELETE", "/api/v1/namespaces/default/pods/p1"),
            'cannot delete resource "pods"',
        ),
        (lambda api: api.request("GET", "/api/v1/namespaces/default/pods/p1"), 'cannot get resource "pods"'),
    ],
)
def test_the_health_agent_identity_can_do_nothing_else(kube_api, tmp_path, call, verb_and_resource):
    kubeconfig = kube_api.service_account_kubeconfig(
        tmp_path / "health.kubeconfig", health_manifest(), "kube-system", "gpufleet-health"
    )
    kube_api.add_node("gpu-1")
    kube_api.add_pod("p1", node="gpu-1")
    with pytest.raises((ApiException, KubeError)) as refused:
        call(KubeApi(api_client(kubeconfig=kubeconfig)))
    assert getattr(refused.value, "status", None) == 403
    assert verb_and_resource in refusal(refused.value)
    assert kube_api.get_node("gpu-1") is not None and kube_api.get_pod("p1") is not None


def test_the_scheduler_binds_and_places_workloads_with_only_its_service_account(kube_api, tmp_path):
    manifest = role_manifest(
        "gpu_scheduler",
        "gpufleet-scheduler-rbac.yaml.j2",
        gpu_scheduler_lease="kube-system/gpufleet-scheduler",
    )
    kubeconfig = kube_api.service_account_kubeconfig(
        tmp_path / "scheduler.kubeconfig", manifest, "kube-system", "gpufleet-scheduler"
    )
    for i in range(2):
        kube_api.add_node(f"gpu-{i}", gpus=8)
    for name, gpus in (("single", 2), ("too-big", 16)):
        pod = pod_object(name, gpus=gpus, phase="Pending")
        pod["spec"]["schedulerName"] = "gpufleet"
        kube_api.add_object("pods", pod, "default")
    kube_api.add_object(
        "GPUWorkload",
        {
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "GPUWorkload",
            "metadata": {"name": "train", "namespace": "default"},
            "spec": {
                "replicas": 2,
                "gpusPerReplica": 4,
                "gang": True,
                "template": {"spec": {"containers": [{"name": "main", "image": "busybox:stable"}]}},
            },
        },
    )

    scheduler = GpuScheduler(
        KubeApi(api_client(kubeconfig=kubeconfig)),
        ServeConfig(identity="sched-rbac", seed=1, backoff_initial=0.2, backoff_max=1.0),
    )
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
    thread.start()
    try:

        def placed():
            pods = {p["metadata"]["name"]: p for p in kube_api.list_objects("pods", "default")}
            status = (kube_api.get_object("GPUWorkload", "train", "default") or {}).get("status") or {}
            refused = [
                e
                for e in kube_api.list_objects("events.events.k8s.io", "default")
                if e.get("reason") == "FailedScheduling" and e["regarding"]["name"] == "too-big"
            ]
            return (
                pods["single"]["spec"].get("nodeName")
                and status.get("phase") == "Placed"
                and refused
                and all(pods.get(f"train-{i}", {}).get("spec", {}).get("nodeName") for i in range(2))
            )

        wait_until(placed, 120, "the pod bound, the workload placed and the misfit refused with an Event")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    # It led through its Lease, which only its Role allows it to hold.
    lease = kube_api.get_object("Lease", "gpufleet-scheduler", "kube-system")
    assert lease["spec"]["holderIdentity"] in ("sched-rbac", None, "")
