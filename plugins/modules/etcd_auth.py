#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: etcd_auth
short_description: Create etcd users and roles and turn etcd's auth on
version_added: "0.2.0"
description:
  - Makes the C(root) user and the given roles and users exist in etcd, grants the
    given key permissions and roles, then enables authentication (etcd's
    C(auth enable)). Talks to etcd's v3 JSON gateway, like M(gpufleet.cluster.etcd_kv).
  - Once auth is on, it connects as C(root) with I(root_password).
  - Adds what is missing and never removes a permission, a role grant or a user.
    Passwords of existing users are not compared (etcd cannot show them).
  - With client certificate auth on, etcd's gateway refuses client certificates that
    carry a Common Name; use a certificate without one (the etcd role generates such a one).
options:
  root_password:
    description: The password of etcd's C(root) user (set when the user is created).
    type: str
    required: true
  roles:
    description:
      - Role name to a list of permissions, each C({type, key, prefix}); I(type) is
        C(read), C(write) or C(readwrite); I(prefix) (default true) covers every key under I(key).
    type: dict
    default: {}
  users:
    description:
      - User name to C({password, roles}). The whole option is kept out of logs.
    type: dict
    default: {}
extends_documentation_fragment:
  - gpufleet.cluster.etcd_connection
notes:
  - Supports check mode (only reads). Never logs a password; the result lists the actions taken.
author:
  - gpufleet maintainers (@gpufleet)
"""

EXAMPLES = r"""
- name: Lock etcd down for the kernel agents
  gpufleet.cluster.etcd_auth:
    endpoint: https://10.0.0.11:2379
    ca_cert: /etc/etcd/pki/ca.crt
    client_cert: /etc/etcd/pki/client.crt
    client_key: /etc/etcd/pki/client.key
    root_password: "{{ etcd_root_password }}"
    roles:
      gpufleet-agent:
        - {type: read, key: /sorna/local/}
        - {type: readwrite, key: /sorna/local/nodes/agents/}
    users:
      gpufleet-agent: {password: "{{ etcd_agent_password }}", roles: [gpufleet-agent]}
"""

RETURN = r"""
actions:
  description: What was done (or in check mode would be done), e.g. C(add user gpufleet-agent).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.cluster.plugins.module_utils.common import (
    ETCD_CONNECTION_ARG_SPEC,
    etcd_client,
    require_gpufleet,
)


def main():
    argument_spec = dict(
        root_password=dict(type="str", required=True, no_log=True),
        roles=dict(type="dict", default={}),
        users=dict(type="dict", default={}, no_log=True),
    )
    argument_spec.update(ETCD_CONNECTION_ARG_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    etcd = require_gpufleet(module, "gpufleet.etcd")
    params = module.params
    try:
        result = etcd.apply_auth(etcd_client(etcd, params), params["root_password"], params["roles"],
                                 params["users"], check_mode=module.check_mode)
    except (etcd.EtcdError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=result.changed, actions=result.actions)


if __name__ == "__main__":
    main()
