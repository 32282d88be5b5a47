"""Build a `kubernetes` ApiClient from the auth options shared by CLI and modules."""

from __future__ import annotations

import os

from kubernetes import client, config


def api_client(
    kubeconfig: str | None = None,
    context: str | None = None,
    host: str | None = None,
    api_key: str | None = None,
    validate_certs: bool | None = None,
    ca_cert: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
) -> client.ApiClient:
    """An ApiClient for the first source that applies.

    Order: an explicit kubeconfig, $K8S_AUTH_KUBECONFIG, $KUBECONFIG,
    ~/.kube/config, then the in-cluster service account; `host` and `api_key`
    alone (no kubeconfig) also work. Explicit options override the source.
    """
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("K8S_AUTH_KUBECONFIG") or os.environ.get("KUBECONFIG")
    if not path and os.path.exists(os.path.expanduser("~/.kube/config")):
        path = os.path.expanduser("~/.kube/config")
    if path:
        config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
    elif host:
        configuration.host = host
    else:
        config.load_incluster_config(client_configuration=configuration)
    if host:
        configuration.host = host
    if api_key:
        configuration.api_key = {"authorization": api_key}
        configuration.api_key_prefix = {"authorization": "Bearer"}
    if validate_certs is not None:
        configuration.verify_ssl = validate_certs
    if ca_cert:
        configuration.ssl_ca_cert = ca_cert
    if client_cert:
        configuration.cert_file = client_cert
    if client_key:
        configuration.key_file = client_key
    return client.ApiClient(configuration)
