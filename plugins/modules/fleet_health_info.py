#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: fleet_health_info
short_description: List the GPU nodes of a cluster with their health, taints, cordon and quarantine state
version_added: "0.1.0"
description:
  - Reads every node in one LIST request (never one request per node) and
    reports, for each GPU node, the gpufleet health label and severity, the
    last check time, readiness, cordon, taints, quarantine record and result,
    and the GPU inventory (model, count, allocatable, per-GPU details when the
    health agent published them).
  - Filters by state, so a playbook or an AWX survey can pick, for example,
    the idle healthy nodes to sweep or the quarantined ones to look at.
  - Never changes anything.
extends_documentation_fragment:
  - gpufleet.cluster.kube_auth
  - gpufleet.cluster.attributes
  - gpufleet.cluster.attributes.KUBERNETES
  - gpufleet.cluster.attributes.INFO_MODULE
options:
  states:
    description:
      - Keep only nodes in any of these states. C(healthy), C(warning),
        C(unhealthy) and C(unknown) come from the C(gpufleet.io/health) label
        (a node with the C(gpufleet.io/unhealthy) taint is C(unhealthy) too);
        C(quarantined), C(cordoned), C(maintenance) (sweep taint), C(not_ready),
        C(schedulable) (ready, not cordoned, not quarantined); C(idle) and C(busy)
        (no pod / some pod using GPUs on the node) need I(include_workloads).
    type: list
    elements: str
    choices: [healthy, warning, unhealthy, unknown, quarantined, cordoned, maintenance, not_ready,
              schedulable, idle, busy]
  names:
    description: Keep only these nodes.
    type: list
    elements: str
  label_selector:
    description: A label selector passed to the API (for example C(node-role.kubernetes.io/gpu=true)).
    type: str
  include_workloads:
    description:
      - Also report the pods using GPUs on each node (C(gpu_pods), C(gpus_in_use))
        and the C(idle)/C(busy) states. Costs one more request - the pods of the
        node when I(names) has one name, else one LIST of all pods.
      - Implied when I(states) asks for C(idle) or C(busy).
    type: bool
    default: false
  gpu_only:
    description: Only nodes with GPUs (C(nvidia.com/gpu) capacity or the C(nvidia.com/gpu.present) label).
    type: bool
    default: true
notes:
  - Read-only; runs the same in check mode.
seealso:
  - module: gpufleet.cluster.node_quarantine
author:
  - gpufleet maintainers (@gpufleet)
"""

EXAMPLES = r"""
- name: Find quarantined GPU nodes
  gpufleet.cluster.fleet_health_info:
    states: [quarantined]
  register: fleet

- name: Show them
  ansible.builtin.debug:
    msg: "{{ fleet.nodes | map(attribute='name') | list }}"

- name: Healthy, schedulable nodes for a sweep
  gpufleet.cluster.fleet_health_info:
    states: [schedulable]
    label_selector: "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3"
  register: candidates
"""

RETURN = r"""
nodes:
  description: The GPU nodes that match, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Node name., type: str}
    health: {description: "gpufleet.io/health label (pass, warn, fail, unknown).", type: str}
    severity: {description: "gpufleet.io/severity label (PASS ... ISOLATE).", type: str}
    last_check: {description: gpufleet.io/last-check label., type: str}
    ready: {description: The node's Ready condition., type: bool}
    cordoned: {description: spec.unschedulable., type: bool}
    taints: {description: The node's taints., type: list}
    quarantined: {description: Whether the node is quarantined., type: bool}
    quarantine: {description: The gpufleet.io/quarantine record., type: dict}
    quarantine_result: {description: The last quarantine diagnostics result., type: dict}
    gpu_model: {description: GPU product., type: str}
    gpu_count: {description: GPUs on the node., type: int}
    gpu_allocatable: {description: Allocatable nvidia.com/gpu., type: int}
    gpus: {description: Per-GPU inventory from the health agent (gpufleet.io/gpus)., type: list}
    states: {description: The states the node is in (see the states option)., type: list}
    gpu_pods: {description: "Pods using GPUs on the node (namespace/name); include_workloads.", type: list}
    gpus_in_use: {description: "GPUs those pods request; include_workloads.", type: int}
  sample:
    - name: gpu-01
      health: pass
      severity: PASS
      cordoned: false
      quarantined: false
      gpu_model: NVIDIA-H100-80GB-HBM3
      gpu_count: 8
      states: [healthy, schedulable]
counts:
  description: How many of the listed GPU nodes are in each state, plus C(total) and C(gpus).
  returned: always
  type: dict
  sample: {"total": 20, "gpus": 160, "healthy": 18, "quarantined": 1, "cordoned": 1}
names:
  description: The names of the matching nodes (handy for loops and AWX surveys).
  returned: always
  type: list
  elements: str
"""


from ansible_collections.gpufleet.cluster.plugins.module_utils.kube import run_kube_module

STATES = ["healthy", "warning", "unhealthy", "unknown", "quarantined", "cordoned", "maintenance", "not_ready",
          "schedulable", "idle", "busy"]


ARGUMENT_SPEC = dict(
    states=dict(type="list", elements="str", choices=STATES),
    names=dict(type="list", elements="str"),
    label_selector=dict(type="str"),
    include_workloads=dict(type="bool", default=False),
    gpu_only=dict(type="bool", default=True),
)


def run(module, api):
    from gpufleet.kube import fleet

    params = module.params
    nodes = fleet.list_fleet(api, label_selector=params["label_selector"], gpu_only=params["gpu_only"],
                             names=params["names"])
    if params["include_workloads"] or set(params["states"] or []) & {"idle", "busy"}:
        fleet.attach_workloads(api, nodes)
    nodes = fleet.filter_fleet(nodes, states=params["states"])
    return dict(changed=False, nodes=nodes, names=[n["name"] for n in nodes],
                counts=fleet.fleet_counts(nodes))


def main():
    run_kube_module(ARGUMENT_SPEC, run, what=lambda params: "listing the fleet")


if __name__ == "__main__":
    main()
