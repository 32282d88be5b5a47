"""The kubernetes backend against the Kubernetes API emulator.

The test plays kubelet: once the agent created pod kernel-<kid>, it starts the
runner the pod would run (from the scratch the pod mounts) on 127.0.0.1 and
marks the pod Running and Ready with that pod IP. So the whole path — manifest,
readiness wait, pod UID, execute through the runner, cleanup — is exercised.
"""

import asyncio
import subprocess
import sys

import pytest
from agent_helpers import make_config
from gpufleet.agent.backends.kubernetes import KubernetesBackend, pod_manifest
from gpufleet.agent.core import Agent
from gpufleet.agent.protocol.codec import KernelLifecycleEventReason

pytestmark = pytest.mark.integration
NAMESPACE = "gpufleet-kernels"


@pytest.fixture
def k8s_config(tmp_path, kube_api):
    kube_api.add_object("Namespace", {"metadata": {"name": NAMESPACE}})
    kube_api.add_node("gpu-1", gpus=4, cpu="16", memory="64Gi")
    kube_api.add_node("gpu-2", gpus=4, cpu="16", memory="64Gi", unschedulable=True)
    return make_config(tmp_path, backend="kubernetes", kube_namespace=NAMESPACE,
                       kubeconfig=kube_api.kubeconfig, kernel_image="python:3.11-slim",
                       kernel_ready_timeout=5)


async def probe_tcp(port: int, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


class FakeKubelet:
    """Starts the pod's runner locally and reports the pod Ready (what kubelet + containerd would do)."""

    def __init__(self, kube_api, scratch_root):
        self.kube_api, self.scratch_root = kube_api, scratch_root
        self.processes = []
        self.task = None

    async def run(self, ready=True):
        started = set()
        while True:
            for pod in self.kube_api.list_objects("pods", NAMESPACE):
                name = pod["metadata"]["name"]
                if name in started or pod["metadata"].get("deletionTimestamp"):
                    continue
                started.add(name)
                if not ready:
                    continue
                kid = pod["metadata"]["labels"]["ai.backend.kernel-id"]
                command = pod["spec"]["containers"][0]["command"]
                argv = [sys.executable] + command[1:]
                argv = [a.replace("/home/config", str(self.scratch_root / kid / "config"))
                        .replace("/home/work", str(self.scratch_root / kid / "work")) for a in argv]
                argv[argv.index("--host") + 1] = "127.0.0.1"
                self.processes.append(subprocess.Popen(argv))
                # the readinessProbe: the runner's port accepts a connection
                port = pod["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]["port"]
                await probe_tcp(port)
                self.kube_api.update_object("pods", name, {"spec": {"nodeName": "gpu-1"}, "status": {
                    "phase": "Running", "podIP": "127.0.0.1",
                    "conditions": [{"type": "Ready", "status": "True"}]}}, NAMESPACE)
            await asyncio.sleep(0.05)

    def start(self, ready=True):
        self.task = asyncio.ensure_future(self.run(ready))

    async def stop(self):
        self.task.cancel()
        for proc in self.processes:
            proc.terminate()
            proc.wait(5)


async def test_kernel_pod_service_execute_and_cleanup(k8s_config, kube_api):
    agent = Agent(k8s_config)
    # capacity from the schedulable node only, minus [resource] reserved
    assert len(agent.capacity.gpus) == 4 and agent.capacity.cpu == 15.0
    kubelet = FakeKubelet(kube_api, k8s_config.container.scratch_root)
    kubelet.start()
    await agent.start()
    try:
        record = await agent.create_kernel(gpus=2, cpu=1.5, mem=2 << 30, service_ports=1, session_id="sess-1",
                                           environ={"FOO": "bar"})
        pod = kube_api.get_object("pods", f"kernel-{record.kernel_id}", NAMESPACE)
        assert record.container_id == pod["metadata"]["uid"] and record.container_id
        assert record.runner_host == "127.0.0.1"
        labels = pod["metadata"]["labels"]
        assert labels["ai.backend.kernel-id"] == record.kernel_id
        assert labels["ai.backend.session-id"] == "sess-1"
        spec = pod["spec"]
        assert spec["runtimeClassName"] == "nvidia"
        container = spec["containers"][0]
        resources = container["resources"]
        assert resources["limits"] == {"cpu": "1500m", "memory": str(2 << 30), "nvidia.com/gpu": "2"}
        assert resources["requests"] == resources["limits"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/home/work"]["subPath"] == f"{record.kernel_id}/work"
        assert mounts["/home/config"]["subPath"] == f"{record.kernel_id}/config"
        assert mounts["/home/config"]["readOnly"] is True
        assert spec["volumes"] == [{"name": "scratch", "hostPath": {
            "path": str(k8s_config.container.scratch_root), "type": "DirectoryOrCreate"}}]
        assert container["command"][:2] == ["python3", "/home/config/runner.py"]
        assert {"name": "FOO", "value": "bar"} in container["env"]
        assert container["readinessProbe"]["tcpSocket"]["port"] == record.ports[0]
        service = kube_api.get_object("services", f"kernel-{record.kernel_id}", NAMESPACE)
        assert service["spec"]["selector"] == {"ai.backend.kernel-id": record.kernel_id}
        assert [p["port"] for p in service["spec"]["ports"]] == record.ports

        await agent.execute(record.kernel_id, "query", "n = 20")
        assert (await agent.execute(record.kernel_id, "query", "n * 2 + 2"))["stdout"] == "42\n"

        await agent.destroy_kernel(record.kernel_id)
        assert kube_api.get_object("pods", f"kernel-{record.kernel_id}", NAMESPACE) is None
        assert kube_api.get_object("services", f"kernel-{record.kernel_id}", NAMESPACE) is None
        assert not (k8s_config.container.scratch_root / record.kernel_id).exists()
        assert agent.allocator.used()["cuda.device"] == 0
    finally:
        await kubelet.stop()
        await agent.stop(destroy_kernels=True)


async def test_pod_never_ready_times_out_and_cleans_up(k8s_config, kube_api):
    agent = Agent(k8s_config)
    kubelet = FakeKubelet(kube_api, k8s_config.container.scratch_root)
    kubelet.start(ready=False)
    k8s_config.agent.kernel_ready_timeout = 0.5
    await agent.start()
    try:
        with pytest.raises(Exception, match="not ready after 0.5s"):
            await agent.create_kernel(gpus=1)
        assert kube_api.list_objects("pods", NAMESPACE) == []
        assert kube_api.list_objects("services", NAMESPACE) == []
        assert agent.allocator.used()["cuda.device"] == 0 and agent.ports.free_count() == agent.ports.size
        terminated = [a for n, a, _ in agent.events.buffer if n == "kernel_terminated"]
        assert terminated[-1][2] == "failed-to-start"  # (kernel, session, reason enum, exit code)
    finally:
        await kubelet.stop()
        await agent.stop(destroy_kernels=True)


async def test_api_failure_on_service_creation_removes_the_pod(k8s_config, kube_api):
    agent = Agent(k8s_config)
    await agent.start()
    try:
        kube_api.fail_next("POST", r"/services$", 500)
        with pytest.raises(Exception, match="API error 500"):
            await agent.create_kernel()
        assert kube_api.list_objects("pods", NAMESPACE) == []
        assert len(agent.registry) == 0
    finally:
        await agent.stop(destroy_kernels=True)


def test_cpu_only_pod_has_no_gpu_and_hides_devices(k8s_config, kube_api):
    from gpufleet.agent.registry import KernelRecord

    record = KernelRecord(kernel_id="k1", session_id="s1", status="creating",
                          allocation={"kernel_id": "k1", "cpu": 0.5, "mem": 1 << 30, "gpus": []},
                          ports=[30000])
    k8s_config.container.scratch_type = "nfs"
    k8s_config.container.scratch_pvc = "scratch-rwx"
    manifest = pod_manifest(record, k8s_config)
    spec = manifest["spec"]
    assert "runtimeClassName" not in spec
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in spec["containers"][0]["env"]
    assert spec["volumes"] == [{"name": "scratch", "persistentVolumeClaim": {"claimName": "scratch-rwx"}}]
    assert KubernetesBackend(k8s_config, kube_api.api_client).cluster_capacity().slots()["cuda.device"] == 4
    # kernel-uid "agent" (the test config): no uid forced on the pod
    assert spec["containers"][0]["securityContext"] == {"allowPrivilegeEscalation": False}
    k8s_config.container.kernel_uid, k8s_config.container.kernel_gid = 1000, 1000
    security = pod_manifest(record, k8s_config)["spec"]["containers"][0]["securityContext"]
    assert security == {"allowPrivilegeEscalation": False, "runAsUser": 1000, "runAsGroup": 1000,
                        "runAsNonRoot": True}


async def test_restart_adopts_running_pods_and_reports_vanished_ones(k8s_config, kube_api):
    kubelet = FakeKubelet(kube_api, k8s_config.container.scratch_root)
    kubelet.start()
    first = Agent(k8s_config)
    await first.start()
    try:
        keep = await first.create_kernel(gpus=1)
        lost = await first.create_kernel(gpus=1)
        await first.stop()
        kube_api.delete_object("pods", f"kernel-{lost.kernel_id}", NAMESPACE)
        second = Agent(k8s_config)
        await second.start()
        assert second.registry.get(keep.kernel_id) is not None and second.registry.get(lost.kernel_id) is None
        assert second.allocator.used()["cuda.device"] == 1
        assert (await second.execute(keep.kernel_id, "query", "1 + 1"))["stdout"] == "2\n"
        await second.stop(destroy_kernels=True)
        assert kube_api.list_objects("pods", NAMESPACE) == []
    finally:
        await kubelet.stop()


def kernel_requests(kube_api) -> list[tuple[str, str]]:
    """(method, resource) of each request to the kernels' namespace (the watch excluded)."""
    return [(r.method, r.path.split("/")[-2] if r.method == "DELETE" else r.path.split("/")[-1])
            for r in kube_api.requests if f"/namespaces/{NAMESPACE}/" in r.path and not r.is_watch]


async def test_four_requests_per_kernel_lifetime_and_none_while_idle(k8s_config, kube_api):
    agent = Agent(k8s_config)
    kubelet = FakeKubelet(kube_api, k8s_config.container.scratch_root)
    kubelet.start()
    await agent.start()
    try:
        first = await agent.create_kernel(gpus=1)  # the agent's one LIST + WATCH of its pods start here
        watches = [r for r in kube_api.requests if r.is_watch]
        assert len(watches) == 1
        assert watches[0].query["labelSelector"] == f"gpufleet.io/agent={k8s_config.agent.id}"
        kube_api.clear_requests()

        record = await agent.create_kernel(gpus=1)
        assert kernel_requests(kube_api) == [("POST", "pods"), ("POST", "services")]
        kube_api.clear_requests()
        await asyncio.sleep(3)  # two kernels idle: nothing is polled
        assert kube_api.requests == []
        assert await agent.backend.is_alive(record)  # answered from the watch's cache
        assert kube_api.requests == []

        await agent.destroy_kernel(record.kernel_id)
        assert kernel_requests(kube_api) == [("DELETE", "pods"), ("DELETE", "services")]
        await agent.destroy_kernel(first.kernel_id)
    finally:
        await kubelet.stop()
        await agent.stop(destroy_kernels=True)


async def test_a_pod_that_ends_is_reported_from_the_watch(k8s_config, kube_api):
    agent = Agent(k8s_config)
    kubelet = FakeKubelet(kube_api, k8s_config.container.scratch_root)
    kubelet.start()
    await agent.start()
    try:
        record = await agent.create_kernel()
        kube_api.update_object("pods", f"kernel-{record.kernel_id}", {"status": {
            "phase": "Failed", "containerStatuses": [{"name": "kernel", "state": {
                "terminated": {"exitCode": 3}}}]}}, NAMESPACE)
        deadline = asyncio.get_running_loop().time() + 10
        while agent.registry.get(record.kernel_id) is not None:
            assert asyncio.get_running_loop().time() < deadline, "the exit was not noticed"
            await asyncio.sleep(0.05)
        terminated = [a for n, a, _ in agent.events.buffer if n == "kernel_terminated"]
        assert terminated[-1][2:] == (KernelLifecycleEventReason.SELF_TERMINATED, 3)  # Backend.AI's enum
    finally:
        await kubelet.stop()
        await agent.stop(destroy_kernels=True)


async def test_the_agent_runs_kernels_with_only_its_service_account(k8s_config, kube_api, tmp_path):
    """The RBAC of roles/kernel_agent/templates/kubernetes.yaml.j2 is all the agent needs: capacity
    from the nodes, a kernel's pod and service created, watched, executed in, destroyed. The emulator
    authorizes every request by that manifest (403 otherwise; see tests/integration/kube)."""
    from fixtures.kube_rbac import role_manifest

    manifest = role_manifest("kernel_agent", "kubernetes.yaml.j2", kernel_agent_kube_namespace=NAMESPACE,
                             kernel_agent_scratch_type="hostdir", kernel_agent_kube_runtime_class=True)
    kubeconfig = kube_api.service_account_kubeconfig(tmp_path / "agent.kubeconfig", manifest, NAMESPACE,
                                                     "gpufleet-agent")
    (tmp_path / "rbac").mkdir()
    config = make_config(tmp_path / "rbac", backend="kubernetes", kube_namespace=NAMESPACE,
                         kubeconfig=kubeconfig, kernel_image="python:3.11-slim", kernel_ready_timeout=5)
    agent = Agent(config)
    assert len(agent.capacity.gpus) == 4
    kubelet = FakeKubelet(kube_api, config.container.scratch_root)
    kubelet.start()
    await agent.start()
    try:
        record = await agent.create_kernel(gpus=1)
        assert (await agent.execute(record.kernel_id, "query", "6 * 7"))["stdout"] == "42\n"
        await agent.destroy_kernel(record.kernel_id)
        assert kube_api.list_objects("pods", NAMESPACE) == []
        assert kube_api.list_objects("services", NAMESPACE) == []
    finally:
        await kubelet.stop()
        await agent.stop(destroy_kernels=True)
