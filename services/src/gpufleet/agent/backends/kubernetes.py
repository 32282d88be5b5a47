"""The kubernetes backend: each kernel a Pod `kernel-<kid>` plus a Service.

What upstream Backend.AI's Kubernetes backend left out is here: cpu/memory
requests and limits from the kernel's slots, `nvidia.com/gpu` with
`runtimeClassName: nvidia` when GPUs are requested, readiness awaited (from a
watch, with a timeout), and the pod UID as container id (never an empty string).
The API is reached only through gpufleet.kube (auth, deadlines, retries, watches).

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
import logging
import threading
import time
from typing import Any

from gpufleet.agent.backends.base import (
    RUNNER_SOURCE,
    BackendError,
    KernelBackend,
    LaunchSpec,
    kernel_environ,
)
from gpufleet.agent.config import AgentConfig
from gpufleet.agent.registry import KernelRecord
from gpufleet.agent.resources import GpuDevice, SlotCapacity
from gpufleet.kube.api import KUBE_ERRORS, PODS, KubeApi, describe_error, parse_quantity
from gpufleet.kube.client import connect
from gpufleet.kube.watch import Watch

KERNEL_ID_LABEL = "ai.backend.kernel-id"
SESSION_ID_LABEL = "ai.backend.session-id"
AGENT_LABEL = "gpufleet.io/agent"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_RUNTIME_CLASS = "nvidia"
SCRATCH_VOLUME = "scratch"

log = logging.getLogger("gpufleet.agent.kubernetes")


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


def pod_manifest(record: KernelRecord, config: AgentConfig,
                 environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The Pod for one kernel; every field the tests assert is decided here. environ: the kernel's
    (kernel_environ), by default as the agent of this config decides it."""
    if environ is None:
        environ = kernel_environ(record, config.agent.id, cuda=False)
    allocation = record.allocation
    gpus = len(allocation.get("gpus", []))
    quantities = {"cpu": f"{int(round(float(allocation['cpu']) * 1000))}m",
                  "memory": str(int(allocation["mem"]))}
    if gpus:
        quantities[GPU_RESOURCE] = str(gpus)
    env = [{"name": "HOME", "value": "/home/work"}]
    env += [{"name": k, "value": v} for k, v in sorted(environ.items())]
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


def _ready(pod: dict) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _phase(pod: dict | None) -> str | None:
    return None if pod is None else (pod.get("status") or {}).get("phase")


def _exit_code(pod: dict | None) -> int | None:
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated is not None:
            return terminated.get("exitCode")
    return None


class KubernetesBackend(KernelBackend):
    """Kernels as pods, seen through ONE watch on this agent's pods (label gpufleet.io/agent=<id>).

    The watch (a thread running gpufleet.kube.watch.Watch) keeps a cache of the
    agent's pods; readiness, exits and liveness are read from it. So a kernel
    costs four requests in its life (create pod and service, delete both) and
    an idle agent makes none beyond the watch itself, which reconnects every
    `WATCH_SECONDS` from its last resourceVersion.
    """

    name = "kubernetes"
    WATCH_SECONDS = 600
    SYNC_TIMEOUT = 30.0

    def __init__(self, config: AgentConfig, api: KubeApi | Any = None) -> None:
        super().__init__()
        self.config = config
        self.namespace = config.agent.kube_namespace
        if api is None:
            api = connect(kubeconfig=config.agent.kubeconfig)
        # a KubeApi, or an ApiClient made by gpufleet.kube.client
        self.api = api if isinstance(api, KubeApi) else KubeApi(api)
        self.selector = f"{AGENT_LABEL}={config.agent.id}"
        self.pods: dict[str, dict] = {}  # pod name -> the pod as last seen by the watch
        self._supervised: dict[str, KernelRecord] = {}
        self._changed: dict[str, asyncio.Event] = {}  # pod name -> set on every event for it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None
        self._synced: asyncio.Event | None = None
        self._watch_error: BaseException | None = None

    # ---- the watch

    async def _ensure_watch(self) -> None:
        """Start the watch once and wait until its first LIST is in the cache."""
        if self._watch is None:
            self._loop = asyncio.get_running_loop()
            self._synced = asyncio.Event()
            self._watch = Watch(self.api, PODS, self.namespace, label_selector=self.selector,
                                timeout_seconds=self.WATCH_SECONDS,
                                on_sync=lambda: self._loop.call_soon_threadsafe(self._synced.set))
            self._thread = threading.Thread(target=self._run_watch, name="kernel-pod-watch", daemon=True)
            self._thread.start()
        try:
            await asyncio.wait_for(self._synced.wait(), self.SYNC_TIMEOUT)
        except asyncio.TimeoutError as exc:
            raise BackendError(f"could not list the agent's pods within {self.SYNC_TIMEOUT:.0f} s"
                               + (f": {self._watch_error}" if self._watch_error else "")) from exc

    def _run_watch(self) -> None:
        watch = self._watch
        try:
            for event in watch:
                self._loop.call_soon_threadsafe(self._on_event, event.type, event.object)
        except Exception as exc:  # noqa: BLE001 — Watch retries itself; this is the loop closing under it
            self._watch_error = exc
            log.warning("kernel pod watch ended: %s", exc)

    def _on_event(self, kind: str, pod: dict) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            self.pods.pop(name, None)
        else:
            self.pods[name] = pod
        changed = self._changed.get(name)
        if changed is not None:
            changed.set()
        kernel_id = (pod["metadata"].get("labels") or {}).get(KERNEL_ID_LABEL)
        record = self._supervised.get(kernel_id) if kernel_id else None
        if record is None:
            return
        current = self.pods.get(name)
        gone = current is None or current["metadata"].get("uid") != record.container_id
        if gone or _phase(current) in ("Failed", "Succeeded"):
            self._supervised.pop(kernel_id, None)
            asyncio.ensure_future(self._report_exit(kernel_id, None if gone else _exit_code(current)))

    async def _await_ready(self, kernel_id: str, uid: str, timeout: float) -> dict:
        """Until the pod is Running, Ready and has an IP — from watch events, no polling."""
        name = pod_name(kernel_id)
        changed = self._changed.setdefault(name, asyncio.Event())
        deadline = time.monotonic() + timeout
        try:
            while True:
                changed.clear()
                pod = self.pods.get(name)
                if pod is not None and pod["metadata"].get("uid") == uid:
                    phase = _phase(pod)
                    if phase in ("Failed", "Succeeded"):
                        raise BackendError(f"pod {name} ended while starting ({phase}, "
                                           f"exit code {_exit_code(pod)})")
                    if phase == "Running" and _ready(pod) and (pod.get("status") or {}).get("podIP"):
                        return pod
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BackendError(f"pod {name} not ready after {timeout}s (phase {_phase(pod)})")
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except asyncio.TimeoutError:
                    continue
        finally:
            self._changed.pop(name, None)

    # ---- cluster

    def cluster_capacity(self) -> SlotCapacity:
        """Allocatable cpu/memory/GPUs of Ready, schedulable nodes (what kernels can be given)."""
        cpu, mem, gpus = 0.0, 0, 0
        for node in self.api.list_nodes():
            status, spec = node.get("status") or {}, node.get("spec") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in status.get("conditions") or [])
            if spec.get("unschedulable") or not ready:
                continue
            allocatable = status.get("allocatable") or {}
            cpu += float(parse_quantity(allocatable.get("cpu", "0")))
            mem += int(parse_quantity(allocatable.get("memory", "0")))
            gpus += int(parse_quantity(allocatable.get(GPU_RESOURCE, "0")))
        reserved = self.config.resource
        return SlotCapacity(cpu=max(0.0, cpu - reserved.reserved_cpu),
                            mem=max(0, mem - reserved.reserved_mem),
                            gpus=[GpuDevice(i, "kubernetes") for i in range(gpus)])

    # ---- kernels

    async def _call(self, fn, *args, **kwargs):
        """A blocking KubeApi call off the event loop (each has the client's deadline)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def create(self, spec: LaunchSpec) -> None:
        record = spec.record
        spec.scratch.write_runner(RUNNER_SOURCE, record.runner_token)
        record.runner_port = record.ports[0]
        record.backend_data = {"namespace": self.namespace, "pod": pod_name(record.kernel_id)}
        try:
            await self._ensure_watch()
            manifest = pod_manifest(record, self.config, spec.environ)
            pod = await self._call(self.api.create_pod, self.namespace, manifest)
            record.container_id = pod["metadata"]["uid"]
            record.backend_data["uid"] = record.container_id
            await self._call(self.api.create_service, self.namespace, service_manifest(record, self.config))
            pod = await self._await_ready(record.kernel_id, record.container_id, spec.ready_timeout)
            record.runner_host = pod["status"]["podIP"]
            record.backend_data["node"] = (pod.get("spec") or {}).get("nodeName")
        except KUBE_ERRORS as exc:  # launch() in the base class removes what was started
            raise BackendError(f"kernel {record.kernel_id}: API error {describe_error(exc)}") from exc
        self._supervised[record.kernel_id] = record

    async def destroy(self, record: KernelRecord) -> int | None:
        self._supervised.pop(record.kernel_id, None)
        name = pod_name(record.kernel_id)
        pod = self.pods.get(name)
        for delete in (self.api.delete_pod, self.api.delete_service):
            try:
                if delete is self.api.delete_pod:
                    await self._call(delete, self.namespace, name, grace_seconds=5)
                else:
                    await self._call(delete, self.namespace, name)
            except KUBE_ERRORS as exc:
                if getattr(exc, "status", None) != 404:
                    raise BackendError(f"deleting {name}: {describe_error(exc)}") from exc
        return _exit_code(pod)

    async def is_alive(self, record: KernelRecord) -> bool:
        await self._ensure_watch()
        pod = self.pods.get(pod_name(record.kernel_id))
        if pod is None or pod["metadata"].get("uid") != record.container_id \
                or pod["metadata"].get("deletionTimestamp"):
            return False
        return _phase(pod) in ("Pending", "Running")

    async def adopt(self, record: KernelRecord) -> None:
        await self._ensure_watch()
        pod = self.pods.get(pod_name(record.kernel_id))
        if pod is not None and (pod.get("status") or {}).get("podIP"):
            record.runner_host = pod["status"]["podIP"]  # a rescheduled network may have moved it
        self._supervised[record.kernel_id] = record

    async def logs(self, record: KernelRecord, tail_bytes: int = 65536) -> str:
        try:
            text = await self._call(self.api.pod_log, self.namespace, pod_name(record.kernel_id))
        except KUBE_ERRORS:
            return ""
        return text[-tail_bytes:]

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
