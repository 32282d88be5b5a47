"""node_diagnostics through ansible-playbook against the emulated API server."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.ansible, pytest.mark.integration]


def diagnostics_task(kube_api, **params):
    params.setdefault("name", "gpu-a")
    params.setdefault("poll_interval", 0.2)
    params["kubeconfig"] = kube_api.kubeconfig
    return {"name": "diagnose", "gpufleet.cluster.node_diagnostics": params}


def test_check_mode_returns_the_job_and_writes_nothing(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a", gpus=4)
    kube_api.clear_requests()
    result = ansible_playbook([diagnostics_task(kube_api, level=4)], check=True)
    assert result.returncode == 0, result.stdout
    task = result.task("diagnose")
    assert task["result"]["verdict"] == "pending"
    container = task["job"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:5] == ["gpufleet", "health", "check", "--level", "4"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert task["job"]["spec"]["template"]["spec"]["nodeName"] == "gpu-a"
    assert kube_api.writes() == []


def test_failed_job_returns_its_verdict_and_recommendation(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a", gpus=8)
    message = json.dumps({"verdict": "fail", "severity": "ISOLATE",
                          "findings": [{"check": "remapped_rows", "gpu": "3", "severity": "ISOLATE"}]})
    kube_api.start_job_controller(lambda job: (False, message))
    result = ansible_playbook([diagnostics_task(kube_api, level=2, timeout=60)])
    assert result.returncode == 0, result.stdout
    verdict = result.task("diagnose")["result"]
    outcome = (verdict["verdict"], verdict["severity"], verdict["recommendation"])
    assert outcome == ("fail", "ISOLATE", "replace")
    assert verdict["job"] == "kube-system/gpufleet-diag-gpu-a"
    job = kube_api.get_object("jobs", "gpufleet-diag-gpu-a", "kube-system")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][3:5] == ["--level", "2"]


def test_job_that_never_finishes_is_unknown(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    result = ansible_playbook([diagnostics_task(kube_api, timeout=1)])
    assert result.returncode == 0, result.stdout
    verdict = result.task("diagnose")["result"]
    assert verdict["verdict"] == "unknown" and verdict["recommendation"] is None
