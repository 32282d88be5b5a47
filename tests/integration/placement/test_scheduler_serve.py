"""`gpufleet place serve` against the API emulator: binds, refusals, health, leader election.

Every test runs the real scheduler loop on threads, talking HTTP to the emulator
through the `kubernetes` client (gpufleet.kube), and judges by what the API
server stored and answered, never by the scheduler's own account.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
from fixtures.infra_services import wait_until as wait_for
from fixtures.kube_api import pod_object
from gpufleet.kube.api import KubeApi
from gpufleet.placement.serve import GpuScheduler, ServeConfig

pytestmark = [pytest.mark.integration]

WAIT = 120.0  # generous: the loop binds in milliseconds on an idle machine


def pending_pod(name, gpus=1, cpu="1", annotations=None, scheduler="gpufleet", priority=None):
    pod = pod_object(name, gpus=gpus, cpu=cpu, phase="Pending", annotations=annotations)
    pod["spec"]["schedulerName"] = scheduler
    if priority is not None:
        pod["spec"]["priority"] = priority
    return pod


class Running:
    """A scheduler instance on a thread; `crash()` stops it without giving up the Lease."""

    def __init__(self, kube_api, identity="sched-a", **overrides):
        config = ServeConfig(identity=identity, seed=1, backoff_initial=0.2, backoff_max=1.0, **overrides)
        self.scheduler = GpuScheduler(KubeApi(kube_api.api_client), config)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.scheduler.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def crash(self):
        self.scheduler.elector.release = lambda: None
        self.shutdown()

    def shutdown(self):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the scheduler did not stop"


@pytest.fixture
def running(kube_api):
    instances = []

    def start(**kwargs):
        instance = Running(kube_api, **kwargs)
        instances.append(instance)
        return instance

    yield start
    for instance in instances:
        if instance.thread.is_alive():
            instance.shutdown()


def wait_until(predicate, what, timeout=WAIT):
    return wait_for(predicate, timeout, what)


def pods(kube_api):
    return {p["metadata"]["name"]: p for p in kube_api.list_objects("pods", "default")}


def failed_scheduling(kube_api):
    events = kube_api.list_objects("events.events.k8s.io", "default")
    return {e["regarding"]["name"]: e for e in events if e.get("reason") == "FailedScheduling"}


def successful_bindings(kube_api):
    return Counter(r.path.split("/")[-2] for r in kube_api.requests
                   if r.method == "POST" and r.path.endswith("/binding"))


def test_a_thousand_pods_on_a_thousand_nodes_are_bound_or_refused_with_a_reason(kube_api, running):
    for i in range(1000):
        kube_api.add_node(f"gpu-{i:04d}", gpus=1, cpu="8", memory="64Gi")
    for i in range(1000):
        kube_api.add_object("pods", pending_pod(f"train-{i:04d}"))
    for i in range(5):  # no node has two GPUs
        kube_api.add_object("pods", pending_pod(f"too-big-{i}", gpus=2))
    kube_api.add_object("pods", pending_pod("someone-elses", scheduler="default-scheduler"))

    running()
    wait_until(lambda: sum(1 for p in pods(kube_api).values() if p["spec"].get("nodeName")) == 1000,
               "1,000 bindings")
    refused = wait_until(lambda: len(failed_scheduling(kube_api)) == 5 and failed_scheduling(kube_api),
                         "5 FailedScheduling events")

    stored = pods(kube_api)
    bound = {name: p for name, p in stored.items() if p["spec"].get("nodeName")}
    assert set(bound) == {f"train-{i:04d}" for i in range(1000)}
    # One pod per one-GPU node, each with the GPU it was given.
    assert len({p["spec"]["nodeName"] for p in bound.values()}) == 1000
    assert {p["metadata"]["annotations"]["gpufleet.io/assigned-gpus"] for p in bound.values()} == {"0"}
    assert not stored["someone-elses"]["spec"].get("nodeName")
    for name in (f"too-big-{i}" for i in range(5)):
        assert "no node fits" in refused[name]["note"] and "resources removed 1000" in refused[name]["note"]
        condition = {c["type"]: c for c in stored[name]["status"].get("conditions") or []}["PodScheduled"]
        assert (condition["status"], condition["reason"]) == ("False", "Unschedulable")
    assert max(successful_bindings(kube_api).values()) == 1


def test_fenced_cordoned_and_failed_gpus_are_never_chosen(kube_api, running):
    kube_api.add_node("fenced", gpus=8, taints=[{"key": "gpufleet.io/unhealthy", "value": "RESET",
                                                 "effect": "NoSchedule"}])
    kube_api.add_node("quarantined", gpus=8, taints=[{"key": "gpufleet.io/quarantine", "value": "xid-79",
                                                      "effect": "NoExecute"}])
    kube_api.add_node("cordoned", gpus=8, unschedulable=True)
    kube_api.add_node("failing", gpus=8, labels={"gpufleet.io/health": "fail"})
    inventory = [{"index": i, "model": "NVIDIA-H100-80GB-HBM3", "health": "fail" if i == 0 else "pass"}
                 for i in range(2)]
    kube_api.add_node("half-bad", gpus=2, annotations={"gpufleet.io/gpus": json.dumps(inventory)})
    for i in range(3):
        kube_api.add_object("pods", pending_pod(f"job-{i}"))

    running()
    wait_until(lambda: pods(kube_api)["job-0"]["spec"].get("nodeName") or None, "the first pod bound")
    wait_until(lambda: len(failed_scheduling(kube_api)) == 2, "two pods refused")
    bound = [p for p in pods(kube_api).values() if p["spec"].get("nodeName")]
    # Only the healthy GPU 1 of half-bad was usable: one pod fits, the others are refused.
    assert [(p["spec"]["nodeName"], p["metadata"]["annotations"]["gpufleet.io/assigned-gpus"])
            for p in bound] == [("half-bad", "1")]
    notes = " ".join(e["note"] for e in failed_scheduling(kube_api).values())
    assert "taints removed" in notes or "health removed" in notes


def test_priority_goes_first_when_there_is_room_for_one(kube_api, running):
    kube_api.add_node("only", gpus=1)
    kube_api.add_object("pods", pending_pod("low", priority=0))
    kube_api.add_object("pods", pending_pod("high", priority=100))
    running()
    wait_until(lambda: pods(kube_api)["high"]["spec"].get("nodeName"), "the high-priority pod bound")
    assert not pods(kube_api)["low"]["spec"].get("nodeName")
    # Room appears (the high pod ends): the low pod is retried at once, not after its back-off.
    kube_api.delete_object("pods", "high", "default")
    wait_until(lambda: pods(kube_api)["low"]["spec"].get("nodeName"), "the low-priority pod bound")


def test_a_standby_takes_over_a_crashed_leader_and_no_pod_is_bound_twice(kube_api, running):
    for i in range(20):
        kube_api.add_node(f"gpu-{i:02d}", gpus=8)
    lease = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.5}
    first = running(identity="sched-a", **lease)
    wait_until(lambda: first.scheduler.elector.is_leader(), "a leader")
    second = running(identity="sched-b", **lease)
    for i in range(40):
        kube_api.add_object("pods", pending_pod(f"before-{i:02d}"))
    wait_until(lambda: all(p["spec"].get("nodeName") for p in pods(kube_api).values()), "the first 40 bound")
    assert not second.scheduler.elector.is_leader()

    first.crash()
    crashed_at = time.monotonic()
    for i in range(40):
        kube_api.add_object("pods", pending_pod(f"after-{i:02d}"))
    wait_until(lambda: all(p["spec"].get("nodeName") for p in pods(kube_api).values()), "the standby binding")
    took_over = time.monotonic() - crashed_at
    lease_obj = kube_api.get_object("leases", "gpufleet-scheduler", "kube-system")
    assert lease_obj["spec"]["holderIdentity"] == "sched-b"
    assert took_over < WAIT
    bindings = successful_bindings(kube_api)
    assert len(bindings) == 80 and max(bindings.values()) == 1
    # 8 GPUs a node: nothing over-allocated.
    per_node = Counter(p["spec"]["nodeName"] for p in pods(kube_api).values())
    assert max(per_node.values()) <= 8


def test_a_graceful_stop_hands_the_lease_over_at_once(kube_api, running):
    kube_api.add_node("gpu-0", gpus=8)
    lease = {"lease_duration": 30.0, "renew_deadline": 20.0, "retry_period": 0.5}
    first = running(identity="sched-a", **lease)
    wait_until(lambda: first.scheduler.elector.is_leader(), "a leader")
    second = running(identity="sched-b", **lease)
    first.shutdown()
    # Well before the 30 s lease would expire, the standby leads.
    wait_until(lambda: second.scheduler.elector.is_leader(), "the standby leading", timeout=15)
    kube_api.add_object("pods", pending_pod("after"))
    wait_until(lambda: pods(kube_api)["after"]["spec"].get("nodeName"), "the pod bound by the new leader")


def gpu_workload(name, replicas=2, gpus=1, gang=False, **spec):
    return {"apiVersion": "gpufleet.io/v1alpha1", "kind": "GPUWorkload",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "gpusPerReplica": gpus, "gang": gang,
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "main", "image": "busybox:stable"}]}},
                     **spec}}


def workload_status(kube_api, name):
    return (kube_api.get_object("GPUWorkload", name, "default") or {}).get("status") or {}


def test_a_gpu_workload_gets_its_pods_placed_and_its_status_kept(kube_api, running):
    for i in range(2):
        kube_api.add_node(f"gpu-{i}", gpus=8)
    kube_api.add_object("GPUWorkload", gpu_workload("train", replicas=3, gpus=4, gang=True, priority=5))
    running()
    status = wait_until(lambda: workload_status(kube_api, "train").get("phase") == "Placed"
                        and workload_status(kube_api, "train"), "the workload placed")
    assert status["placed"] == 3 and status["conditions"][0]["reason"] == "AllPlaced"
    created = {name: p for name, p in pods(kube_api).items() if name.startswith("train-")}
    assert sorted(created) == ["train-0", "train-1", "train-2"]
    for pod in created.values():
        assert pod["spec"]["schedulerName"] == "gpufleet"
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "GPUWorkload"
        assert pod["metadata"]["labels"]["app"] == "train"
    assert sorted((p["pod"], len(p["gpus"])) for p in status["placements"]) == \
        [("train-0", 4), ("train-1", 4), ("train-2", 4)]
    # 12 GPUs on two 8-GPU nodes: one node holds two replicas, the other one.
    assert sorted(Counter(p["node"] for p in status["placements"]).values()) == [1, 2]


def test_a_gang_that_does_not_fit_whole_binds_nothing(kube_api, running):
    for i in range(2):
        kube_api.add_node(f"gpu-{i}", gpus=8)
    kube_api.add_object("GPUWorkload", gpu_workload("big", replicas=3, gpus=8, gang=True))
    kube_api.add_object("GPUWorkload", gpu_workload("loose", replicas=3, gpus=8, gang=False))
    running()
    wait_until(lambda: workload_status(kube_api, "big").get("conditions", [{}])[0].get("reason")
               == "Unschedulable", "the gang reported unschedulable")
    # Without a gang, two of three replicas run; the gang's replicas never take a node.
    wait_until(lambda: workload_status(kube_api, "loose").get("placed") == 2, "two loose replicas placed")
    assert all(not p["spec"].get("nodeName") for name, p in pods(kube_api).items() if name.startswith("big-"))
    assert workload_status(kube_api, "big")["phase"] == "Pending"
    assert "does not fit" in workload_status(kube_api, "big")["conditions"][0]["message"]


def test_an_invalid_workload_says_what_is_wrong(kube_api, running):
    kube_api.add_node("gpu-0", gpus=8)
    kube_api.add_object("GPUWorkload", gpu_workload("bad", replicas=0))
    running()
    status = wait_until(lambda: workload_status(kube_api, "bad").get("phase") == "Invalid"
                        and workload_status(kube_api, "bad"), "the workload marked invalid")
    assert "spec.replicas" in status["conditions"][0]["message"]
    assert not [name for name in pods(kube_api) if name.startswith("bad-")]
