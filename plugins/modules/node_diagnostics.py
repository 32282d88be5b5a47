#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: node_diagnostics
short_description: Run the GPU diagnostics Job on a node and return its verdict
version_added: "0.1.0"
description:
  - Creates a Job pinned to the node (C(spec.nodeName)) that tolerates gpufleet's
    taints, takes the node's GPUs and runs C(gpufleet health check --level N),
    waits for it (bounded by I(timeout)) and returns the verdict the container
    wrote to its termination log, with a recommendation
    (C(return), C(reset), C(reboot), C(replace)).
  - A finished Job of an earlier run on the same node is deleted first.
  - In check mode nothing is created; the Job that would run is returned.
  - This is the Job C(node_quarantine) runs with I(diagnostics), and the health
    sweep runs at level 2.
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.cluster.kube_auth
  - gpufleet.cluster.attributes
  - gpufleet.cluster.attributes.KUBERNETES
attributes:
  check_mode:
    support: full
    details:
      - In check mode the Job manifest that would run is returned and nothing is created.
  diff_mode:
    support: none
options:
  name:
    description: The node to run the diagnostics on.
    type: str
    required: true
  level:
    description: DCGM diagnostics run level (2 for a sweep, 4 for a quarantined node).
    type: int
    default: 2
    choices: [1, 2, 3, 4]
  command:
    description: The container's command, instead of the one I(level) gives.
    type: list
    elements: str
  image:
    description: The image with the gpufleet health agent (and DCGM).
    type: str
    default: localhost/gpufleet/diagnostics:0.1.0
  namespace:
    description: Namespace of the Job.
    type: str
    default: kube-system
  gpus:
    description: GPUs the Job requests (default every GPU the node reports).
    type: int
  timeout:
    description: Seconds to wait for the Job to finish; also its C(activeDeadlineSeconds).
    type: int
    default: 1800
  poll_interval:
    description: Seconds between status reads.
    type: float
    default: 2.0
notes:
  - Supports check mode. The verdict is C(unknown) when the Job did not finish in time.
"""

EXAMPLES = r"""
- name: Level-2 diagnostics on an idle node
  gpufleet.cluster.node_diagnostics:
    name: gpu-node-07
    level: 2
  register: diag

- name: Quarantine it when it failed
  gpufleet.cluster.node_quarantine:
    name: gpu-node-07
    reason: "diagnostics: {{ diag.result.severity }}"
  when: diag.result.verdict == 'fail'
"""

RETURN = r"""
result:
  description: The verdict record.
  returned: always
  type: dict
  sample:
    verdict: fail
    severity: REBOOT
    recommendation: reboot
    job: kube-system/gpufleet-diag-gpu-node-07
    findings: [{check: xid, gpu: "0", severity: REBOOT, message: "Xid 79 ..."}]
job:
  description: The Job manifest created (or, in check mode, that would be).
  returned: always
  type: dict
"""


from ansible_collections.gpufleet.cluster.plugins.module_utils.kube import run_kube_module


ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    level=dict(type="int", default=2, choices=[1, 2, 3, 4]),
    command=dict(type="list", elements="str"),
    image=dict(type="str", default="localhost/gpufleet/diagnostics:0.1.0"),
    namespace=dict(type="str", default="kube-system"),
    gpus=dict(type="int"),
    timeout=dict(type="int", default=1800),
    poll_interval=dict(type="float", default=2.0),
)


def run(module, api):
    from gpufleet.kube import diagnostics, fleet

    params = module.params
    command = params["command"] or diagnostics.diagnostics_command(params["level"])
    gpus = params["gpus"]
    if gpus is None:
        gpus = fleet.gpu_count(api.get_node(params["name"]))
    job = diagnostics.job_manifest(params["name"], gpus, params["image"], command, params["namespace"],
                                   params["timeout"])
    if module.check_mode:
        return dict(changed=True, job=job, result={
            "verdict": "pending", "detail": "check mode: would run the diagnostics Job",
            "job": "%s/%s" % (params["namespace"], job["metadata"]["name"])})
    result = diagnostics.run_diagnostics(api, params["name"], gpus, params["image"], command,
                                         params["namespace"], params["timeout"], params["poll_interval"])
    return dict(changed=True, job=job, result=result)


def main():
    run_kube_module(ARGUMENT_SPEC, run, what=lambda params: "diagnostics on %s" % params["name"],
                    node_names=["name"])


if __name__ == "__main__":
    main()
