"""Prometheus metrics of one agent (a registry per agent, so tests can run several)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from gpufleet.agent.core import Agent


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Names follow Backend.AI's agent metrics.
        self.rpc_requests = Counter("backendai_rpc_requests", "RPC requests handled", ["method"], registry=r)
        self.rpc_failures = Counter("backendai_rpc_failure_requests", "RPC requests that failed",
                                    ["method", "status"], registry=r)
        self.rpc_duration = Histogram("backendai_rpc_request_duration_seconds", "RPC request latency",
                                      ["method"], registry=r,
                                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                               10))
        self.kernels = Gauge("gpufleet_agent_kernels", "Kernels registered on this agent", registry=r)
        self.heartbeat_age = Gauge("gpufleet_agent_heartbeat_age_seconds", "Seconds since the last heartbeat",
                                   registry=r)
        self.slot_capacity = Gauge("gpufleet_agent_slot_capacity", "Slot capacity", ["slot"], registry=r)
        self.slot_used = Gauge("gpufleet_agent_slot_used", "Slots allocated to kernels", ["slot"], registry=r)
        self.slot_utilisation = Gauge("gpufleet_agent_slot_utilisation_ratio", "Allocated / capacity",
                                      ["slot"], registry=r)
        self.device_allocated = Gauge("gpufleet_agent_device_allocated", "1 when the GPU is held by a kernel",
                                      ["device"], registry=r)
        self.ports_free = Gauge("gpufleet_agent_ports_free", "Free ports in the container port pool",
                                registry=r)
        self.events_buffered = Gauge("gpufleet_agent_events_buffered", "Events waiting for Redis", registry=r)
        self.events_dropped = Counter("gpufleet_agent_events_dropped", "Events dropped from a full buffer",
                                      registry=r)
        self.kernel_creation_seconds = Histogram("gpufleet_agent_kernel_creation_seconds",
                                                 "Backend create until the runner answers", registry=r)
        self.kernel_failures = Counter("gpufleet_agent_kernel_creation_failures",
                                       "Kernel creations that failed", registry=r)

    def observe_agent(self, agent: Agent, used: dict[str, Any] | None = None) -> None:
        used = used or agent.allocator.used()
        for slot, capacity in agent.capacity.slots().items():
            self.slot_capacity.labels(slot).set(capacity)
            self.slot_used.labels(slot).set(used[slot])
            self.slot_utilisation.labels(slot).set(used[slot] / capacity if capacity else 0)
        held = {i for a in agent.allocator.allocations().values() for i in a.gpus}
        for gpu in agent.capacity.gpus:
            self.device_allocated.labels(str(gpu.index)).set(1 if gpu.index in held else 0)
        self.kernels.set(len(agent.registry))
        self.ports_free.set(agent.ports.free_count())
        self.events_buffered.set(len(agent.events.buffer))
        if agent.last_heartbeat is not None:
            self.heartbeat_age.set(time.time() - agent.last_heartbeat)

    def render(self) -> bytes:
        return generate_latest(self.registry)
