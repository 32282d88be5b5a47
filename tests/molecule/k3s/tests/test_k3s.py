"""nvidia_runtime + k3s on a lab node, with a stand-in k3s binary (a shell script, see
files/fake-k3s.sh.j2): what the roles write and how they behave on later runs.

Extra runs of converge.yml go through the real ansible-playbook against the node,
with extra vars on top of vars/main.yml.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SCENARIO = Path(__file__).resolve().parents[1]
UPGRADE = SCENARIO.parents[2] / "playbooks" / "upgrade.yml"
EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
NODE = "gpufleet-mol-k3s-1"
UNIT = "/etc/systemd/system/k3s.service"
# An operator's config change for the restart tests (vars/main.yml has only the first label).
RELABELLED = ["gpufleet.io/lab=true", "rack=r1"]
NEXT_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"


def converge(*args: str, extra: dict | None = None,
             playbook: Path = SCENARIO / "converge.yml") -> tuple[int, dict]:
    """Run converge.yml (or another playbook) again; returns (exit code, json callback output)."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_NOCOLOR="1")
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook), *args]
    if extra:
        argv += ["-e", json.dumps(extra)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=SCENARIO, timeout=300)
    return proc.returncode, json.loads(proc.stdout[proc.stdout.index("{"):])


def task_results(output: dict, suffix: str) -> list[dict]:
    return [task["hosts"][NODE] for play in output["plays"] for task in play["tasks"]
            if task["task"]["name"].endswith(suffix) and NODE in task["hosts"]]


def invocation_id(host) -> str:
    return host.check_output("systemctl show -p InvocationID --value k3s.service")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- what the converge left on the node -----------------------------------------

def test_binary_is_the_verified_airgap_file(host):
    installed = host.file("/usr/local/bin/k3s")
    assert installed.mode == 0o755
    assert installed.sha256sum == sha256(EPHEMERAL / "airgap-good" / "k3s")
    listed = (EPHEMERAL / "airgap-good" / "sha256sum-amd64.txt").read_text()
    assert f"{installed.sha256sum}  k3s\n" in listed
    images = host.file("/var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar")
    assert images.sha256sum == sha256(EPHEMERAL / "airgap-good" / "k3s-airgap-images-amd64.tar")


def test_units_pass_systemd_analyze_verify(host):
    result = host.run(f"systemd-analyze verify {UNIT}")
    assert result.rc == 0, result.stderr
    assert "k3s.service" not in result.stderr, result.stderr


def test_k3s_runs_under_systemd_as_a_notify_service(host):
    service = host.service("k3s")
    assert service.is_enabled and service.is_running
    props = host.check_output("systemctl show -p Type -p ExecStart -p KillMode k3s.service")
    assert "Type=notify" in props and "KillMode=process" in props
    assert "/usr/local/bin/k3s server" in props.replace(" ; ", " ").replace("argv[]=", "")


def test_config_yaml_has_gpu_labels_runtime_and_is_private(host):
    config_file = host.file("/etc/rancher/k3s/config.yaml")
    assert config_file.mode == 0o600
    config = yaml.safe_load(config_file.content_string)
    assert config["node-label"] == ["gpufleet.io/lab=true", "nvidia.com/gpu.present=true"]
    assert config["default-runtime"] == "nvidia"
    assert config["tls-san"] == ["k3s.lab.example"]
    # One server on sqlite: no cluster-init, no server URL to join.
    assert "cluster-init" not in config and "server" not in config


def test_nvidia_manifests_are_in_the_auto_deploy_directory(host):
    manifests = "/var/lib/rancher/k3s/server/manifests"
    runtime_class = yaml.safe_load(host.file(f"{manifests}/gpufleet-nvidia-runtimeclass.yaml").content_string)
    assert runtime_class["kind"] == "RuntimeClass" and runtime_class["handler"] == "nvidia"
    plugin = yaml.safe_load(host.file(f"{manifests}/gpufleet-nvidia-device-plugin.yaml").content_string)
    pod = plugin["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["containers"][0]["image"] == "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"


def test_containerd_template_is_toml_and_keeps_cni(host):
    path = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl"
    cri = tomllib.loads(host.file(path).content_string)["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["cni"]["bin_dir"] == "{{ .NodeConfig.AgentConfig.CNIBinDir }}"
    assert cri["cni"]["conf_dir"] == "{{ .NodeConfig.AgentConfig.CNIConfDir }}"
    assert cri["containerd"]["default_runtime_name"] == "nvidia"


def test_docker_daemon_json_gains_the_runtime_and_keeps_site_keys(host):
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon == {"log-driver": "journald",
                      "runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime", "args": []}}}


def test_kubeconfig_merged_on_the_controller_under_the_context():
    kubeconfig = yaml.safe_load((EPHEMERAL / "kubeconfig").read_text())
    assert kubeconfig["current-context"] == "gpufleet-lab"
    [cluster] = [c for c in kubeconfig["clusters"] if c["name"] == "gpufleet-lab"]
    assert cluster["cluster"]["server"] == f"https://{NODE}:6443"
    [user] = [u for u in kubeconfig["users"] if u["name"] == "gpufleet-lab"]
    assert user["user"]["client-key-data"] == "RkFLRS1LRVk="
    assert (EPHEMERAL / "kubeconfig").stat().st_mode & 0o777 == 0o600


def test_extra_image_archive_is_copied_and_imported_once(host):
    archive = "gpufleet-diagnostics-stand-in.tar"
    copied = host.file(f"/var/lib/rancher/k3s/agent/images/{archive}")
    assert copied.mode == 0o644
    assert copied.sha256sum == sha256(EPHEMERAL / "images" / archive)
    # Imported into the running k3s by the first converge; the idempotence run did not import again.
    imported = host.file("/var/lib/rancher/k3s/agent/fake-images.list").content_string.splitlines()
    assert imported == ["localhost/gpufleet/diagnostics:0.1.0"]


READY = ("/usr/local/bin/k3s kubectl get node {node} "
         "-o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}'")


def test_readiness_is_the_nodes_real_state(host):
    """What upgrade.yml waits for: True only while k3s runs with its config (so that wait can fail)."""
    ready = READY.format(node=NODE)
    assert host.run(ready).stdout == "True"
    assert host.run(READY.format(node="another-node")).rc != 0  # not a node of this cluster
    host.run_expect([0], "mv /etc/rancher/k3s/config.yaml /etc/rancher/k3s/config.yaml.away")
    try:
        assert host.run(ready).stdout == "False"
    finally:
        host.run_expect([0], "mv /etc/rancher/k3s/config.yaml.away /etc/rancher/k3s/config.yaml")
    host.run_expect([0], "systemctl stop k3s")
    try:
        stopped = host.run(ready)
        assert stopped.rc != 0 and stopped.stdout != "True"
        assert "refused" in stopped.stderr
    finally:
        host.run_expect([0], "systemctl start k3s")
    assert host.run(ready).stdout == "True"


# --- later runs -------------------------------------------------------------------

def test_nvidia_runtime_without_gpu_skips_and_changes_nothing():
    rc, output = converge("--tags", "nvidia_runtime", extra={"nvidia_runtime_force": False})
    assert rc == 0
    assert output["stats"][NODE]["changed"] == 0
    [skip] = task_results(output, "Skip this node, which has no NVIDIA GPU")
    assert "no NVIDIA GPU found" in skip["msg"] and "Nothing was changed" in skip["msg"]
    [configure] = task_results(output, "Configure the NVIDIA container runtime")
    assert configure.get("skipped") is True


def test_airgap_binary_with_wrong_checksum_is_refused(host):
    before = invocation_id(host)
    installed = host.file("/usr/local/bin/k3s").sha256sum
    rc, output = converge("--tags", "k3s", extra={"k3s_airgap_dir": str(EPHEMERAL / "airgap-bad")})
    assert rc != 0
    assert output["stats"][NODE]["changed"] == 0
    [refusal] = task_results(output, "Refuse files whose sha256 does not match the release's list")
    assert refusal.get("failed"), "the mismatching binary was not refused"
    # Only the tampered binary is refused; the image archive matches its list entry.
    [message] = [item["msg"] for item in refusal["results"] if item.get("failed")]
    assert "refusing" in message and "airgap-bad/k3s:" in message
    assert "nothing was installed" in message
    assert host.file("/usr/local/bin/k3s").sha256sum == installed
    assert invocation_id(host) == before


def test_config_change_restarts_k3s(host):
    before = invocation_id(host)
    rc, output = converge("--tags", "k3s", extra={"k3s_node_labels": RELABELLED})
    assert rc == 0
    assert output["stats"][NODE]["changed"] >= 1
    [restart] = task_results(output, "Restart k3s")
    assert restart.get("changed") is True
    assert invocation_id(host) != before, "k3s was not restarted after its config changed"
    assert host.service("k3s").is_running
    assert "rack=r1" in host.file("/etc/rancher/k3s/config.yaml").content_string


def test_manifest_change_does_not_restart_k3s(host):
    # Same labels as the previous test (config unchanged); only a manifest differs.
    before = invocation_id(host)
    rc, output = converge("--tags", "k3s", extra={
        "k3s_node_labels": RELABELLED,
        "k3s_nvidia_device_plugin_image": NEXT_PLUGIN_IMAGE})
    assert rc == 0
    assert output["stats"][NODE]["changed"] == 1
    assert invocation_id(host) == before
    assert not [r for r in task_results(output, "Restart k3s") if r.get("changed")]
    plugin = host.file("/var/lib/rancher/k3s/server/manifests/gpufleet-nvidia-device-plugin.yaml")
    assert "k8s-device-plugin:v0.17.1" in plugin.content_string


def test_upgrade_playbook_replaces_the_binary_and_restarts_once(host):
    """Last: it leaves the node on the next (stand-in) release."""
    before = invocation_id(host)
    rc, output = converge("-e", f"@{SCENARIO / 'vars' / 'main.yml'}", playbook=UPGRADE, extra={
        "k3s_version": "v1.31.5+k3s1", "k3s_airgap_dir": str(EPHEMERAL / "airgap-next"),
        # The state the tests above left, so that only the release differs.
        "k3s_node_labels": RELABELLED, "k3s_nvidia_device_plugin_image": NEXT_PLUGIN_IMAGE})
    assert rc == 0
    [report] = task_results(output, "Report the versions")
    assert "running v1.31.4+k3s1" in report["msg"] and "target v1.31.5+k3s1" in report["msg"]
    assert host.file("/usr/local/bin/k3s").sha256sum == sha256(EPHEMERAL / "airgap-next" / "k3s")
    assert "k3s version v1.31.5+k3s1" in host.check_output("/usr/local/bin/k3s --version")
    # Only the binary changed: one restart, and the node was waited for.
    assert output["stats"][NODE]["changed"] == 1 + 1  # the binary, and its restart
    assert invocation_id(host) != before
    [ready] = task_results(output, "Wait until this node is Ready again")
    assert ready["stdout"] == "True"
