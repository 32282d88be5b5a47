"""`gpufleet place status | workloads | generate-template | watch | strategy` against the emulator."""

from __future__ import annotations

import json
import threading

import pytest
import yaml
from click.testing import CliRunner
from fixtures.infra_services import wait_until as wait_for
from fixtures.kube_api import pod_object
from gpufleet.kube.api import KubeApi
from gpufleet.placement.cli import place
from gpufleet.placement.serve import DEFAULT_POLICY, GpuScheduler, ServeConfig

pytestmark = [pytest.mark.integration]


def wait_until(predicate, what):
    return wait_for(predicate, 120, what)


def run(*args):
    result = CliRunner().invoke(place, list(args), catch_exceptions=False)
    return result


@pytest.fixture
def scheduler(kube_api):
    stop = threading.Event()
    config = ServeConfig(identity="cli-test", backoff_initial=0.2)
    instance = GpuScheduler(KubeApi(kube_api.api_client), config)
    thread = threading.Thread(target=instance.run, args=(stop,), daemon=True)
    thread.start()
    yield instance
    stop.set()
    thread.join(30)


def test_a_generated_template_is_placed_and_shown_by_status_and_workloads(kube_api, scheduler):
    kube_api.add_node("gpu-0", gpus=8)
    kube_api.add_node("gpu-1", gpus=8, taints=[{"key": "gpufleet.io/unhealthy", "value": "RESET",
                                                "effect": "NoSchedule"}])
    generated = run("generate-template", "--name", "demo", "--replicas", "2", "--gpus", "2", "--gang")
    assert generated.exit_code == 0
    manifest = yaml.safe_load(generated.output)
    kube_api.add_object("GPUWorkload", manifest)
    wait_until(lambda: ((kube_api.get_object("GPUWorkload", "demo", "default") or {}).get("status") or {})
               .get("phase") == "Placed", "the generated workload placed")

    status = run("status", "--kubeconfig", kube_api.kubeconfig, "--json")
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    assert data["leader"] == "cli-test"
    assert data["pods"] == {"bound": 2, "pending": 0, "unschedulable": 0}
    assert data["nodes"]["fenced"] == ["gpu-1"]
    assert data["gpus"]["usable"] == 16 and data["gpus"]["allocation_ratio"] == 0.25
    assert data["workloads"] == {"Placed": 1}
    assert "leader cli-test" in run("status", "--kubeconfig", kube_api.kubeconfig).output

    rows = json.loads(run("workloads", "--kubeconfig", kube_api.kubeconfig, "--json").output)
    assert [(r["name"], r["placed"], r["replicas"], r["phase"]) for r in rows] == [("demo", 2, 2, "Placed")]
    assert {p["node"] for p in rows[0]["placements"]} == {"gpu-0"}
    table = run("workloads", "--kubeconfig", kube_api.kubeconfig).output
    assert "demo" in table and "2/2" in table


def test_watch_follows_binding_and_refusal(kube_api, scheduler):
    kube_api.add_node("gpu-0", gpus=1)
    for name, gpus in (("fits", 1), ("too-big", 4)):
        pod = pod_object(name, gpus=gpus, phase="Pending")
        pod["spec"]["schedulerName"] = "gpufleet"
        kube_api.add_object("pods", pod)
    wait_until(lambda: (kube_api.get_pod("fits") or {}).get("spec", {}).get("nodeName"), "a binding")
    wait_until(lambda: any(c.get("reason") == "Unschedulable" for c in
                           (kube_api.get_pod("too-big") or {}).get("status", {}).get("conditions") or []),
               "a refusal")
    out = run("watch", "--kubeconfig", kube_api.kubeconfig, "--seconds", "2").output
    assert "default/fits: bound to gpu-0 GPUs 0" in out
    assert "default/too-big: unschedulable: 0/1 nodes are available" in out


def test_errors_are_one_line_not_tracebacks(kube_api):
    result = run("status", "--kubeconfig", kube_api.kubeconfig, "--lease", "kube-system/x")
    assert result.exit_code == 0  # no lease yet: no leader, still a status
    gone = run("workloads", "--kubeconfig", kube_api.kubeconfig)
    assert gone.exit_code == 0
    bad = CliRunner().invoke(place, ["strategy", "fgd+nope"])
    assert bad.exit_code == 2 and "unknown strategy nope" in bad.output
    assert f"default: {DEFAULT_POLICY}" in run("strategy").output
    unreachable = CliRunner().invoke(place, ["status", "--kubeconfig", str(write_unreachable(kube_api))])
    assert unreachable.exit_code == 1 and "the Kubernetes API" in unreachable.output
    assert "Traceback" not in unreachable.output


def write_unreachable(kube_api):
    from pathlib import Path

    path = Path(kube_api.kubeconfig).with_name("unreachable")
    config = yaml.safe_load(Path(kube_api.kubeconfig).read_text())
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:1"
    path.write_text(yaml.safe_dump(config))
    return path
