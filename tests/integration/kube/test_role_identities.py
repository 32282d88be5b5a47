"""Each service role gives its service a ServiceAccount of its own (role k3s_service_account).

The role's identity tasks run through the real ansible-playbook on this machine, with a stand-in
`k3s` on PATH (no Kubernetes binary here) that answers the token read the way k3s would once it
has applied the manifest: only when the manifest is in its auto-deploy directory. The token it
hands out is the ServiceAccount's in the API emulator, which authorizes by that same manifest —
so a service using the written kubeconfig proves the whole path: manifest, token, kubeconfig,
RBAC.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fixtures.kube_rbac import service_account_identity
from gpufleet.gpu.simulated import inject
from gpufleet.health.config import config_from_dict
from gpufleet.health.daemon import HealthAgent
from gpufleet.kube.api import KubeApi, KubeError, api_error_message
from gpufleet.kube.client import api_client
from kubernetes.client.rest import ApiException

pytestmark = [pytest.mark.integration, pytest.mark.ansible]

ROLES = Path(__file__).resolve().parents[3] / "roles"

FAKE_K3S = """#!/bin/sh
# k3s kubectl -n NS get secret NAME -o jsonpath=...: answered once the manifest is applied.
if [ "$1 $2 $3 $4 $5 $6" != "kubectl -n {namespace} get secret {secret}" ]; then
  echo "fake k3s: $*" >&2; exit 2
fi
if [ ! -f "{manifest}" ]; then
  echo 'secrets "{secret}" not found' >&2; exit 1
fi
printf '%s %s' '{token}' '{ca}'
"""


@dataclass(frozen=True)
class ServiceIdentity:
    role: str
    tasks: str  # the role's task file that makes the identity
    namespace: str
    account: str
    manifest: str  # its file name in k3s's auto-deploy directory
    kubeconfig_var: str  # where the role writes the kubeconfig
    in_use_var: str  # the fact the service's config then reads ("" : the kubeconfig var itself)
    handler: str
    settings: dict  # the role's variables pointing at the server, its directory and the API

    def variables(self, manifests: Path, kubeconfig: Path, api_url: str) -> dict:
        return {
            key: value.format(manifests=manifests, api=api_url) for key, value in self.settings.items()
        } | {self.kubeconfig_var: str(kubeconfig)}


HEALTH = ServiceIdentity(
    "gpu_health_agent",
    "kubernetes.yml",
    "kube-system",
    "gpufleet-health",
    "gpufleet-health-rbac.yaml",
    "gpu_health_agent_sa_kubeconfig",
    "gpu_health_agent_kubeconfig_in_use",
    "Restart gpufleet-health",
    {
        "gpu_health_agent_k3s_server_group": "servers",
        "gpu_health_agent_k3s_manifests_dir": "{manifests}",
        "gpu_health_agent_kube_api_url": "{api}",
    },
)
SCHEDULER = ServiceIdentity(
    "gpu_scheduler",
    "identity.yml",
    "kube-system",
    "gpufleet-scheduler",
    "gpufleet-scheduler-rbac.yaml",
    "gpu_scheduler_sa_kubeconfig",
    "gpu_scheduler_kubeconfig_in_use",
    "Restart gpufleet-scheduler",
    {"gpu_scheduler_k3s_manifests_dir": "{manifests}", "gpu_scheduler_kube_api_url": "{api}"},
)
KERNEL_AGENT = ServiceIdentity(
    "kernel_agent",
    "kubernetes.yml",
    "gpufleet-kernels",
    "gpufleet-agent",
    "gpufleet-kernel-agent.yaml",
    "kernel_agent_kubeconfig",
    "",
    "Restart gpufleet-agent",
    {
        "kernel_agent_k3s_server_group": "servers",
        "kernel_agent_k3s_manifests_dir": "{manifests}",
        "kernel_agent_kube_api_url": "{api}",
    },
)


def run_identity_tasks(
    ansible_playbook,
    tmp_path: Path,
    kube_api,
    service: ServiceIdentity,
    manifests: Path,
    api_url: str | None = None,
):
    """The role's identity tasks with the k3s server = localhost; returns (result, kubeconfig, token)."""
    kubeconfig = tmp_path / f"{service.account}.kubeconfig"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    token = f"sa-token-{service.account}-{os.getpid()}"
    fake = bin_dir / "k3s"
    fake.write_text(
        FAKE_K3S.format(
            namespace=service.namespace,
            secret=f"{service.account}-token",
            manifest=manifests / service.manifest,
            token=base64.b64encode(token.encode()).decode(),
            ca=base64.b64encode(b"not-a-ca").decode(),
        )
    )
    fake.chmod(0o755)
    role = ROLES / service.role
    in_use = f"{{{{ {service.in_use_var} | default('') }}}}" if service.in_use_var else ""
    # The task file itself, with the role's defaults: include_role would also run the role's
    # dependency (gpufleet_install) on this machine.
    tasks = [
        {
            "name": "The role's defaults",
            "ansible.builtin.include_vars": {"file": str(role / "defaults" / "main.yml")},
        },
        {
            "name": "The role's identity tasks",
            "ansible.builtin.include_tasks": {"file": str(role / "tasks" / service.tasks)},
        },
        {
            "name": "What the service's config would use",
            "ansible.builtin.copy": {"content": in_use, "dest": str(tmp_path / "in-use.txt"), "mode": "0644"},
        },
    ]
    # The role's handler restarts the unit, which this machine does not have: this one notes the restart.
    handlers = [
        {
            "name": service.handler,
            "ansible.builtin.copy": {
                "content": "restarted",
                "dest": str(tmp_path / "restarted"),
                "mode": "0644",
            },
        }
    ]
    play = tmp_path / "identity.yml"
    play.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "identity",
                    "hosts": "servers",
                    "gather_facts": api_url == "",  # the default URLs read the server's facts
                    # role_path: what Ansible sets when the file runs in its role
                    "vars": {"ansible_python_interpreter": sys.executable, "role_path": str(role)},
                    "tasks": tasks,
                    "handlers": handlers,
                }
            ],
            sort_keys=False,
        )
    )
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"servers": {"hosts": {"localhost": None}}}}}))
    result = ansible_playbook(
        play,
        extra_vars=service.variables(manifests, kubeconfig, kube_api.url if api_url is None else api_url),
        inventory=str(inventory),
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
        secrets={token},
    )
    return result, kubeconfig, token


def applied(kube_api, service: ServiceIdentity, manifests: Path, kubeconfig: Path, token: str) -> KubeApi:
    """k3s applies the manifest: the token now means exactly what it grants. A client of the kubeconfig."""
    manifest = (manifests / service.manifest).read_text()
    kube_api.emulator.identities[token] = service_account_identity(
        manifest, service.namespace, service.account
    )
    written = yaml.safe_load(kubeconfig.read_text())
    del written["clusters"][0]["cluster"]["certificate-authority-data"]  # the emulator speaks plain HTTP
    kubeconfig.write_text(yaml.safe_dump(written))
    return KubeApi(api_client(kubeconfig=str(kubeconfig)))


def refused(call) -> str:
    with pytest.raises((ApiException, KubeError)) as error:
        call()
    assert getattr(error.value, "status", None) == 403
    return api_error_message(error.value)


@pytest.mark.parametrize("service", [HEALTH, SCHEDULER, KERNEL_AGENT], ids=lambda s: s.role)
def test_the_role_writes_its_manifest_and_a_kubeconfig_with_the_token(
    ansible_playbook, tmp_path, kube_api, service
):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    result, kubeconfig, token = run_identity_tasks(ansible_playbook, tmp_path, kube_api, service, manifests)
    assert result.returncode == 0, result.stdout[-3000:]

    documents = [d for d in yaml.safe_load_all((manifests / service.manifest).read_text()) if d]
    assert {"kind": "ServiceAccount", "name": service.account} in [
        {"kind": d["kind"], "name": d["metadata"]["name"]} for d in documents
    ]
    written = yaml.safe_load(kubeconfig.read_text())
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    assert written["users"][0]["user"]["token"] == token
    assert written["clusters"][0]["cluster"]["server"] == kube_api.url
    if service.in_use_var:
        assert (tmp_path / "in-use.txt").read_text() == str(kubeconfig)
    assert (tmp_path / "restarted").exists()

    api = applied(kube_api, service, manifests, kubeconfig, token)
    kube_api.add_node("gpu-1")
    assert api.get_node("gpu-1")["metadata"]["name"] == "gpu-1"  # every one of them reads nodes
    assert refused(lambda: api.delete_node("gpu-1")) == (
        f'nodes "gpu-1" is forbidden: User "system:serviceaccount:{service.namespace}:{service.account}" '
        'cannot delete resource "nodes" in API group "" at the cluster scope'
    )


def test_the_health_agent_fences_through_the_kubeconfig_its_role_wrote(ansible_playbook, tmp_path, kube_api):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    result, kubeconfig, token = run_identity_tasks(ansible_playbook, tmp_path, kube_api, HEALTH, manifests)
    assert result.returncode == 0, result.stdout[-3000:]
    applied(kube_api, HEALTH, manifests, kubeconfig, token)
    kube_api.add_node("gpu-1")
    spec, faults = tmp_path / "fleet.yaml", tmp_path / "faults.json"
    spec.write_text(yaml.safe_dump({"nodes": {"gpu-1": {"profile": "h100-sxm-8"}}}))
    inject(faults, "gpu-1", gpu=0, xid=79)
    agent = HealthAgent(
        config_from_dict(
            {
                "state_file": str(tmp_path / "state.json"),
                "backend": {
                    "type": "simulated",
                    "node": "gpu-1",
                    "fleet_spec": str(spec),
                    "faults": str(faults),
                },
                "kubernetes": {"kubeconfig": str(kubeconfig), "enabled": "true"},
                "http": {"address": "127.0.0.1", "port": 0},
            },
            source="test",
        )
    )
    agent.cycle()
    node = kube_api.get_node("gpu-1")
    assert [t["value"] for t in node["spec"]["taints"] if t["key"] == "gpufleet.io/unhealthy"] == ["REBOOT"]
    assert all(r.headers.get("Authorization") == f"Bearer {token}" for r in kube_api.requests)


def test_without_k3s_on_the_server_the_health_agent_keeps_its_kubeconfig(
    ansible_playbook, tmp_path, kube_api
):
    result, kubeconfig, _ = run_identity_tasks(
        ansible_playbook, tmp_path, kube_api, HEALTH, tmp_path / "nowhere"
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert not kubeconfig.exists() and not (tmp_path / "restarted").exists()
    assert (
        tmp_path / "in-use.txt"
    ).read_text() == ""  # health.toml falls back to gpu_health_agent_kubeconfig
    assert "k3s not running there?" in str(result.task("Say why the agent keeps its configured kubeconfig"))


def test_the_kubernetes_backend_without_k3s_is_refused_with_the_reason(ansible_playbook, tmp_path, kube_api):
    result, kubeconfig, _ = run_identity_tasks(
        ansible_playbook, tmp_path, kube_api, KERNEL_AGENT, tmp_path / "nowhere"
    )
    assert result.returncode != 0
    assert "kernel_agent_backend is kubernetes" in str(
        result.task("Refuse the kubernetes backend without k3s")
    )
    assert not kubeconfig.exists()


@pytest.mark.parametrize(
    "service, expected",
    [(HEALTH, r"https://localhost:6443"), (KERNEL_AGENT, r"https://\d+\.\d+\.\d+\.\d+:6443")],
    ids=["gpu_health_agent", "kernel_agent"],
)
def test_the_default_api_url_names_the_first_k3s_server(
    ansible_playbook, tmp_path, kube_api, service, expected
):
    """No URL set: the health agent's names k3s_api_host or the server's inventory host, the kernel
    agent's the server's default IPv4 address (a fact), both on 6443."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    result, kubeconfig, _ = run_identity_tasks(
        ansible_playbook, tmp_path, kube_api, service, manifests, api_url=""
    )
    assert result.returncode == 0, result.stdout[-3000:]
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    assert re.fullmatch(expected, server), server
