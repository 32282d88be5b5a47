# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Shared pieces of the gpufleet.cluster modules: etcd connection options and imports.

The Kubernetes modules' preamble and auth options are in module_utils/kube.py.

Modules stay thin: an argument spec, then a call into the `gpufleet` Python
package (installed on the host that runs the module, like `kubernetes` is for
kubernetes.core).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import importlib
import traceback

from ansible.module_utils.basic import missing_required_lib

# How etcd_kv and etcd_kv_info reach etcd; documented in doc_fragments/etcd_connection.py.
ETCD_CONNECTION_ARG_SPEC = dict(
    endpoint=dict(type="str", default="http://127.0.0.1:2379"),
    ca_cert=dict(type="path"),
    client_cert=dict(type="path"),
    client_key=dict(type="path", no_log=False),
    validate_certs=dict(type="bool", default=True),
    user=dict(type="str"),
    password=dict(type="str", no_log=True),
    timeout=dict(type="float", default=5),
)


def etcd_client(etcd, params):
    """A gpufleet.etcd.EtcdClient from a module's connection params."""
    return etcd.EtcdClient(**dict((name, params[name]) for name in ETCD_CONNECTION_ARG_SPEC))


def require_gpufleet(module, *names):
    """Import gpufleet sub-modules, failing the task clearly where it is absent."""
    loaded = []
    for name in names:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError:
            module.fail_json(
                msg=missing_required_lib("gpufleet (the gpufleet.cluster services package)"),
                exception=traceback.format_exc(),
            )
    return loaded[0] if len(loaded) == 1 else loaded
