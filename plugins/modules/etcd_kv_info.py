#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: etcd_kv_info
short_description: Read an etcd v3 key or every key under a prefix
version_added: "0.1.0"
description:
  - Reads through etcd's v3 JSON gateway; never writes. The writing side is
    M(gpufleet.cluster.etcd_kv).
options:
  key:
    description: The key, or with I(prefix=true) the key prefix.
    type: str
    required: true
  prefix:
    description: Read every key under I(key).
    type: bool
    default: false
extends_documentation_fragment:
  - gpufleet.cluster.etcd_connection
notes:
  - Supports check mode (it only reads).
author:
  - gpufleet maintainers (@gpufleet)
"""

EXAMPLES = r"""
- name: Read every node registration
  gpufleet.cluster.etcd_kv_info:
    endpoint: http://10.0.0.11:2479
    key: /sorna/local/nodes/
    prefix: true
  register: nodes

- name: Is a manager registered?
  ansible.builtin.debug:
    msg: "{{ nodes.values | dict2items | selectattr('key', 'search', '/nodes/manager/') | list }}"
"""

RETURN = r"""
key:
  description: The key or prefix read.
  returned: always
  type: str
value:
  description: The value of I(key); null when it is not set.
  returned: always
  type: str
values:
  description: Every key read and its value (all keys under the prefix with I(prefix=true)).
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
        prefix=dict(type="bool", default=False),
    )
    argument_spec.update(ETCD_CONNECTION_ARG_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, required_together=[("user", "password")],
                           supports_check_mode=True)
    etcd = require_gpufleet(module, "gpufleet.etcd")
    params = module.params
    try:
        result = etcd.apply(etcd_client(etcd, params), params["key"], state="get", prefix=params["prefix"])
    except (etcd.EtcdError, ValueError) as exc:
        module.fail_json(msg=str(exc), key=params["key"])
    module.exit_json(changed=False, key=result.key, value=result.value, values=result.values)


if __name__ == "__main__":
    main()
