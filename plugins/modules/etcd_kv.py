#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: etcd_kv
short_description: Put or delete an etcd v3 key or prefix
version_added: "0.1.0"
description:
  - Talks to etcd's v3 JSON gateway (C(/v3/) on etcd 3.4 and later, C(/v3beta/) on 3.3),
    so no gRPC client is needed on the host that runs it.
  - Reads before it writes. A put whose value is already stored, or a delete of a key
    that is not there, reports C(changed=false) and writes nothing.
  - Use C(no_log) on the task when the value is a secret; the value then appears
    neither in the result nor in the diff.
options:
  key:
    description: The key, or with I(prefix=true) the key prefix.
    type: str
    required: true
  value:
    description: The value to store. Required with I(state=present).
    type: str
  state:
    description:
      - C(present) stores I(value) under I(key); C(absent) deletes the key (or every
        key under the prefix). To read keys, use M(gpufleet.cluster.etcd_kv_info).
    type: str
    choices: [present, absent]
    default: present
  prefix:
    description: Treat I(key) as a prefix (with I(state=absent)).
    type: bool
    default: false
extends_documentation_fragment:
  - gpufleet.cluster.etcd_connection
notes:
  - Supports check mode (only reads) and diff mode (the keys and values before and after).
author:
  - gpufleet maintainers (@gpufleet)
"""

EXAMPLES = r"""
- name: Point the kernel agents at Redis
  gpufleet.cluster.etcd_kv:
    endpoint: http://10.0.0.11:2479
    key: /sorna/local/config/redis/addr
    value: 10.0.0.12:6479

- name: Store the Redis password without logging it
  gpufleet.cluster.etcd_kv:
    endpoint: https://10.0.0.11:2379
    ca_cert: /etc/etcd/pki/ca.crt
    client_cert: /etc/etcd/pki/client.crt
    client_key: /etc/etcd/pki/client.key
    key: /sorna/local/config/redis/password
    value: "{{ redis_password }}"
  no_log: true

- name: Forget a namespace
  gpufleet.cluster.etcd_kv:
    key: /sorna/old/
    prefix: true
    state: absent
"""

RETURN = r"""
key:
  description: The key or prefix the task was about.
  returned: always
  type: str
value:
  description: The value stored (C(present)).
  returned: when state is present
  type: str
values:
  description: Every key stored and its value (empty after C(absent)).
  returned: always
  type: dict
  sample: {"/sorna/local/nodes/manager/m1": "up"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.cluster.plugins.module_utils.common import (
    ETCD_CONNECTION_ARG_SPEC,
    etcd_client,
    require_gpufleet,
)


def main():
    argument_spec = dict(
        key=dict(type="str", required=True, no_log=False),
        value=dict(type="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        prefix=dict(type="bool", default=False),
    )
    argument_spec.update(ETCD_CONNECTION_ARG_SPEC)
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=[("state", "present", ["value"])],
        required_together=[("user", "password")],
        supports_check_mode=True,
    )
    etcd = require_gpufleet(module, "gpufleet.etcd")
    params = module.params
    if params["prefix"] and params["state"] == "present":
        module.fail_json(msg="prefix=true applies to state=absent only")
    try:
        result = etcd.apply(etcd_client(etcd, params), params["key"], state=params["state"],
                            value=params["value"], prefix=params["prefix"], check_mode=module.check_mode)
    except (etcd.EtcdError, ValueError) as exc:
        module.fail_json(msg=str(exc), key=params["key"])
    output = dict(changed=result.changed, key=result.key, values=result.values)
    if params["state"] == "present":
        output["value"] = result.value
    if module._diff:
        output["diff"] = result.diff()
    module.exit_json(**output)


if __name__ == "__main__":
    main()
