#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: node_taint
short_description: Add, update or remove taints on a Kubernetes node, remembering which are ours
version_added: "0.1.0"
description:
  - Makes the given taints present on (or absent from) a node, the way
    C(kubectl taint) matches them - by key and effect. The same key and effect
    with another value is the same taint; its value is updated in place.
  - Records who added each taint in the node annotation C(gpufleet.io/owned-taints),
    a JSON object from C(key:effect) to owner. With I(state=absent) only taints added by this
    I(owner) are removed, unless I(force=true), so a taint an operator or the
    health agent placed is not lifted by accident.
  - Writes the node at most once, with the resourceVersion it read; on a
    conflict (HTTP 409) it reads the node again and recomputes. Nothing is
    written when the node already is as asked.
  - The same taint merge is used by the gpufleet health agent.
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
  taints:
    description:
      - The taints. For I(state=absent), C(effect) may be left out to mean
        every effect of that key, and C(value) is ignored.
    type: list
    elements: dict
    required: true
    suboptions:
      key:
        description: Taint key.
        type: str
        required: true
      value:
        description: Taint value (optional).
        type: str
      effect:
        description: Taint effect. Required for I(state=present).
        type: str
        choices: [NoSchedule, PreferNoSchedule, NoExecute]
  state:
    description: Whether the taints should be on the node.
    type: str
    choices: [present, absent]
    default: present
  replace:
    description:
      - With I(state=present), also remove every other taint this I(owner)
        added, so the owner's taints are exactly I(taints). With I(force=true),
        remove every other taint on the node, whoever added it.
    type: bool
    default: false
  owner:
    description: Who the taints are recorded as belonging to.
    type: str
    default: gpufleet.cluster
  force:
    description: Remove matching taints even when another owner (or nobody) added them.
    type: bool
    default: false
notes:
  - Supports check mode (nothing is written) and diff mode (the node's taints before and after).
seealso:
  - module: gpufleet.cluster.node_quarantine
  - module: kubernetes.core.k8s_taint
author:
  - gpufleet maintainers (@gpufleet)
"""

EXAMPLES = r"""
- name: Keep new work off gpu-07 while we look at it
  gpufleet.cluster.node_taint:
    name: gpu-07
    taints:
      - key: gpufleet.io/maintenance
        value: sweep
        effect: NoSchedule

- name: Lift our maintenance taint (an operator's own taint with the same key stays)
  gpufleet.cluster.node_taint:
    name: gpu-07
    state: absent
    taints:
      - key: gpufleet.io/maintenance

- name: Remove a taint whoever placed it
  gpufleet.cluster.node_taint:
    name: gpu-07
    state: absent
    force: true
    taints:
      - key: gpufleet.io/unhealthy
        effect: NoSchedule

- name: Point at another cluster
  gpufleet.cluster.node_taint:
    kubeconfig: /etc/rancher/k3s/k3s.yaml
    context: lab
    name: gpu-07
    taints:
      - {key: dedicated, value: training, effect: NoSchedule}
"""

RETURN = r"""
taints_before:
  description: The node's taints before the task.
  returned: always
  type: list
  elements: dict
  sample: []
taints_after:
  description: The node's taints after the task (predicted in check mode).
  returned: always
  type: list
  elements: dict
  sample: [{"key": "gpufleet.io/maintenance", "value": "sweep", "effect": "NoSchedule"}]
added:
  description: Taints added.
  returned: always
  type: list
  elements: dict
updated:
  description: Taints whose value was updated in place.
  returned: always
  type: list
  elements: dict
removed:
  description: Taints removed.
  returned: always
  type: list
  elements: dict
kept_not_owned:
  description: Taints that matched but were left because another owner (or nobody) added them.
  returned: always
  type: list
  elements: dict
owned_taints:
  description: The ownership record after the task (C(key:effect) to owner).
  returned: always
  type: dict
  sample: {"gpufleet.io/maintenance:NoSchedule": "gpufleet.cluster"}
"""


from ansible_collections.gpufleet.cluster.plugins.module_utils.kube import run_kube_module


ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    taints=dict(type="list", elements="dict", required=True, options=dict(
        key=dict(type="str", required=True, no_log=False),
        value=dict(type="str"),
        effect=dict(type="str", choices=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
    )),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    replace=dict(type="bool", default=False),
    owner=dict(type="str", default="gpufleet.cluster"),
    force=dict(type="bool", default=False),
)


def run(module, api):
    from gpufleet.kube.nodes import set_taints

    params = module.params
    taints = [dict((k, v) for k, v in t.items() if v is not None) for t in params["taints"]]
    update = set_taints(api, params["name"], taints, state=params["state"], owner=params["owner"],
                        force=params["force"], replace=params["replace"], check_mode=module.check_mode)
    change = update.taint_change
    result = dict(
        changed=update.changed,
        taints_before=change.before,
        taints_after=change.after,
        added=change.added,
        updated=change.updated,
        removed=change.removed,
        kept_not_owned=change.kept_not_owned,
        owned_taints=change.owned_after,
    )
    if module._diff:
        result["diff"] = dict(
            before=dict(taints=change.before, owned_taints=change.owned_before),
            after=dict(taints=change.after, owned_taints=change.owned_after),
            before_header="node/%s" % params["name"], after_header="node/%s" % params["name"],
        )
    return result


def main():
    run_kube_module(ARGUMENT_SPEC, run, what=lambda params: "node %s" % params["name"], node_names=["name"])


if __name__ == "__main__":
    main()
