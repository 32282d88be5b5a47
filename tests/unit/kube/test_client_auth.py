"""Auth resolution as kubernetes.core does it: explicit, then K8S_AUTH_*, then kubeconfig, in-cluster last."""

from __future__ import annotations

import pytest
import yaml
from gpufleet.kube.client import USER_AGENT, api_client, configuration_for, resolve_auth
from kubernetes.config.config_exception import ConfigException


def kubeconfig(tmp_path, server="https://from-kubeconfig:6443", token="kubeconfig-token"):
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "one",
        "clusters": [{"name": "c", "cluster": {"server": server}},
                     {"name": "c2", "cluster": {"server": "https://second:6443"}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "one", "context": {"cluster": "c", "user": "u"}},
                     {"name": "two", "context": {"cluster": "c2", "user": "u"}}],
    }))
    return str(path)


def test_explicit_options_win_over_the_environment():
    env = {"K8S_AUTH_HOST": "https://env:6443", "K8S_AUTH_API_KEY": "env-token"}
    assert resolve_auth(env, host="https://param:6443") == {"host": "https://param:6443",
                                                            "api_key": "env-token"}


def test_both_spellings_of_each_variable_and_booleans_as_kubernetes_core_reads_them():
    env = {"K8S_AUTH_VERIFY_SSL": "no", "K8S_AUTH_SSL_CA_CERT": "/ca.pem", "K8S_AUTH_CERT_FILE": "/c.pem",
           "K8S_AUTH_KEY_FILE": "/k.pem", "K8S_AUTH_USERNAME": "u", "K8S_AUTH_PASSWORD": "p",
           "K8S_AUTH_PROXY": "http://proxy:3128", "K8S_AUTH_CONTEXT": "two"}
    assert resolve_auth(env) == {"validate_certs": False, "ca_cert": "/ca.pem", "client_cert": "/c.pem",
                                 "client_key": "/k.pem", "username": "u", "password": "p",
                                 "proxy": "http://proxy:3128", "context": "two"}
    assert resolve_auth({"K8S_AUTH_VALIDATE_CERTS": "true"}) == {"validate_certs": True}


def test_awx_bearer_token_credential_needs_no_kubeconfig(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    env = {"K8S_AUTH_HOST": "https://awx-target:6443/", "K8S_AUTH_API_KEY": "sekret",
           "K8S_AUTH_VERIFY_SSL": "True", "K8S_AUTH_SSL_CA_CERT": "/tmp/ca.pem"}
    configuration, source = configuration_for(env)
    assert source == "parameters"
    assert configuration.host == "https://awx-target:6443"
    assert configuration.auth_settings()["BearerToken"]["value"] == "Bearer sekret"
    assert configuration.verify_ssl is True and configuration.ssl_ca_cert == "/tmp/ca.pem"


def test_kubeconfig_and_context_from_the_environment(tmp_path):
    path = kubeconfig(tmp_path)
    configuration, source = configuration_for({"K8S_AUTH_KUBECONFIG": path, "K8S_AUTH_CONTEXT": "two"})
    assert configuration.host == "https://second:6443" and source == f"kubeconfig {path}"
    # an explicit host still overrides what the kubeconfig says
    configuration, _ = configuration_for({"K8S_AUTH_KUBECONFIG": path}, host="https://override:1")
    assert configuration.host == "https://override:1"
    assert configuration.auth_settings()["BearerToken"]["value"] == "Bearer kubeconfig-token"


def test_no_source_at_all_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("kubernetes.config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    with pytest.raises(ConfigException, match="no Kubernetes credentials"):
        configuration_for({})


def test_unknown_option_is_refused():
    with pytest.raises(TypeError, match="unknown Kubernetes auth option"):
        resolve_auth({}, hots="x")


def test_client_has_a_deadline_and_user_agent(tmp_path):
    client = api_client(kubeconfig=kubeconfig(tmp_path), request_timeout=3)
    assert client.request_timeout == 3.0
    assert client.default_headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("gpufleet/")
