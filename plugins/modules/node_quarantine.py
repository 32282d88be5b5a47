#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: node_quarantine
short_description: Quarantine a GPU node (cordon, drain, taint) or return it to service
version_added: "0.1.0"
description:
  - I(state=quarantined) cordons the node (remembering whether it was cordoned
    already), records the annotation C(gpufleet.io/quarantine) (JSON - reason,
    since, by, cordoned-by-us), optionally drains it through the Eviction API,
    then adds the taint C(gpufleet.io/quarantine=true:NoExecute).
  - The drain skips DaemonSet and mirror (static) pods and pods already
    terminating or finished; pods with emptyDir volumes and pods no controller
    manages stop the drain unless I(delete_emptydir_data) / I(delete_unmanaged).
    Evictions refused by a PodDisruptionBudget (HTTP 429) are retried with
    exponential backoff until I(drain_timeout); then the task waits until the
    evicted pods are gone. A drain that does not finish in time fails the task
    and names each pod left and why.
  - The taint is added after the drain on purpose, since a C(NoExecute) taint
    deletes non-tolerating pods at once, regardless of disruption budgets.
  - A new quarantine that would make more than I(max_quarantined) nodes
    quarantined is refused unless I(force=true).
  - I(state=released) returns the node to service - removes the quarantine and
    unhealthy taints that gpufleet added (this module and the health agent), uncordons only if the
    quarantine cordoned it, labels C(gpufleet.io/health=pass) and removes the
    quarantine annotation. An operator's own cordon or taints stay.
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
  name:
    description: Name of the node.
    type: str
    required: true
  state:
    description: Quarantined, or released (returned to service).
    type: str
    choices: [quarantined, released]
    default: quarantined
  reason:
    description: Why the node is quarantined; recorded in the annotation.
    type: str
    default: ""
  requested_by:
    description: Who asks for the quarantine (a person, an AWX job); recorded in the annotation.
    type: str
    default: ansible
  drain:
    description: Evict the node's pods through the Eviction API before adding the quarantine taint.
    type: bool
    default: false
  drain_timeout:
    description: Seconds to wait for the drain (evictions plus pods going away) before failing.
    type: int
    default: 300
  grace_period:
    description: Termination grace period for evicted pods, in seconds (default that of each pod).
    type: int
  delete_emptydir_data:
    description: Evict pods with emptyDir volumes too (their local data is lost).
    type: bool
    default: false
  delete_unmanaged:
    description: Evict pods no controller manages too (nothing recreates them).
    type: bool
    default: false
  max_quarantined:
    description:
      - The most nodes that may be quarantined at once, as a count (C(3)) or a
        percentage of the GPU nodes (C(10%), rounded down, at least 1). Empty
        means no limit. Only a new quarantine is refused; re-running on a node
        already quarantined is always allowed.
    type: str
  force:
    description: Quarantine even beyond I(max_quarantined).
    type: bool
    default: false
  diagnostics:
    description:
      - With I(state=quarantined), run the intensive diagnostics Job on the node
        after the quarantine (and drain) - the health agent image with a DCGM
        level 4 equivalent check, pinned to the node, tolerating gpufleet's
        taints, taking all its GPUs - wait for it, and store its verdict and a
        recommendation (C(return), C(reset), C(reboot) or C(replace)) in the
        annotation C(gpufleet.io/quarantine-result).
      - Runs once per quarantine; re-running the task keeps that result unless I(rerun).
      - The container reports its verdict as JSON in its termination message;
        without one, the Job's success or failure decides.
    type: dict
    suboptions:
      image:
        description: The health agent image.
        type: str
        default: localhost/gpufleet/diagnostics:0.1.0
      command:
        description: The command (default runs C(gpufleet health check --level 4)).
        type: list
        elements: str
      namespace:
        description: Namespace of the Job.
        type: str
        default: kube-system
      timeout:
        description: Seconds to wait for the Job (also its activeDeadlineSeconds).
        type: int
        default: 3600
      rerun:
        description: Run the diagnostics again even if this quarantine has a result.
        type: bool
        default: false
  health_label:
    description: Value for the C(gpufleet.io/health) label on release; empty leaves the label alone.
    type: str
    default: pass
notes:
  - Supports check mode (nothing is written; the drain is planned, not run) and diff mode.
seealso:
  - module: gpufleet.cluster.node_taint
  - module: gpufleet.cluster.fleet_health_info
  - module: kubernetes.core.k8s_drain
author:
  - gpufleet maintainers (@gpufleet)
"""

EXAMPLES = r"""
- name: Quarantine gpu-07 after Xid 79 (GPU fell off the bus), draining it politely
  gpufleet.cluster.node_quarantine:
    name: gpu-07
    reason: "Xid 79 on GPU 3"
    requested_by: "{{ awx_user_name | default('ansible') }}"
    drain: true
    drain_timeout: 900
    max_quarantined: "10%"

- name: Quarantine gpu-07 and run the intensive diagnostics on it
  gpufleet.cluster.node_quarantine:
    name: gpu-07
    reason: "ECC double-bit errors"
    drain: true
    diagnostics:
      image: registry.example.com/gpufleet/health-agent:0.1.0
      timeout: 5400
  register: quarantined

- name: Act on the recommendation
  ansible.builtin.debug:
    msg: "gpu-07: {{ quarantined.diagnostics.recommendation }}"

- name: Return gpu-07 to service
  gpufleet.cluster.node_quarantine:
    name: gpu-07
    state: released
"""

RETURN = r"""
node:
  description: The node after the task (predicted in check mode), as fleet_health_info reports nodes.
  returned: always
  type: dict
quarantine:
  description: The C(gpufleet.io/quarantine) record after the task (null once released).
  returned: always
  type: dict
  sample: {"reason": "Xid 79", "since": "2026-01-01T00:00:00Z", "by": "ansible", "cordoned-by-us": true}
drain_plan:
  description: Which pods the drain evicts (in order), skips and is blocked by, with reasons.
  returned: when drain is true
  type: dict
  sample:
    evict: ["ml/train-0"]
    skipped: [{"pod": "kube-system/dcgm-exporter-x", "reason": "DaemonSet pod"}]
    blocking: []
drain:
  description: What the drain did - evicted pods, PDB refusals per pod, pods left, time taken.
  returned: when pods were evicted
  type: dict
diagnostics:
  description: The diagnostics verdict (also stored in C(gpufleet.io/quarantine-result)).
  returned: when diagnostics is set
  type: dict
  sample: {"verdict": "fail", "severity": "ISOLATE", "recommendation": "replace",
           "job": "kube-system/gpufleet-diag-gpu-07", "quarantine_since": "2026-01-01T00:00:00Z"}
counts:
  description: GPU nodes in the fleet, how many were quarantined before, and the limit.
  returned: state=quarantined
  type: dict
  sample: {"fleet": 20, "quarantined": 1, "limit": 2}
message:
  description: A one-line summary.
  returned: always
  type: str
"""


from ansible_collections.gpufleet.cluster.plugins.module_utils.kube import run_kube_module


def node_view(node):
    """The parts of a node this module changes, for diff output."""
    meta = node.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return dict(
        unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
        taints=(node.get("spec") or {}).get("taints") or [],
        health=(meta.get("labels") or {}).get("gpufleet.io/health"),
        quarantine=annotations.get("gpufleet.io/quarantine"),
    )


ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", choices=["quarantined", "released"], default="quarantined"),
    reason=dict(type="str", default=""),
    requested_by=dict(type="str", default="ansible"),
    drain=dict(type="bool", default=False),
    drain_timeout=dict(type="int", default=300),
    grace_period=dict(type="int"),
    delete_emptydir_data=dict(type="bool", default=False),
    delete_unmanaged=dict(type="bool", default=False),
    max_quarantined=dict(type="str"),
    force=dict(type="bool", default=False),
    diagnostics=dict(type="dict", options=dict(
        image=dict(type="str", default="localhost/gpufleet/diagnostics:0.1.0"),
        command=dict(type="list", elements="str"),
        namespace=dict(type="str", default="kube-system"),
        timeout=dict(type="int", default=3600),
        rerun=dict(type="bool", default=False),
    )),
    health_label=dict(type="str", default="pass"),
)


def run(module, api):
    from gpufleet.kube import fleet, quarantine

    params = module.params
    name = params["name"]
    try:
        if params["state"] == "quarantined":
            outcome = quarantine.quarantine_node(
                api, name, reason=params["reason"], by=params["requested_by"], drain=params["drain"],
                drain_timeout=params["drain_timeout"], grace_period=params["grace_period"],
                delete_emptydir_data=params["delete_emptydir_data"],
                delete_unmanaged=params["delete_unmanaged"], max_quarantined=params["max_quarantined"],
                force=params["force"], diagnostics=params["diagnostics"], check_mode=module.check_mode)
        else:
            outcome = quarantine.release_node(api, name, health_label=params["health_label"] or None,
                                              check_mode=module.check_mode)
    except quarantine.QuarantineRefused as exc:
        module.fail_json(msg=str(exc), refused=True)

    result = dict(
        changed=outcome.changed,
        node=fleet.node_summary(outcome.after),
        quarantine=quarantine.quarantine_record(outcome.after),
        message=outcome.message,
    )
    if outcome.counts:
        result["counts"] = outcome.counts
    if outcome.drain_plan is not None:
        result["drain_plan"] = outcome.drain_plan
    if outcome.drain is not None:
        result["drain"] = outcome.drain.as_dict()
    if outcome.diagnostics is not None:
        result["diagnostics"] = outcome.diagnostics
    if module._diff:
        result["diff"] = dict(before=node_view(outcome.before), after=node_view(outcome.after),
                              before_header="node/%s" % name, after_header="node/%s" % name)
    if outcome.failed:
        module.fail_json(msg=outcome.message, **result)
    return result


def main():
    run_kube_module(ARGUMENT_SPEC, run, what=lambda params: "node %s" % params["name"], node_names=["name"])


if __name__ == "__main__":
    main()
