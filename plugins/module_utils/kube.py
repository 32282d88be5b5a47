# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""The one `main()` preamble of the Kubernetes modules.

    def main():
        run_kube_module(ARGUMENT_SPEC, run, what=lambda p: "node %s" % p["name"], node_names=["name"])

`run_kube_module` builds the AnsibleModule with the shared auth options (the
same names as kubernetes.core's, settable once with `module_defaults` for
`group/gpufleet.cluster.kubernetes` or `group/kubernetes.core.k8s`), checks
the node names against Kubernetes' rules before any request, builds the client
through gpufleet.kube (auth resolved as kubernetes.core resolves it, including
AWX's K8S_AUTH_* variables; `request_timeout` on every request) and turns every
failure into `fail_json` with one clear line — a timeout says so.
`run(module, api)` returns the result dict; it may call `module.fail_json` for
outcomes of its own.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible_collections.gpufleet.cluster.plugins.module_utils.common import require_gpufleet

# The Kubernetes auth options every Kubernetes-facing module takes; documented once in
# doc_fragments/kube_auth.py. The names are kubernetes.core's, so one module_defaults entry
# serves both collections.
KUBE_AUTH_ARG_SPEC = dict(
    kubeconfig=dict(type="path", aliases=["kubeconfig_path"]),
    context=dict(type="str"),
    host=dict(type="str"),
    api_key=dict(type="str", no_log=True),
    username=dict(type="str"),
    password=dict(type="str", no_log=True),
    validate_certs=dict(type="bool", aliases=["verify_ssl"]),
    ca_cert=dict(type="path", aliases=["ssl_ca_cert"]),
    client_cert=dict(type="path", aliases=["cert_file"]),
    client_key=dict(type="path", aliases=["key_file"], no_log=False),
    proxy=dict(type="str"),
    no_proxy=dict(type="str"),
    request_timeout=dict(type="float", default=10.0),
)

AUTH_OPTION_NAMES = [name for name in KUBE_AUTH_ARG_SPEC if name != "request_timeout"]


def kube_auth_options(params):
    """The auth options out of a module's params, for gpufleet.kube.client (None = not given)."""
    return dict((name, params.get(name)) for name in AUTH_OPTION_NAMES)


def run_kube_module(argument_spec, run, what, node_names=(), supports_check_mode=True, **module_kwargs):
    """Build the module, validate, connect, `run(module, api)`, report. Never returns."""
    from ansible.module_utils.basic import AnsibleModule

    spec = dict(argument_spec)
    spec.update(KUBE_AUTH_ARG_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=supports_check_mode, **module_kwargs)
    client, kube_api, validation = require_gpufleet(
        module, "gpufleet.kube.client", "gpufleet.kube.api", "gpufleet.kube.validation")
    params = module.params
    timeout = params["request_timeout"]
    if timeout is None or timeout <= 0:
        module.fail_json(msg="request_timeout must be a positive number of seconds, got %r" % (timeout,))
    try:
        for option in node_names:
            if params.get(option) is not None:
                validation.check_node_name(params[option], what=option)
        api = client.connect(request_timeout=timeout, **kube_auth_options(params))
        result = run(module, api)
    except validation.InvalidInput as exc:
        module.fail_json(msg=str(exc), invalid=True)
    except kube_api.KUBE_ERRORS as exc:
        module.fail_json(msg="%s: %s" % (what(params), kube_api.describe_error(exc, timeout)),
                         status=getattr(exc, "status", None), timed_out=kube_api.is_timeout(exc),
                         exception=traceback.format_exc())
    except (ValueError, TypeError) as exc:
        module.fail_json(msg="%s: %s" % (what(params), exc))
    module.exit_json(**result)
