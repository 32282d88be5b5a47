"""The live GPU scheduler: `gpufleet place serve`.

A Kubernetes scheduler for the pods whose `spec.schedulerName` is `gpufleet`
(configurable), built on the same engine as `gpufleet place plan/replay`:

    watch (pods, nodes) ──> ClusterCache ──> Placer (engine) ──> POST pods/<name>/binding
                                 │                 │
                          PendingQueue      FailedScheduling Event + PodScheduled=False

- One LIST of nodes and pods when it starts to lead, then watches from that
  resourceVersion keep the in-memory model current: no LIST per decision.
- The queue orders pods by priority plus aging (`aging_per_second` per second
  waited), FIFO within a priority; a pod that fits nowhere is retried with
  exponential back-off, and at once when the cluster changes in a way that can
  make room (a node added or changed, a pod removed).
- Decisions commit to the model at once ("assumed", as kube-scheduler does);
  the binding runs on one of `bind_workers` threads and carries `gpufleet.io/assigned-gpus`
  (the API server copies a Binding's annotations onto the pod). A failed
  binding forgets the assumption and the pod is retried.
- Health-aware by construction: the engine's filters drop cordoned nodes, nodes
  whose taints the pod does not tolerate (the health agent's
  `gpufleet.io/unhealthy`, quarantine, maintenance), nodes labelled
  `gpufleet.io/health=fail`, and single GPUs marked `fail` in `gpufleet.io/gpus`.
- HA: only the holder of the Lease `kube-system/gpufleet-scheduler` schedules
  (gpufleet.kube.leader); a standby takes over when the leader stops renewing.
  The binding subresource refuses a pod that is bound already (409), so even
  an overlap cannot bind a pod twice.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import queue
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest

from gpufleet.kube.api import (
    GPU_WORKLOADS,
    KUBE_ERRORS,
    NODES,
    PODS,
    STRATEGIC_MERGE_PATCH,
    KubeApi,
    describe_error,
)
from gpufleet.kube.leader import LeaseElector
from gpufleet.kube.watch import Watch
from gpufleet.metrics import MetricSpec
from gpufleet.placement import gpuworkload
from gpufleet.placement.engine import Placer
from gpufleet.placement.kube import FINISHED_PHASES, cluster_from
from gpufleet.placement.model import (
    ASSIGNED_GPUS_ANNOTATION,
    GPU_MILLI_ANNOTATION,
    GPUS_ANNOTATION,
    MILLI_PER_GPU,
    Decision,
    Request,
)
from gpufleet.placement.replay import policy_chain
from gpufleet.placement.workloads import request_from_item

log = logging.getLogger("gpufleet.placement.serve")

# The best measured policy on the openb traces (docs/placement.md).
DEFAULT_POLICY = "fgd_mem+model_reserve+balance"
CONTROLLER = "gpufleet-scheduler"


@dataclass
class ServeConfig:
    scheduler_name: str = "gpufleet"
    policy: str = DEFAULT_POLICY
    seed: int = 0
    lease_namespace: str = "kube-system"
    lease_name: str = "gpufleet-scheduler"
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}_{os.getpid()}")
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    aging_per_second: float = 1 / 60  # one priority step per minute waited
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    # Binding requests in flight at once: a binding is one round trip, so the rate is at most
    # bind_workers / binding latency. As many threads again write the rest (events, statuses,
    # workload pods). The client's connection pool must hold those besides the watches and the
    # loop's own calls (`connections`), or urllib3 opens and drops a connection per request
    # beyond it; bindings keep a connection of their own per thread (GpufleetApiClient.post_json).
    bind_workers: int = 16
    watch_timeout: int = 300
    # The workload mix FGD measures fragmentation against; None: the pods placed so far.
    typical_requests: list[Request] | None = None
    gauge_interval: float = 0.25  # seconds between recomputations of the fleet-wide gauges

    @property
    def connections(self) -> int:
        """The client connection pool this scheduler needs: writers, three watches, the loop."""
        return self.bind_workers + 4


# -- metrics -----------------------------------------------------------------------------------

QUEUE_DEPTH = MetricSpec("gpufleet_scheduler_queue_depth", "gauge", "Pending pods waiting for a node")
DECISIONS = MetricSpec("gpufleet_scheduler_decisions", "counter", "Placement decisions, by result",
                       ("result",))
UNSCHEDULABLE = MetricSpec("gpufleet_scheduler_unschedulable", "counter",
                           "Failed attempts, by the filter that removed the most nodes", ("reason",))
BINDINGS = MetricSpec("gpufleet_scheduler_bindings", "counter", "Binding requests, by result", ("result",))
BINDING_DURATION = MetricSpec(
    "gpufleet_scheduler_binding_duration_seconds", "histogram", "Decision to binding answered",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
SCHEDULING_DURATION = MetricSpec(
    "gpufleet_scheduler_pod_scheduling_duration_seconds", "histogram", "Pod first seen to bound",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900))
ALLOCATION = MetricSpec("gpufleet_scheduler_gpu_allocation_ratio", "gauge",
                        "Allocated GPU share of the schedulable GPUs (0..1)")
IDLE_FRAGMENTS = MetricSpec("gpufleet_scheduler_gpu_partial_idle_ratio", "gauge",
                            "Idle GPU share left on partly used GPUs, of all idle GPU share (0..1)")
LEADER = MetricSpec("gpufleet_scheduler_leader", "gauge", "1 while this instance holds the Lease")
ALL_METRICS = (QUEUE_DEPTH, DECISIONS, UNSCHEDULABLE, BINDINGS, BINDING_DURATION, SCHEDULING_DURATION,
               ALLOCATION, IDLE_FRAGMENTS, LEADER)


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.queue_depth = QUEUE_DEPTH.create(registry)
        self.decisions = DECISIONS.create(registry)
        self.unschedulable = UNSCHEDULABLE.create(registry)
        self.bindings = BINDINGS.create(registry)
        self.binding_duration = BINDING_DURATION.create(registry)
        self.pod_scheduling_duration = SCHEDULING_DURATION.create(registry)
        self.gpu_allocation_ratio = ALLOCATION.create(registry)
        self.gpu_partial_idle_ratio = IDLE_FRAGMENTS.create(registry)
        self.leader = LEADER.create(registry)
        # Every result from the start, so rate() and "no binding in 15 minutes" see a zero, not nothing.
        for result in ("placed", "unschedulable"):
            self.decisions.labels(result=result)
        for result in ("ok", "error"):
            self.bindings.labels(result=result)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- the model ---------------------------------------------------------------------------------

def _uid(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"


def _node_signature(node: dict) -> str:
    """What placement reads of a node: a change elsewhere (heartbeats, images) needs no rebuild."""
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    return json.dumps([meta.get("labels"), (meta.get("annotations") or {}).get(GPUS_ANNOTATION),
                       spec.get("taints"), spec.get("unschedulable"),
                       status.get("allocatable") or status.get("capacity")], sort_keys=True)


def _holds_resources(pod: dict) -> bool:
    return bool((pod.get("spec") or {}).get("nodeName")) and \
        (pod.get("status") or {}).get("phase") not in FINISHED_PHASES


class ClusterCache:
    """Nodes and the pods holding resources on them, kept current from watch events.

    `stale` says the Placer must be rebuilt: something changed that the
    scheduler's own commits do not already account for.
    """

    def __init__(self, scheduler_name: str) -> None:
        self.scheduler_name = scheduler_name
        self.nodes: dict[str, dict] = {}
        self.signatures: dict[str, str] = {}
        self.bound: dict[str, dict] = {}     # uid -> pod holding resources on a node
        self.assumed: dict[str, str] = {}    # uid -> node we bound it to, not yet seen bound
        self.stale = True
        self.room_freed = False  # a change that may let an unschedulable pod fit now

    def is_ours_pending(self, pod: dict) -> bool:
        spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
        return (spec.get("schedulerName") == self.scheduler_name and not spec.get("nodeName")
                and not meta.get("deletionTimestamp")
                and (pod.get("status") or {}).get("phase", "Pending") == "Pending")

    def on_node(self, kind: str, node: dict) -> None:
        name = node["metadata"]["name"]
        if kind == "DELETED":
            self.nodes.pop(name, None)
            self.signatures.pop(name, None)
            self.stale = True
            return
        self.nodes[name] = node
        signature = _node_signature(node)
        if self.signatures.get(name) != signature:
            self.signatures[name] = signature
            self.stale = self.room_freed = True

    def on_pod(self, kind: str, pod: dict) -> None:
        uid = _uid(pod)
        if kind == "DELETED" or not _holds_resources(pod):
            if self.bound.pop(uid, None) is not None:
                self.assumed.pop(uid, None)
                self.stale = self.room_freed = True
            return
        node = pod["spec"]["nodeName"]
        confirmed = self.assumed.pop(uid, None) == node
        if not confirmed and (uid not in self.bound or self.bound[uid]["spec"]["nodeName"] != node):
            self.stale = True  # bound by someone else (or moved): the model has not counted it
        self.bound[uid] = pod

    def assume(self, pod: dict, decision: Decision) -> None:
        """Count a decision before the API confirms it (the Placer already committed it)."""
        uid = _uid(pod)
        # A copy of the parts that change; the rest is shared with the queued pod, never mutated.
        meta = pod["metadata"]
        placed = dict(pod, spec=dict(pod["spec"], nodeName=decision.node),
                      metadata=dict(meta, annotations={**(meta.get("annotations") or {}),
                                                       **binding_annotations(decision)}))
        self.bound[uid] = placed
        self.assumed[uid] = decision.node

    def forget(self, uid: str) -> None:
        """A binding failed: the pod holds nothing after all."""
        if self.assumed.pop(uid, None) is not None:
            self.bound.pop(uid, None)
            self.stale = True

    def placer(self, policy: str, seed: int, typical: list[Request] | None = None) -> Placer:
        cluster = cluster_from(self.nodes.values(), self.bound.values())
        self.stale = False
        strategies = policy_chain(policy, typical, seed) if typical else policy.split("+")
        return Placer(cluster, strategies, seed=seed)


def binding_annotations(decision: Decision) -> dict[str, str]:
    annotations = {ASSIGNED_GPUS_ANNOTATION: ",".join(str(g) for g in decision.gpus)}
    if decision.request.is_share:
        annotations[GPU_MILLI_ANNOTATION] = str(decision.request.gpu_milli)
    return annotations


class _Resync(Exception):
    """The model can no longer be trusted (a watch died): list again."""


@dataclass(order=True)
class _Entry:
    sort_key: tuple
    uid: str = field(compare=False)


class PendingQueue:
    """Pods waiting for a node: highest (priority + aging · waited) first, FIFO within.

    A pod that did not fit waits `backoff_initial · 2^(attempts-1)` (capped) before
    its next try, unless `retry_unschedulable()` says the cluster has room again.
    """

    def __init__(self, aging_per_second: float, backoff_initial: float, backoff_max: float,
                 clock=time.monotonic) -> None:
        self.aging = aging_per_second
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.clock = clock
        self.pods: dict[str, dict] = {}
        self.first_seen: dict[str, float] = {}
        self.sequence: dict[str, int] = {}
        self.attempts: dict[str, int] = {}
        self.not_before: dict[str, float] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self.pods)

    def add(self, uid: str, pod: dict) -> None:
        if uid not in self.pods:
            self.first_seen[uid] = self.clock()
            self.sequence[uid] = next(self._counter)
        self.pods[uid] = pod

    def remove(self, uid: str) -> dict | None:
        for table in (self.first_seen, self.sequence, self.attempts, self.not_before):
            table.pop(uid, None)
        return self.pods.pop(uid, None)

    def priority(self, uid: str, request: Request, now: float) -> float:
        return request.priority + self.aging * (now - self.first_seen[uid])

    def ready(self, requests: dict[str, Request]) -> list[str]:
        """The uids to try now, in queue order."""
        now = self.clock()
        heap = [_Entry((-self.priority(uid, requests[uid], now), self.sequence[uid]), uid)
                for uid in self.pods if self.not_before.get(uid, 0.0) <= now and uid in requests]
        heapq.heapify(heap)
        return [heapq.heappop(heap).uid for _ in range(len(heap))]

    def back_off(self, uid: str) -> float:
        attempts = self.attempts[uid] = self.attempts.get(uid, 0) + 1
        delay = min(self.backoff_max, self.backoff_initial * 2 ** (attempts - 1))
        self.not_before[uid] = self.clock() + delay
        return delay

    def retry_unschedulable(self) -> None:
        self.not_before.clear()

    def next_due(self) -> float | None:
        """Seconds until the earliest backed-off pod is due (None: nothing waits)."""
        if not self.not_before:
            return None
        return max(0.0, min(self.not_before.values()) - self.clock())


# -- the service -------------------------------------------------------------------------------

def _reason(decision: Decision) -> str:
    """The filter that removed the most nodes: the label of the unschedulable counter."""
    worst = max(decision.filters, key=lambda f: f["removed"], default=None)
    return worst["filter"] if worst and worst["removed"] else "no-nodes"


def _micro_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() % 1 * 1e6):06d}Z"


def pod_event(pod: dict, reason: str, note: str, event_type: str, instance: str) -> dict:
    meta = pod["metadata"]
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{time.time_ns():x}",
                     "namespace": meta.get("namespace", "default")},
        "eventTime": _micro_time(), "type": event_type, "reason": reason, "action": "Scheduling",
        "note": note[:1024], "reportingController": CONTROLLER, "reportingInstance": instance[:128],
        "regarding": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                      "namespace": meta.get("namespace", "default"), "uid": meta.get("uid")},
    }


class GpuScheduler:
    def __init__(self, api: KubeApi, config: ServeConfig | None = None,
                 metrics: SchedulerMetrics | None = None) -> None:
        self.api = api
        self.config = config or ServeConfig()
        self.metrics = metrics or SchedulerMetrics()
        self.elector = LeaseElector(api, self.config.lease_namespace, self.config.lease_name,
                                    self.config.identity, self.config.lease_duration,
                                    self.config.renew_deadline, self.config.retry_period)
        self.events: queue.Queue = queue.Queue()
        self.cache = ClusterCache(self.config.scheduler_name)
        self.queue = PendingQueue(self.config.aging_per_second, self.config.backoff_initial,
                                  self.config.backoff_max)
        self.requests: dict[str, Request] = {}
        self.in_flight: dict[str, tuple[float, float]] = {}  # uid -> (binding sent, pod first seen)
        self.synced = False
        self.last_loop = time.monotonic()
        self._placers: dict[str, Placer] = {}  # by policy; all built from the same model
        self._gauge_capacity: tuple[object, int] = (None, 0)  # (fleet, its schedulable GPU milli)
        self._gauges_at = 0.0  # when the fleet-wide gauges were last computed
        self._watches: list[Watch] = []
        self._pool: ThreadPoolExecutor | None = None
        # Decisions to bind, taken by the binding threads: a C queue, no Future per pod
        # (submitting to the pool cost the deciding loop an eighth of its time).
        self._to_bind: queue.SimpleQueue = queue.SimpleQueue()
        # GPUWorkloads (when the CRD is installed): objects, and those whose status to refresh.
        self.workloads: dict[tuple[str, str], dict] = {}
        self.workload_dirty: set[tuple[str, str]] = set()
        self.workload_unschedulable: dict[tuple[str, str], str] = {}
        self.live_pods: dict[tuple[str, str], dict] = {}  # (namespace, name) -> pod, any state
        self.create_failed: dict[tuple[str, str], float] = {}  # pod -> when creating it last failed

    # -- health ------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, dict]:
        idle = time.monotonic() - self.last_loop
        limit = max(30.0, 3 * self.config.renew_deadline)
        return idle < limit, {"loop_idle_seconds": round(idle, 3), "limit_seconds": limit}

    def readiness(self) -> tuple[bool, dict]:
        leader = self.elector.is_leader()
        detail = {"leader": leader, "synced": self.synced, "api_reachable": self.elector.reachable,
                  "pending": len(self.queue)}
        # A leader is ready once its model is loaded; a standby while it can read the Lease
        # (it could take over).
        return (self.synced if leader else self.elector.reachable), detail

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Stand by or lead until `stop` is set; releases the Lease on the way out."""
        try:
            while not stop.is_set():
                self.last_loop = time.monotonic()
                if self.elector.try_acquire_or_renew():
                    self.metrics.leader.set(1)
                    self._lead(stop)
                    self.metrics.leader.set(0)
                else:
                    stop.wait(self.config.retry_period)
        finally:
            self.elector.release()

    def _lead(self, stop: threading.Event) -> None:
        try:
            self._sync()
        except KUBE_ERRORS as exc:
            log.warning("cannot read the cluster: %s", describe_error(exc))
            stop.wait(self.config.retry_period)
            return
        pool = self._pool = ThreadPoolExecutor(self.config.bind_workers, thread_name_prefix="write")
        self._to_bind = queue.SimpleQueue()  # this term's own: no stop marker left from the last
        binders = [threading.Thread(target=self._binder, name=f"bind-{i}", daemon=True)
                   for i in range(self.config.bind_workers)]
        for binder in binders:
            binder.start()
        renewed = time.monotonic()
        try:
            while not stop.is_set():
                self.last_loop = now = time.monotonic()
                if now - renewed >= self.config.retry_period:
                    if not self.elector.try_acquire_or_renew():
                        log.warning("lost the lease: standing by")
                        return
                    renewed = now
                self._drain(block_for=self._wait_time(now - renewed))
                self._schedule(pool)
                self._reconcile_workloads(pool)
        except _Resync as exc:
            log.warning("%s: reading the cluster again", exc)
        finally:
            for watch in self._watches:
                watch.stop()
            for _ in binders:
                self._to_bind.put(None)  # each binder stops after the bindings queued before it
            for binder in binders:
                binder.join()
            pool.shutdown(wait=True)
            self._drain(block_for=0)
            self._watches = []
            self.synced = False

    def _wait_time(self, since_renew: float) -> float:
        due = self.queue.next_due()
        wait = self.config.retry_period - since_renew
        if due is not None:
            wait = min(wait, due)
        if self.cache.stale and len(self.queue):
            wait = 0.0
        return max(0.0, min(wait, 0.5))

    def _sync(self) -> None:
        """One LIST of nodes and of pods, then watches from their resourceVersions."""
        self.cache = ClusterCache(self.config.scheduler_name)
        self.queue = PendingQueue(self.config.aging_per_second, self.config.backoff_initial,
                                  self.config.backoff_max)
        self.requests.clear()
        self.in_flight.clear()
        self._placers.clear()
        self.workloads.clear()
        self.live_pods.clear()
        nodes, nodes_rv = self.api.list(NODES)
        pods, pods_rv = self.api.list(PODS)
        watched = [(NODES, nodes_rv), (PODS, pods_rv)]
        try:
            workloads, workloads_rv = self.api.list(GPU_WORKLOADS)
            watched.append((GPU_WORKLOADS, workloads_rv))
        except KUBE_ERRORS as exc:
            if getattr(exc, "status", None) != 404:
                raise
            workloads = []
            log.info("no GPUWorkload resource on this cluster (the CRD is not installed): pods only")
        for node in nodes:
            self.cache.on_node("ADDED", node)
        for pod in pods:
            self._on_pod("ADDED", pod)
        for workload in workloads:
            self._on_workload("ADDED", workload)
        for resource, version in watched:
            watch = Watch(self.api, resource, resource_version=version,
                          timeout_seconds=self.config.watch_timeout)
            self._watches.append(watch)
            threading.Thread(target=self._pump, args=(resource.kind, watch), daemon=True,
                             name=f"watch-{resource.plural}").start()
        self.synced = True
        log.info("leading: %d nodes, %d pods, %d pending for %s", len(nodes), len(pods), len(self.queue),
                 self.config.scheduler_name)

    def _pump(self, kind: str, watch: Watch) -> None:
        try:
            for event in watch:
                self.events.put((kind, event.type, event.object))
        except Exception as exc:  # noqa: BLE001 - a dead watch must not go unnoticed
            log.error("%s watch ended: %s", kind, exc)
            self.events.put(("watch-failed", kind, None))

    def _drain(self, block_for: float) -> None:
        try:
            item = self.events.get(timeout=block_for) if block_for > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(*item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                break
        self._update_gauges()

    def _apply(self, kind: str, event_type: str, obj: dict | None) -> None:
        if kind == "Node":
            self.cache.on_node(event_type, obj)
        elif kind == "Pod":
            self._on_pod(event_type, obj)
        elif kind == "GPUWorkload":
            self._on_workload(event_type, obj)
        elif kind == "bound":
            self._bound(event_type, obj)
        elif kind == "create-failed":
            self._create_failed(event_type, obj)
        elif kind == "watch-failed":
            raise _Resync(f"the {event_type} watch ended")
        if self.cache.room_freed:
            self.cache.room_freed = False
            self.queue.retry_unschedulable()

    def _on_pod(self, event_type: str, pod: dict) -> None:
        uid = _uid(pod)
        key = _key(pod)
        if event_type == "DELETED":
            self.live_pods.pop(key, None)
        else:
            self.live_pods[key] = pod
        workload = ((pod["metadata"].get("labels") or {}).get(gpuworkload.WORKLOAD_LABEL))
        if workload:
            self.workload_dirty.add((key[0], workload))
        if event_type != "DELETED" and self.cache.is_ours_pending(pod) and uid not in self.in_flight:
            try:
                self.requests[uid] = request_from_item({"kind": "Pod", **pod})
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("pod %s/%s cannot be scheduled: %s", pod["metadata"].get("namespace"),
                            pod["metadata"].get("name"), exc)
                self.requests.pop(uid, None)
                return
            self.queue.add(uid, pod)
        else:
            if uid not in self.in_flight:
                self.queue.remove(uid)
                self.requests.pop(uid, None)
        self.cache.on_pod(event_type, pod)

    # -- deciding and binding ----------------------------------------------------------------

    def _placer_for(self, policy: str) -> Placer:
        if self.cache.stale:
            self._placers.clear()
        placer = self._placers.get(policy)
        if placer is None:
            placer = self._placers[policy] = self.cache.placer(policy, self.config.seed,
                                                               self.config.typical_requests)
        return placer

    def _policy(self, pod: dict) -> str:
        annotations = pod["metadata"].get("annotations") or {}
        return annotations.get(gpuworkload.STRATEGY_ANNOTATION) or self.config.policy

    def _schedule(self, pool: ThreadPoolExecutor) -> None:
        uids = self.queue.ready(self.requests)
        done: set[str] = set()
        for uid in uids:
            if uid in done:
                continue
            gang = self._gang(uid)
            if gang is None:  # not all members are pending yet: wait for them, no back-off
                continue
            done.update(gang)
            self._place_together(gang, pool)
        self._update_gauges()

    def _gang(self, uid: str) -> list[str] | None:
        """The uids placed together with this one: itself, or every member of its gang."""
        annotations = self.queue.pods[uid]["metadata"].get("annotations") or {}
        name = annotations.get(gpuworkload.GANG_ANNOTATION)
        if not name:
            return [uid]
        namespace = self.queue.pods[uid]["metadata"].get("namespace")
        members = [other for other, pod in self.queue.pods.items()
                   if (pod["metadata"].get("annotations") or {}).get(gpuworkload.GANG_ANNOTATION) == name
                   and pod["metadata"].get("namespace") == namespace and other in self.requests]
        size = int(annotations.get(gpuworkload.GANG_SIZE_ANNOTATION) or 1)
        return sorted(members, key=lambda other: self.queue.sequence[other]) if len(members) >= size else None

    def _place_together(self, uids: list[str], pool: ThreadPoolExecutor) -> None:
        """Decide every pod of `uids`; bind them all, or (one does not fit) none."""
        placed: list[tuple[str, Decision]] = []
        for uid in uids:
            pod = self.queue.pods[uid]
            policy = self._policy(pod)
            placer = self._placer_for(policy)
            decision = placer.decide(self.requests[uid], report=False)
            if not decision.placed:
                # Rare: decide again, counting what each filter removed, for the event.
                decision = placer.decide(self.requests[uid], report=True)
                self._refuse(uids, uid, decision, pool, trial_committed=bool(placed))
                return
            placer.commit(decision)
            # The other policies' snapshots do not hold this commit: rebuild them when used.
            self._placers = {policy: placer}
            placed.append((uid, decision))
        for uid, decision in placed:
            pod = self.queue.pods[uid]
            self.metrics.decisions.labels(result="placed").inc()
            self.cache.assume(pod, decision)
            self.in_flight[uid] = (time.monotonic(), self.queue.first_seen[uid])
            self.queue.remove(uid)
            self.requests.pop(uid, None)
            self._to_bind.put((pod, decision))

    def _refuse(self, uids: list[str], culprit: str, decision: Decision, pool: ThreadPoolExecutor,
                trial_committed: bool) -> None:
        if trial_committed:
            self.cache.stale = True  # undo the gang's trial commits: rebuild from the model
        summary = decision.why_not()
        if len(uids) > 1:
            culprit_name = self.queue.pods[culprit]["metadata"]["name"]
            summary = f"gang of {len(uids)}: {culprit_name} does not fit ({summary})"
        for uid in uids:
            pod = self.queue.pods[uid]
            self.metrics.decisions.labels(result="unschedulable").inc()
            self.metrics.unschedulable.labels(reason=_reason(decision)).inc()
            delay = self.queue.back_off(uid)
            note = decision.why_not() if uid == culprit else summary
            pool.submit(self._report_unschedulable, pod, note, delay)
            workload = (pod["metadata"].get("labels") or {}).get(gpuworkload.WORKLOAD_LABEL)
            if workload:
                key = (pod["metadata"].get("namespace", "default"), workload)
                self.workload_unschedulable[key] = summary
                self.workload_dirty.add(key)

    def _binder(self) -> None:
        bindings = self._to_bind
        while (job := bindings.get()) is not None:
            try:
                self._bind(*job)
            except Exception as exc:  # noqa: BLE001 - the pod must not stay assumed; the thread lives on
                log.exception("binding %s failed", job[0]["metadata"].get("name"))
                self.events.put(("bound", f"binding failed: {exc}", job[0]))

    def _bind(self, pod: dict, decision: Decision) -> None:
        meta = pod["metadata"]
        error = None
        try:
            self.api.bind_pod(meta.get("namespace", "default"), meta["name"], decision.node,
                              uid=meta.get("uid"), annotations=binding_annotations(decision))
        except KUBE_ERRORS as exc:
            error = describe_error(exc)
        self.events.put(("bound", error, pod))

    def _bound(self, error: str | None, pod: dict) -> None:
        uid = _uid(pod)
        sent, first_seen = self.in_flight.pop(uid, (None, None))
        if sent is not None:
            self.metrics.binding_duration.observe(time.monotonic() - sent)
        if error is None:
            self.metrics.bindings.labels(result="ok").inc()
            if first_seen is not None:
                self.metrics.pod_scheduling_duration.observe(time.monotonic() - first_seen)
            return
        self.metrics.bindings.labels(result="error").inc()
        log.warning("binding %s/%s failed: %s", pod["metadata"].get("namespace"), pod["metadata"]["name"],
                    error)
        self.cache.forget(uid)
        if "already assigned" not in error:  # bound by another scheduler: nothing left to do
            self.queue.add(uid, pod)
            self.requests[uid] = request_from_item({"kind": "Pod", **pod})
            self.queue.back_off(uid)

    def _report_unschedulable(self, pod: dict, why_not: str, retry_in: float) -> None:
        """FailedScheduling Event and PodScheduled=False, as kube-scheduler reports them."""
        meta = pod["metadata"]
        namespace = meta.get("namespace", "default")
        message = f"0/{len(self.cache.nodes)} nodes are available: {why_not}; retry in {retry_in:g}s"
        try:
            event = pod_event(pod, "FailedScheduling", message, "Warning", self.config.identity)
            self.api.create_event(event, namespace)
            self.api.patch(PODS, meta["name"], {"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}},
                namespace, subresource="status", content_type=STRATEGIC_MERGE_PATCH)
        except KUBE_ERRORS as exc:
            log.info("could not report %s/%s unschedulable: %s", namespace, meta["name"], describe_error(exc))

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(len(self.queue))
        placer = self._placers.get(self.config.policy)
        if placer is None or self.cache.stale:
            return
        # The ratios scan every GPU of the fleet: not after every batch of events.
        now = time.monotonic()
        if now - self._gauges_at < self.config.gauge_interval and self._gauge_capacity[0] is placer.fleet:
            return
        self._gauges_at = now
        fleet = placer.fleet
        if self._gauge_capacity[0] is not fleet:
            # Failed GPUs (free 0, never offered) count neither as capacity nor as allocated.
            # Counted once per model build: this runs after every batch of events.
            self._gauge_capacity = (fleet, MILLI_PER_GPU * sum(
                1 for node in fleet.nodes for gpu in node.gpus if gpu.health != "fail"))
        capacity = self._gauge_capacity[1]
        if not capacity:
            return
        free = fleet.gpu_free.clip(min=0)
        self.metrics.gpu_allocation_ratio.set(1 - free.sum() / capacity)
        partial = free[(free > 0) & (free < MILLI_PER_GPU)].sum()
        self.metrics.gpu_partial_idle_ratio.set(partial / free.sum() if free.sum() else 0.0)

    # -- GPUWorkloads ------------------------------------------------------------------------

    def _on_workload(self, event_type: str, workload: dict) -> None:
        key = _key(workload)
        if event_type == "DELETED" or workload["metadata"].get("deletionTimestamp"):
            self.workloads.pop(key, None)
            self.workload_unschedulable.pop(key, None)
            self.workload_dirty.discard(key)
            return
        self.workloads[key] = workload
        self.workload_dirty.add(key)

    def _reconcile_workloads(self, pool: ThreadPoolExecutor) -> None:
        """Create the pods a workload lacks and refresh the status of those that changed."""
        while self.workload_dirty:
            key = self.workload_dirty.pop()
            workload = self.workloads.get(key)
            if workload is None:
                continue
            namespace = key[0]
            try:
                wanted = gpuworkload.pods_for(workload, self.config.scheduler_name)
            except gpuworkload.WorkloadError as exc:
                status = {"phase": "Invalid", "conditions": [
                    {"type": "Placed", "status": "False", "reason": "Invalid", "message": str(exc)}]}
                pool.submit(self._write_workload_status, workload, status)
                continue
            now = time.monotonic()
            missing = [pod for pod in wanted if (namespace, pod["metadata"]["name"]) not in self.live_pods
                       and now - self.create_failed.get((namespace, pod["metadata"]["name"]), -1e9) > 5]
            for pod in missing:
                self.live_pods[(namespace, pod["metadata"]["name"])] = pod  # created once
                pool.submit(self._create_pod, namespace, pod)
            pods = [self.live_pods[(namespace, pod["metadata"]["name"])] for pod in wanted
                    if (namespace, pod["metadata"]["name"]) in self.live_pods]
            status = gpuworkload.status_for(workload, [p for p in pods if p not in missing],
                                            self.workload_unschedulable.get(key))
            if status["placed"] >= status["replicas"]:
                self.workload_unschedulable.pop(key, None)
            old = workload.get("status") or {}
            if gpuworkload.status_differs(old, status):
                status = gpuworkload.with_transition_time(status, old)
                workload["status"] = status  # what we wrote is what we compare with next
                pool.submit(self._write_workload_status, workload, status)

    def _create_pod(self, namespace: str, pod: dict) -> None:
        try:
            self.api.create_pod(namespace, pod)
        except KUBE_ERRORS as exc:
            if getattr(exc, "status", None) != 409:
                self.events.put(("create-failed", describe_error(exc), pod))

    def _create_failed(self, error: str, pod: dict) -> None:
        """Creating a workload's pod failed: say so in its status, try again in a few seconds."""
        key = _key(pod)
        log.warning("creating pod %s/%s failed: %s", key[0], key[1], error)
        self.live_pods.pop(key, None)
        self.create_failed[key] = time.monotonic()
        workload = (pod["metadata"].get("labels") or {}).get(gpuworkload.WORKLOAD_LABEL)
        if workload:
            self.workload_unschedulable[(key[0], workload)] = f"creating pod {key[1]} failed: {error}"
            self.workload_dirty.add((key[0], workload))

    def _write_workload_status(self, workload: dict, status: dict) -> None:
        meta = workload["metadata"]
        try:
            self.api.patch(GPU_WORKLOADS, meta["name"], {"status": status}, meta.get("namespace"),
                           subresource="status")
        except KUBE_ERRORS as exc:
            log.info("status of GPUWorkload %s/%s not written: %s", meta.get("namespace"), meta["name"],
                     describe_error(exc))


def _key(obj: dict) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace") or "default", meta["name"]
