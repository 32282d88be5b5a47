#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: etcd_kv
short_description: Put, get or delete an etcd v3 key or prefix
version_added: "0.1.0"
description:
  - Talks to etcd's v3 JSON gateway (C(/v3/) on etcd 3.4 and later, C(/v3beta/) on 3.3),
    so no gRPC client is needed on the host that runs it.
  - Reads before it writes. A put whose value is already stored, or a delete of a key
    that is not there, reports C(changed=false) and writes nothing.
  - Use C(no_log) on the task when the value is a secret; the value then appears
    neither in the result nor in the diff.
options:
  endpoint:
    description:
      - The etcd client URL, C(http://host:port) or C(https://host:port). Without a
        scheme, C(https) is used when I(ca_cert) or I(client_cert) is given.
    type: str
    default: http://127.0.0.1:2379
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
        key under the prefix); C(get) only reads.
    type: str
    choices: [present, absent, get]
    default: present
  prefix:
    description: Treat I(key) as a prefix (for I(state=absent) and I(state=get)).
    type: bool
    default: false
  ca_cert:
    description: CA bundle that signed the etcd server's certificate.
    type: path
  client_cert:
    description: Client certificate (PEM) for etcd's client TLS authentication.
    type: path
  client_key:
    description: Private key (PEM) of I(client_cert).
    type: path
  validate_certs:
    description: Verify the server's certificate and host name.
    type: bool
    default: true
  user:
    description: etcd user, when etcd authentication is enabled.
    type: str
  password:
    description: Password of I(user).
    type: str
  timeout:
    description: Seconds to wait for each request.
    type: float
    default: 5
requirements:
  - gpufleet (the gpufleet.cluster services package) on the host that runs the module
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

- name: Read every node registration
  gpufleet.cluster.etcd_kv:
    key: /sorna/local/nodes/
    prefix: true
    state: get
  register: nodes

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
  description: The value of I(key) (C(get)), or the value stored (C(present)); null when absent.
  returned: when state is get or present
  type: str
values:
  description: Every key read or stored and its value (all keys under the prefix with I(prefix=true)).
  returned: always
  type: dict
  sample: {"/sorna/local/nodes/manager/m1": "up"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.cluster.plugins.module_utils.common import require_gpufleet


def main():
    module = AnsibleModule(
        argument_spec=dict(
            endpoint=dict(type="str", default="http://127.0.0.1:2379"),
            key=dict(type="str", required=True, no_log=False),
            value=dict(type="str"),
            state=dict(type="str", choices=["present", "absent", "get"], default="present"),
            prefix=dict(type="bool", default=False),
            ca_cert=dict(type="path"),
            client_cert=dict(type="path"),
            client_key=dict(type="path", no_log=False),
            validate_certs=dict(type="bool", default=True),
            user=dict(type="str"),
            password=dict(type="str", no_log=True),
            timeout=dict(type="float", default=5),
        ),
        required_if=[("state", "present", ["value"])],
        required_together=[("user", "password")],
        supports_check_mode=True,
    )
    etcd = require_gpufleet(module, "gpufleet.etcd")
    params = module.params
    if params["prefix"] and params["state"] == "present":
        module.fail_json(msg="prefix=true applies to state=absent and state=get only")
    client = etcd.EtcdClient(
        endpoint=params["endpoint"],
        ca_cert=params["ca_cert"],
        client_cert=params["client_cert"],
        client_key=params["client_key"],
        validate_certs=params["validate_certs"],
        user=params["user"],
        password=params["password"],
        timeout=params["timeout"],
    )
    try:
        result = etcd.apply(client, params["key"], state=params["state"], value=params["value"],
                            prefix=params["prefix"], check_mode=module.check_mode)
    except (etcd.EtcdError, ValueError) as exc:
        module.fail_json(msg=str(exc), key=params["key"])
    output = dict(changed=result.changed, key=result.key, values=result.values)
    if params["state"] != "absent":
        output["value"] = result.value
    if module._diff:
        output["diff"] = result.diff()
    module.exit_json(**output)


if __name__ == "__main__":
    main()
