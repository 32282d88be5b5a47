"""AWX's Kubernetes credential and module_defaults, against an emulator serving TLS and demanding a token.

AWX's "OpenShift or Kubernetes API Bearer Token" credential injects exactly K8S_AUTH_HOST,
K8S_AUTH_API_KEY, K8S_AUTH_VERIFY_SSL and K8S_AUTH_SSL_CA_CERT into the job's environment; no
kubeconfig exists in its execution environment.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ansible, pytest.mark.integration]

TAINT = {"key": "gpufleet.io/maintenance", "value": "awx", "effect": "NoSchedule"}


def awx_env(api, ca_cert=None, token=None) -> dict:
    return {"K8S_AUTH_HOST": api.url, "K8S_AUTH_API_KEY": token or api.token, "K8S_AUTH_VERIFY_SSL": "True",
            "K8S_AUTH_SSL_CA_CERT": ca_cert or api.ca_cert,
            # nothing else may supply credentials
            "KUBECONFIG": "", "K8S_AUTH_KUBECONFIG": ""}


def taint_task(name="taint") -> dict:
    return {"name": name, "ignore_errors": True,
            "gpufleet.cluster.node_taint": {"name": "gpu-a", "taints": [TAINT]}}


def test_awx_injected_variables_reach_the_api_token_and_ca(kube_api_tls, ansible_playbook):
    kube_api_tls.add_node("gpu-a")
    kube_api_tls.clear_requests()
    result = ansible_playbook([taint_task()], env=awx_env(kube_api_tls))
    outcome = result.task("taint")
    assert outcome.get("failed") is not True, outcome.get("msg")
    assert outcome["changed"] is True
    assert kube_api_tls.get_node("gpu-a")["spec"]["taints"] == [TAINT]
    requests = kube_api_tls.requests
    assert requests and all(r.headers.get("Authorization") == f"Bearer {kube_api_tls.token}"
                            for r in requests)
    assert all(r.headers.get("User-Agent", "").startswith("gpufleet/") for r in requests)
    assert kube_api_tls.token not in result.stdout  # never in the output


def test_a_ca_that_did_not_sign_the_server_is_refused(kube_api_tls, ansible_playbook):
    kube_api_tls.add_node("gpu-a")
    kube_api_tls.clear_requests()
    result = ansible_playbook([taint_task()], env=awx_env(kube_api_tls, ca_cert=kube_api_tls.other_ca))
    outcome = result.task("taint")
    assert outcome["failed"] is True and "CERTIFICATE_VERIFY_FAILED" in outcome["msg"], outcome["msg"]
    assert kube_api_tls.requests == []  # the TLS handshake failed: no request was made


def test_a_wrong_token_is_refused_by_the_api(kube_api_tls, ansible_playbook):
    kube_api_tls.add_node("gpu-a")
    result = ansible_playbook([taint_task()], env=awx_env(kube_api_tls, token="wrong"))
    outcome = result.task("taint")
    assert outcome["failed"] is True and outcome["status"] == 401
    assert "taints" not in kube_api_tls.get_node("gpu-a")["spec"]


def test_module_defaults_of_the_kubernetes_group_serve_ours_and_kubernetes_core(kube_api_tls,
                                                                                 ansible_playbook):
    kube_api_tls.add_node("gpu-a")
    auth = {"host": kube_api_tls.url, "api_key": kube_api_tls.token, "ca_cert": kube_api_tls.ca_cert,
            "validate_certs": True}
    block = {"name": "defaults", "module_defaults": {"group/gpufleet.cluster.kubernetes": auth}, "block": [
        taint_task(),
        {"name": "core", "ignore_errors": True,
         "kubernetes.core.k8s_info": {"kind": "Node", "name": "gpu-a"}},
    ]}
    result = ansible_playbook([block], env={"KUBECONFIG": "", "K8S_AUTH_KUBECONFIG": ""})
    assert result.task("taint").get("failed") is not True, result.task("taint").get("msg")
    assert kube_api_tls.get_node("gpu-a")["spec"]["taints"] == [TAINT]
    core = result.task("core")
    assert core.get("failed") is not True, core.get("msg")
    assert [r["metadata"]["name"] for r in core["resources"]] == ["gpu-a"]
