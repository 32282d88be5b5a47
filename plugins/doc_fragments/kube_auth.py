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
      - Path to a kubeconfig file.
      - "Each auth option is resolved as kubernetes.core resolves it: the task's value, else its
        C(K8S_AUTH_*) environment variable (C(K8S_AUTH_KUBECONFIG), C(K8S_AUTH_CONTEXT), C(K8S_AUTH_HOST),
        C(K8S_AUTH_API_KEY), C(K8S_AUTH_USERNAME), C(K8S_AUTH_PASSWORD), C(K8S_AUTH_VERIFY_SSL) or
        C(K8S_AUTH_VALIDATE_CERTS), C(K8S_AUTH_SSL_CA_CERT) or C(K8S_AUTH_CA_CERT), C(K8S_AUTH_CERT_FILE) or
        C(K8S_AUTH_CLIENT_CERT), C(K8S_AUTH_KEY_FILE) or C(K8S_AUTH_CLIENT_KEY), C(K8S_AUTH_PROXY),
        C(K8S_AUTH_NO_PROXY)) - which is what AWX's Kubernetes credentials inject."
      - "Then the source: I(host) with I(api_key), with I(username) and I(password), or with
        I(client_cert) and I(client_key) needs nothing else; otherwise a kubeconfig is read when
        I(kubeconfig) or I(context) is set; otherwise the in-cluster service account is tried, then
        C(KUBECONFIG) or C(~/.kube/config). Options given override what the source set."
      - The same names as kubernetes.core's, so C(module_defaults) for C(group/kubernetes.core.k8s)
        or C(group/gpufleet.cluster.kubernetes) sets them for both collections' modules.
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
  username:
    description: User name for HTTP basic auth to the API server.
    type: str
  password:
    description: Password for HTTP basic auth to the API server. Never logged.
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
  proxy:
    description: An HTTP proxy URL to reach the API server through.
    type: str
  no_proxy:
    description: Comma-separated hosts, domains or networks reached without I(proxy).
    type: str
  request_timeout:
    description:
      - Seconds each request to the API server may take (connecting and answering). A server that
        does not answer in time fails the task with a timeout error instead of hanging it.
    type: float
    default: 10
requirements:
  - gpufleet (the services package of this collection) and kubernetes >= 30
"""
