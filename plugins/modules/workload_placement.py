#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: workload_placement
short_description: Place GPU workloads on the right node and GPUs, and pin them there
version_added: "0.1.0"
description:
  - Reads the cluster (one LIST of nodes, one of pods, the health agent's
    C(gpufleet.io/gpus) inventory), filters the nodes (health, cordon,
    quarantine, taints and tolerations, node selector, GPU model, resources
    including GPU shares), scores them with a I(strategy), breaks ties with
    I(tie_break) and then a seeded random order, and picks the GPUs inside the
    chosen node.
  - Applies the decision by creating the workload (or patching it if it exists)
    with a C(kubernetes.io/hostname) node selector (or a required node affinity,
    see I(pin)), and the annotations C(gpufleet.io/assigned-gpus) (GPU indices,
    e.g. C(0,1)) and C(gpufleet.io/placement) (JSON record of the decision).
    C(NVIDIA_VISIBLE_DEVICES) is set in the containers only with I(visible_devices=true).
  - Idempotent - a workload that already carries a placement is reported C(ok)
    and left alone. A list of workloads is placed in priority order (highest
    first, in the given order within a priority), each decision counting for
    the next.
  - When a workload fits nowhere the task fails, says per filter how many nodes
    it removed, and writes nothing (every decision is made before any write).
  - The logic lives in the C(gpufleet) Python package (C(gpufleet.placement)).
extends_documentation_fragment:
  - gpufleet.cluster.kube_auth
  - gpufleet.cluster.attributes
  - gpufleet.cluster.attributes.KUBERNETES
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  workload:
    description:
      - One workload - a Pod, Job or Deployment manifest, or a resource request
        (C(name), C(cpu), C(memory), C(gpus), C(gpu_milli), C(gpu_models),
        C(priority), C(node_selector), C(tolerations)) - or a list of them.
      - A manifest asks for GPUs with C(nvidia.com/gpu) limits, for a GPU share
        with the annotation C(gpufleet.io/gpu-milli), for models with
        C(gpufleet.io/gpu-models) (C(A100|H100)), and for a priority with
        C(gpufleet.io/priority) (else C(spec.priority)).
      - A resource request is only decided, never written.
    type: raw
    required: true
  strategy:
    description:
      - How nodes are scored (higher wins); see the collection's placement
        documentation for each formula.
    type: str
    default: best_fit
    choices: [best_fit, binpack, least_utilized, balance, round_robin, priority, fgd, fgd_fine, fgd_mem,
              topology, random]
  tie_break:
    description: Strategies that break ties of the one before, in order; then a seeded random order.
    type: list
    elements: str
    default: [topology]
  strategy_options:
    description:
      - "Options of the strategy, for example C({node_strategy: fgd, aging_per_second: 0.01})
        for C(priority), C({cursor: 3}) for C(round_robin)."
    type: dict
    default: {}
  seed:
    description: Seed of the final random tie-break (decisions are deterministic for a seed).
    type: int
    default: 0
  pin:
    description: How the workload is pinned to its node.
    type: str
    choices: [node_selector, node_affinity]
    default: node_selector
  visible_devices:
    description: Also set C(NVIDIA_VISIBLE_DEVICES) to the chosen GPU indices in every container.
    type: bool
    default: false
notes:
  - Supports check mode - the decision is returned and nothing is written.
  - Supports diff mode - the placement each workload gets.
requirements:
  - gpufleet (the collection's Python package) and kubernetes on the host that runs the module.
seealso:
  - module: gpufleet.cluster.node_quarantine
author:
  - gpufleet maintainers (@gpufleet)
"""

EXAMPLES = r"""
- name: Place a training job on the best-fitting node, pinned to its GPUs
  gpufleet.cluster.workload_placement:
    workload: "{{ lookup('file', 'train-job.yaml') | from_yaml }}"
    strategy: fgd
    visible_devices: true

- name: Where would these go? (nothing is written)
  gpufleet.cluster.workload_placement:
    workload:
      - {name: infer, cpu: 2, memory: 8Gi, gpu_milli: 250, priority: 5}
      - {name: train, cpu: 32, memory: 256Gi, gpus: 4, gpu_models: [H100]}
    strategy: topology
  check_mode: true
  register: plan

- name: A batch of pods, highest priority first, spread across nodes
  gpufleet.cluster.workload_placement:
    kubeconfig: /etc/rancher/k3s/k3s.yaml
    workload: "{{ pods }}"
    strategy: least_utilized
"""

RETURN = r"""
node:
  description: The node chosen for the (first) workload.
  returned: success
  type: str
  sample: gpu-03
gpus:
  description: GPU indices chosen on that node.
  returned: success
  type: list
  elements: int
  sample: [0, 1]
score:
  description: The strategy's score (0..100) of the chosen node.
  returned: success
  type: int
  sample: 87
runner_up:
  description: The next-best node and its score (null when it was the only candidate or already placed).
  returned: success
  type: dict
  sample: {"node": "gpu-05", "score": 80}
placements:
  description: One entry per workload, in the order they were placed.
  returned: always
  type: list
  elements: dict
  sample:
    - workload: Job/default/train
      node: gpu-03
      gpus: [0, 1]
      score: 87
      runner_up: {node: gpu-05, score: 80}
      action: created
      changed: true
      filters: [{filter: health, removed: 1}, {filter: resources, removed: 2}]
filters:
  description: For a failure, per workload that fits nowhere, how many nodes each filter removed.
  returned: failure
  type: list
  elements: dict
"""


from ansible_collections.gpufleet.cluster.plugins.module_utils.kube import run_kube_module

STRATEGIES = ["best_fit", "binpack", "least_utilized", "balance", "round_robin", "priority", "fgd",
              "fgd_fine", "fgd_mem", "topology", "random"]


ARGUMENT_SPEC = dict(
    workload=dict(type="raw", required=True),
    strategy=dict(type="str", default="best_fit", choices=STRATEGIES),
    tie_break=dict(type="list", elements="str", default=["topology"]),
    strategy_options=dict(type="dict", default={}),
    seed=dict(type="int", default=0),
    pin=dict(type="str", choices=["node_selector", "node_affinity"], default="node_selector"),
    visible_devices=dict(type="bool", default=False),
)


def run(module, api):
    from gpufleet.placement import kube as placement

    params = module.params
    items = params["workload"] if isinstance(params["workload"], list) else [params["workload"]]
    if not items or not all(isinstance(item, dict) for item in items):
        module.fail_json(msg="workload must be a manifest or resource request (a dict), or a list of them")
    unknown = [name for name in params["tie_break"] if name not in STRATEGIES]
    if unknown:
        module.fail_json(msg="unknown tie_break strategies: %s" % ", ".join(unknown))
    try:
        result = placement.place_workloads(
            api,
            items,
            strategy=params["strategy"],
            tie_break=params["tie_break"],
            strategy_options=params["strategy_options"],
            seed=params["seed"],
            check=module.check_mode,
            pin=params["pin"],
            visible_devices=params["visible_devices"],
        )
    except placement.NothingFits as exc:
        module.fail_json(msg=str(exc), placements=[],
                         filters=[dict(workload=d.request.name, filters=d.filters) for d in exc.decisions])
    except (ValueError, TypeError) as exc:
        module.fail_json(msg=str(exc))

    first = result["placements"][0] if result["placements"] else {}
    output = dict(
        changed=result["changed"],
        placements=result["placements"],
        node=first.get("node"),
        gpus=first.get("gpus", []),
        score=first.get("score"),
        runner_up=first.get("runner_up"),
    )
    if module._diff:
        output["diff"] = dict(
            before="".join("%s: unplaced\n" % p["workload"] for p in result["placements"] if p["changed"]),
            after="".join("%s: %s GPUs %s\n" % (p["workload"], p["node"], p["gpus"])
                          for p in result["placements"] if p["changed"]),
        )
    return output


def main():
    run_kube_module(ARGUMENT_SPEC, run, what=lambda params: "workload placement")


if __name__ == "__main__":
    main()
