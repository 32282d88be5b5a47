"""The kubernetes backend: each kernel a Pod `kernel-<kid>` plus a Service.

What upstream Backend.AI's Kubernetes backend left out is here: cpu/memory
requests and limits from the kernel's slots, `nvidia.com/gpu` with
`runtimeClassName: nvidia` when GPUs are requested, readiness awaited with a
timeout, and the pod UID as container id (never an empty string).

Scratch: with `scratch-type = "nfs"` the agent's `scratch-root` is where the
NFS export is mounted on the agent's host and pods mount the same export
through the ReadWriteMany PVC `scratch-pvc`; with `hostdir` pods mount
`scratch-root` by hostPath (single-node clusters, labs). Either way the pod
sees `<kid>/work` at /home/work and `<kid>/config` at /home/config, and the
runner arrives through that volume (/home/config/runner.py), so any image with
a Python 3 works.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from gpufleet.agent.backends.base import RUNNER_SOURCE, BackendError, KernelBackend, LaunchSpec
from gpufleet.agent.config import AgentConfig
from gpufleet.agent.registry import KernelRecord
from gpufleet.agent.resources import GpuDevice, SlotCapacity

KERNEL_ID_LABEL = "ai.backend.kernel-id"
SESSION_ID_LABEL = "ai.backend.session-id"
AGENT_LABEL = "gpufleet.io/agent"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_RUNTIME_CLASS = "nvidia"
SCRATCH_VOLUME = "scratch"
MONITOR_SECONDS = 2.0


def pod_name(kernel_id: str) -> str:
    return f"kernel-{kernel_id}"


def kernel_labels(record: KernelRecord, agent_id: str) -> dict[str, str]:
    return {KERNEL_ID_LABEL: record.kernel_id, SESSION_ID_LABEL: record.session_id, AGENT_LABEL: agent_id}


def scratch_volume(config: AgentConfig) -> dict[str, Any]:
    if config.container.scratch_type == "nfs":
        return {"name": SCRATCH_VOLUME, "persistentVolumeClaim": {"claimName": config.container.scratch_pvc}}
    return {"name": SCRATCH_VOLUME,
            "hostPath": {"path": str(config.container.scratch_root), "type": "DirectoryOrCreate"}}


def container_security(config: AgentConfig) -> dict[str, Any]:
    context: dict[str, Any] = {"allowPrivilegeEscalation": False}
    uid, gid = config.container.kernel_uid, config.container.kernel_gid
    if uid is not None:
        # The same uid/gid the agent hands the scratch files to.
        context.update(runAsUser=uid, runAsGroup=uid if gid is None else gid, runAsNonRoot=uid != 0)
    return context


def pod_manifest(record: KernelRecord, config: AgentConfig) -> dict[str, Any]:
    """The Pod for one kernel; every field the tests assert is decided here."""
    allocation = record.allocation
    gpus = len(allocation.get("gpus", []))
    quantities = {"cpu": f"{int(round(float(allocation['cpu']) * 1000))}m",
                  "memory": str(int(allocation["mem"]))}
    if gpus:
        quantities[GPU_RESOURCE] = str(gpus)
    env = [{"name": "HOME", "value": "/home/work"},
           {"name": "BACKENDAI_KERNEL_ID", "value": record.kernel_id},
           {"name": "BACKENDAI_SESSION_ID", "value": record.session_id}]
    env += [{"name": k, "value": v} for k, v in sorted(record.environ.items())]
    if not gpus:
        # The NVIDIA runtime would otherwise expose every GPU to a kernel that asked for none.
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})
    runner_port = record.ports[0]
    ports = [{"name": "runner", "containerPort": runner_port, "protocol": "TCP"}]
    ports += [{"name": f"svc-{i}", "containerPort": p, "protocol": "TCP"}
              for i, p in enumerate(record.ports[1:])]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "kernel",
            "image": record.image or config.agent.kernel_image,
            # 0.0.0.0 inside the pod's own network namespace: the pod IP and the Service reach it.
            "command": ["python3", "/home/config/runner.py", "--host", "0.0.0.0",  # noqa: S104
                        "--port", str(runner_port),
                        "--token-file", "/home/config/runner.token", "--workdir", "/home/work"],
            "workingDir": "/home/work",
            "env": env,
            "ports": ports,
            "resources": {"requests": dict(quantities), "limits": dict(quantities)},
            "readinessProbe": {"tcpSocket": {"port": runner_port}, "periodSeconds": 1,
                               "initialDelaySeconds": 0, "failureThreshold": 3},
            "volumeMounts": [
                {"name": SCRATCH_VOLUME, "mountPath": "/home/work", "subPath": f"{record.kernel_id}/work"},
                {"name": SCRATCH_VOLUME, "mountPath": "/home/config", "subPath": f"{record.kernel_id}/config",
                 "readOnly": True},
            ],
            "securityContext": container_security(config),
        }],
        "volumes": [scratch_volume(config)],
    }
    if gpus:
        spec["runtimeClassName"] = GPU_RUNTIME_CLASS
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name(record.kernel_id), "namespace": config.agent.kube_namespace,
                         "labels": kernel_labels(record, config.agent.id)},
            "spec": spec}


def service_manifest(record: KernelRecord, config: AgentConfig) -> dict[str, Any]:
    ports = [{"name": "runner", "port": record.ports[0], "targetPort": record.ports[0], "protocol": "TCP"}]
    ports += [{"name": f"svc-{i}", "port": p, "targetPort": p, "protocol": "TCP"}
              for i, p in enumerate(record.ports[1:])]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": pod_name(record.kernel_id), "namespace": config.agent.kube_namespace,
                         "labels": kernel_labels(record, config.agent.id)},
            "spec": {"type": "ClusterIP", "selector": {KERNEL_ID_LABEL: record.kernel_id}, "ports": ports}}


def _ready(pod: k8s.V1Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _exit_code(pod: k8s.V1Pod | None) -> int | None:
    if pod is None or pod.status is None:
        return None
    for status in pod.status.container_statuses or []:
        terminated = status.state.terminated if status.state else None
        if terminated is not None:
            return terminated.exit_code
    return None


class KubernetesBackend(KernelBackend):
    name = "kubernetes"

    def __init__(self, config: AgentConfig, api_client: k8s.ApiClient | None = None,
                 poll_seconds: float = 0.2) -> None:
        super().__init__()
        self.config = config
        self.namespace = config.agent.kube_namespace
        if api_client is None:
            from gpufleet.kube.client import api_client as make_api_client

            api_client = make_api_client(kubeconfig=config.agent.kubeconfig)
        self.core = k8s.CoreV1Api(api_client)
        self.poll_seconds = poll_seconds
        self._supervised: dict[str, KernelRecord] = {}
        self._monitor: asyncio.Task | None = None

    async def _api(self, fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _read_pod(self, kernel_id: str) -> k8s.V1Pod | None:
        try:
            return await self._api(self.core.read_namespaced_pod, pod_name(kernel_id), self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise BackendError(f"reading pod {pod_name(kernel_id)}: {exc.status} {exc.reason}") from exc

    def cluster_capacity(self) -> SlotCapacity:
        """Allocatable cpu/memory/GPUs of Ready, schedulable nodes (what kernels can be given)."""
        cpu, mem, gpus = 0.0, 0, 0
        for node in self.core.list_node().items:
            conditions = node.status.conditions or []
            ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
            if node.spec.unschedulable or not ready:
                continue
            allocatable = node.status.allocatable or {}
            cpu += float(parse_quantity(allocatable.get("cpu", "0")))
            mem += int(parse_quantity(allocatable.get("memory", "0")))
            gpus += int(parse_quantity(allocatable.get(GPU_RESOURCE, "0")))
        reserved = self.config.resource
        return SlotCapacity(cpu=max(0.0, cpu - reserved.reserved_cpu),
                            mem=max(0, mem - reserved.reserved_mem),
                            gpus=[GpuDevice(i, "kubernetes") for i in range(gpus)])

    async def create(self, spec: LaunchSpec) -> None:
        record = spec.record
        spec.scratch.write_runner(RUNNER_SOURCE, record.runner_token)
        record.runner_port = record.ports[0]
        record.backend_data = {"namespace": self.namespace, "pod": pod_name(record.kernel_id)}
        try:
            pod = await self._api(self.core.create_namespaced_pod, self.namespace,
                                  pod_manifest(record, self.config))
            record.container_id = pod.metadata.uid
            record.backend_data["uid"] = pod.metadata.uid
            await self._api(self.core.create_namespaced_service, self.namespace,
                            service_manifest(record, self.config))
            pod = await self._await_ready(record.kernel_id, spec.ready_timeout)
            record.runner_host = pod.status.pod_ip
            record.backend_data["node"] = pod.spec.node_name
        except ApiException as exc:
            raise BackendError(f"kernel {record.kernel_id}: API error {exc.status} {exc.reason}") from exc
        self._supervise(record)

    async def _await_ready(self, kernel_id: str, timeout: float) -> k8s.V1Pod:
        deadline = time.monotonic() + timeout
        while True:
            pod = await self._read_pod(kernel_id)
            if pod is None:
                raise BackendError(f"pod {pod_name(kernel_id)} disappeared while starting")
            phase = pod.status.phase if pod.status else None
            if phase in ("Failed", "Succeeded"):
                raise BackendError(f"pod {pod_name(kernel_id)} ended while starting ({phase}, "
                                   f"exit code {_exit_code(pod)})")
            if phase == "Running" and _ready(pod) and pod.status.pod_ip:
                return pod
            if time.monotonic() >= deadline:
                raise BackendError(f"pod {pod_name(kernel_id)} not ready after {timeout}s (phase {phase})")
            await asyncio.sleep(self.poll_seconds)

    def _supervise(self, record: KernelRecord) -> None:
        self._supervised[record.kernel_id] = record
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.ensure_future(self._monitor_loop())

    async def _monitor_loop(self) -> None:
        """Report kernels whose pod ended or vanished without the agent asking."""
        while self._supervised:
            await asyncio.sleep(MONITOR_SECONDS)
            for kernel_id, record in list(self._supervised.items()):
                try:
                    pod = await self._read_pod(kernel_id)
                except BackendError:
                    continue  # API hiccup: look again next round
                phase = pod.status.phase if pod is not None and pod.status else None
                gone = pod is None or pod.metadata.uid != record.container_id
                if gone or phase in ("Failed", "Succeeded"):
                    if self._supervised.pop(kernel_id, None) is not None:
                        await self._report_exit(kernel_id, None if gone else _exit_code(pod))

    async def destroy(self, record: KernelRecord) -> int | None:
        self._supervised.pop(record.kernel_id, None)
        name = pod_name(record.kernel_id)
        pod = None
        with contextlib.suppress(BackendError):
            pod = await self._read_pod(record.kernel_id)
        for delete in (self.core.delete_namespaced_pod, self.core.delete_namespaced_service):
            try:
                await self._api(delete, name, self.namespace, grace_period_seconds=5)
            except ApiException as exc:
                if exc.status != 404:
                    raise BackendError(f"deleting {name}: {exc.status} {exc.reason}") from exc
        return _exit_code(pod)

    async def is_alive(self, record: KernelRecord) -> bool:
        pod = await self._read_pod(record.kernel_id)
        if pod is None or pod.metadata.uid != record.container_id or pod.metadata.deletion_timestamp:
            return False
        return (pod.status.phase if pod.status else None) in ("Pending", "Running")

    async def adopt(self, record: KernelRecord) -> None:
        pod = await self._read_pod(record.kernel_id)
        if pod is not None and pod.status and pod.status.pod_ip:
            record.runner_host = pod.status.pod_ip  # a rescheduled network may have moved it
        self._supervise(record)

    async def logs(self, record: KernelRecord, tail_bytes: int = 65536) -> str:
        try:
            return await self._api(self.core.read_namespaced_pod_log, pod_name(record.kernel_id),
                                   self.namespace, limit_bytes=tail_bytes)
        except ApiException:
            return ""

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
