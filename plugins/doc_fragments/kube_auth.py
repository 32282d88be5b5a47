# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The Kubernetes auth options shared by the collection's Kubernetes modules.
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - Path to a kubeconfig file. Without it, C(K8S_AUTH_KUBECONFIG), then
        C(KUBECONFIG), then C(~/.kube/config), then the in-cluster service
        account are tried, in that order.
    type: path
    aliases: [kubeconfig_path]
  context:
    description: The kubeconfig context to use (default the current one).
    type: str
  host:
    description: The API server URL, overriding the kubeconfig's.
    type: str
  api_key:
    description: A bearer token for the API server. Never logged.
    type: str
  validate_certs:
    description: Whether to verify the API server's TLS certificate.
    type: bool
    aliases: [verify_ssl]
  ca_cert:
    description: CA bundle to verify the API server with.
    type: path
    aliases: [ssl_ca_cert]
  client_cert:
    description: Client certificate for TLS client auth.
    type: path
    aliases: [cert_file]
  client_key:
    description: Client key for TLS client auth.
    type: path
    aliases: [key_file]
requirements:
  - gpufleet (the services package of this collection) and kubernetes >= 30
"""
