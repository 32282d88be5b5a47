# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # How etcd_kv and etcd_kv_info reach etcd: endpoint, TLS and auth.
    DOCUMENTATION = r"""
options:
  endpoint:
    description:
      - The etcd client URL, C(http://host:port) or C(https://host:port). Without a
        scheme, C(https) is used when I(ca_cert) or I(client_cert) is given.
    type: str
    default: http://127.0.0.1:2379
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
"""
