"""The gpu_health_agent role gives each node's agent the ServiceAccount gpufleet-health.

The role's kubernetes.yml runs through the real ansible-playbook on this machine, with a
stand-in `k3s` on PATH (no Kubernetes binary here) that answers the token read the way k3s
would once it has applied the manifest: only when the manifest is in its auto-deploy
directory. The token it hands out is the ServiceAccount's in the API emulator, which
authorizes by that same manifest — so the agent that fences through the written kubeconfig
proves the whole path: manifest, token, kubeconfig, RBAC.
"""

from __future__ import annotations

import base64
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml
from gpufleet.gpu.simulated import inject
from gpufleet.health.config import config_from_dict
from gpufleet.health.daemon import HealthAgent

pytestmark = [pytest.mark.integration, pytest.mark.ansible]

ROLE = Path(__file__).resolve().parents[3] / "roles" / "gpu_health_agent"

FAKE_K3S = """#!/bin/sh
# k3s kubectl -n NS get secret gpufleet-health-token -o jsonpath=...: answered once the manifest is applied.
if [ "$1 $2 $3 $4 $5 $6" != "kubectl -n {namespace} get secret gpufleet-health-token" ]; then
  echo "fake k3s: $*" >&2; exit 2
fi
if [ ! -f "{manifests}/gpufleet-health-rbac.yaml" ]; then
  echo 'secrets "gpufleet-health-token" not found' >&2; exit 1
fi
printf '%s %s' '{token}' '{ca}'
"""


def run_identity_tasks(ansible_playbook, tmp_path: Path, kube_api, manifests: Path, namespace="kube-system"):
    """The role's kubernetes.yml with k3s_server = localhost; returns (result, kubeconfig path, token)."""
    kubeconfig = tmp_path / "health-kubeconfig.yaml"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # The emulator learns the token when the test registers the applied manifest (below).
    token = f"sa-token-{os.getpid()}-{len(list(tmp_path.iterdir()))}"
    fake = bin_dir / "k3s"
    fake.write_text(
        FAKE_K3S.format(
            namespace=namespace,
            manifests=manifests,
            token=base64.b64encode(token.encode()).decode(),
            ca=base64.b64encode(b"not-a-ca").decode(),
        )
    )
    fake.chmod(0o755)
    # The task file itself, with the role's defaults and templates (found beside the play):
    # include_role would also run the role's dependency (gpufleet_install) on this machine.
    if not (tmp_path / "templates").exists():
        (tmp_path / "templates").symlink_to(ROLE / "templates")
    tasks = [
        {
            "name": "The role's defaults",
            "ansible.builtin.include_vars": {"file": str(ROLE / "defaults" / "main.yml")},
        },
        {
            "name": "The role's identity tasks",
            "ansible.builtin.include_tasks": {"file": str(ROLE / "tasks" / "kubernetes.yml")},
        },
        {
            "name": "What the agent config would use",
            "ansible.builtin.copy": {
                "content": "{{ gpu_health_agent_kubeconfig_in_use | default(gpu_health_agent_kubeconfig) }}",
                "dest": str(tmp_path / "in-use.txt"),
                "mode": "0644",
            },
        },
    ]
    # The role's handler restarts the unit, which this machine does not have: this one notes the restart.
    handlers = [
        {
            "name": "Restart gpufleet-health",
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
                    "gather_facts": False,
                    "vars": {"ansible_python_interpreter": sys.executable},
                    "tasks": tasks,
                    "handlers": handlers,
                }
            ],
            sort_keys=False,
        )
    )
    result = ansible_playbook(
        play,
        extra_vars={
            "gpu_health_agent_k3s_server_group": "servers",
            "gpu_health_agent_k3s_manifests_dir": str(manifests),
            "gpu_health_agent_sa_kubeconfig": str(kubeconfig),
            "gpu_health_agent_kube_api_url": kube_api.url,
            "gpu_health_agent_kube_namespace": namespace,
        },
        inventory=str(write_inventory(tmp_path)),
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
        secrets={token},
    )
    return result, kubeconfig, token


def write_inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"servers": {"hosts": {"localhost": None}}}}}))
    return path


def test_the_role_writes_a_kubeconfig_the_agent_fences_with(ansible_playbook, tmp_path, kube_api):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    result, kubeconfig, token = run_identity_tasks(ansible_playbook, tmp_path, kube_api, manifests)
    assert result.returncode == 0, result.stdout[-3000:]

    manifest = (manifests / "gpufleet-health-rbac.yaml").read_text()
    kinds = [d["kind"] for d in yaml.safe_load_all(manifest) if d]
    assert kinds == ["ServiceAccount", "Secret", "ClusterRole", "ClusterRoleBinding"]
    written = yaml.safe_load(kubeconfig.read_text())
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    assert written["users"][0]["user"]["token"] == token
    assert written["clusters"][0]["cluster"]["server"] == kube_api.url
    assert (tmp_path / "in-use.txt").read_text() == str(kubeconfig)
    assert (tmp_path / "restarted").exists()

    # k3s applies the manifest: its ServiceAccount's token now means exactly what it grants.
    from fixtures.kube_rbac import service_account_identity

    kube_api.emulator.identities[token] = service_account_identity(manifest, "kube-system", "gpufleet-health")
    del written["clusters"][0]["cluster"]["certificate-authority-data"]  # the emulator speaks plain HTTP
    kubeconfig.write_text(yaml.safe_dump(written))
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


def test_without_k3s_on_the_server_the_configured_kubeconfig_stays(ansible_playbook, tmp_path, kube_api):
    result, kubeconfig, _ = run_identity_tasks(ansible_playbook, tmp_path, kube_api, tmp_path / "no-such-dir")
    assert result.returncode == 0, result.stdout[-3000:]
    assert not kubeconfig.exists()
    assert (tmp_path / "in-use.txt").read_text() == "/etc/rancher/k3s/k3s.yaml"
    assert not (tmp_path / "restarted").exists()
    message = result.task("Say why the agent keeps its configured kubeconfig")
    assert "k3s not running there?" in str(message)
