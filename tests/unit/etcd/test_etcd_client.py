"""gpufleet.etcd: the prefix range, the gateway path, and apply() against a real etcd."""

from __future__ import annotations

import uuid

import pytest
from gpufleet.etcd import EtcdClient, EtcdError, apply, gateway_prefix, prefix_range_end


@pytest.mark.parametrize(("prefix", "end"), [
    ("/sorna/", b"/sorna0"),
    (b"a\xff", b"b"),
    (b"\xff\xff", b"\0"),
    ("", b"\0"),
])
def test_prefix_range_end_is_the_first_key_after_the_prefix(prefix, end):
    assert prefix_range_end(prefix) == end


@pytest.mark.parametrize(("version", "path"), [
    ("3.4.23", "/v3"), ("3.5.9", "/v3"), ("3.3.11", "/v3beta"), ("3.2.0", "/v3alpha"), ("", "/v3"),
])
def test_gateway_prefix_follows_the_server_version(version, path):
    assert gateway_prefix(version) == path


def test_endpoint_without_scheme_uses_https_when_tls_options_are_given():
    assert EtcdClient("10.0.0.1:2379").endpoint == "http://10.0.0.1:2379"
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    assert EtcdClient("10.0.0.1:2379", ca_cert=bundle).endpoint == "https://10.0.0.1:2379"


@pytest.fixture
def client(etcd_server):
    return EtcdClient(etcd_server.url)


@pytest.fixture
def key():
    return f"/unit-{uuid.uuid4().hex[:8]}/k"


def test_apply_present_is_idempotent_and_check_mode_only_reads(client, key):
    checked = apply(client, key, value="v", check_mode=True)
    assert checked.changed and client.get(key) == {}
    assert apply(client, key, value="v").changed
    assert client.get(key) == {key: "v"}
    again = apply(client, key, value="v")
    assert not again.changed and again.before == {key: "v"}


def test_apply_absent_of_missing_key_changes_nothing(client, key):
    assert not apply(client, key, state="absent").changed
    client.put(key, "x")
    result = apply(client, key, state="absent")
    assert result.changed and result.before == {key: "x"} and client.get(key) == {}


def test_apply_refuses_bad_arguments(client, key):
    with pytest.raises(ValueError, match="needs a value"):
        apply(client, key)
    with pytest.raises(ValueError, match="prefix applies"):
        apply(client, key, value="v", prefix=True)
    with pytest.raises(ValueError, match="state must be"):
        apply(client, key, state="gone")


def test_values_survive_unicode_and_binary_unsafe_text(client, key):
    value = "ünïcode = value\nwith newline"
    client.put(key, value)
    assert client.get(key) == {key: value}


def test_unreachable_endpoint_raises_etcd_error():
    with pytest.raises(EtcdError, match="cannot reach etcd"):
        EtcdClient("http://127.0.0.1:1", timeout=1).get("/k")
