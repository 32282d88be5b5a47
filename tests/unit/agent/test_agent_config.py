import os
from pathlib import Path

import pytest
from gpufleet.agent.config import ConfigError, HostPort, load_config, parse_config, parse_size

FULL = """
[etcd]
namespace = "local"
addr = "10.0.0.5:2479"

[agent]
id = "gpu-node-1"
rpc-listen-addr = ":6001"
backend = "kubernetes"
region = "seoul"
scaling-group = "gpu"

[container]
port-range = "30000-31000"
scratch-type = "nfs"
scratch-root = "/scratch"
scratch-nfs-address = "10.0.0.9:/export/scratch"

[resource]
reserved-cpu = 2
reserved-mem = "4g"

[debug]
heartbeat-interval = 20

[rpc]
max-concurrency = 32

[http]
addr = ":6003"
"""


def test_full_backend_ai_layout_is_read(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(FULL)
    config = load_config(path)
    assert config.etcd.addr == HostPort("10.0.0.5", 2479)
    assert config.agent.id == "gpu-node-1"
    assert config.agent.rpc_listen_addr == HostPort("0.0.0.0", 6001)
    assert config.agent.backend == "kubernetes"
    assert (config.agent.region, config.agent.scaling_group) == ("seoul", "gpu")
    assert config.container.port_range == (30000, 31000)
    assert config.container.scratch_nfs_address == "10.0.0.9:/export/scratch"
    assert config.resource.reserved_mem == 4 << 30
    assert config.debug.heartbeat_interval == 20
    assert config.http.addr.port == 6003


def test_etcd_client_tls_keys_are_read():
    config = parse_config({"etcd": {"ca-file": "/etc/etcd/pki/ca.crt", "cert-file": "/etc/gpufleet/etcd.crt",
                                    "key-file": "/etc/gpufleet/etcd.key", "timeout": 2.5}})
    assert config.etcd.ca_file == "/etc/etcd/pki/ca.crt"
    assert config.etcd.cert_file == "/etc/gpufleet/etcd.crt"
    assert config.etcd.key_file == "/etc/gpufleet/etcd.key"
    assert config.etcd.timeout == 2.5
    assert parse_config({}).etcd.timeout == 5 and parse_config({}).etcd.ca_file is None


def test_defaults_match_backend_ai():
    config = parse_config({})
    assert config.agent.rpc_listen_addr.port == 6001
    assert config.http.addr.port == 6003
    assert config.container.port_range == (30000, 31000)
    assert config.debug.heartbeat_interval == 20.0
    assert config.agent.id  # the hostname


@pytest.mark.parametrize(("data", "key"), [
    ({"container": {"port-range": "31000-30000"}}, "[container] port-range"),
    ({"container": {"port-range": "abc"}}, "[container] port-range"),
    ({"agent": {"backend": "docker"}}, "[agent] backend"),
    ({"agent": {"rpc-listen-addr": ":99999"}}, "[agent] rpc-listen-addr"),
    ({"agent": {"rpc-listen-addr": "6001"}}, "[agent] rpc-listen-addr"),
    ({"etcd": {"addr": "host:port"}}, "[etcd] addr"),
    ({"debug": {"heartbeat-interval": "fast"}}, "[debug] heartbeat-interval"),
    ({"debug": {"heartbeat-interval": 0}}, "[debug] heartbeat-interval"),
    ({"resource": {"reserved-mem": "lots"}}, "[resource] reserved-mem"),
    ({"resource": {"gpus": 1.5}}, "[resource] gpus"),
    ({"container": {"scratch-type": "nfs"}}, "[container] scratch-nfs-address"),
    ({"container": {"scratch-root": "relative/dir"}}, "[container] scratch-root"),
    ({"agent": {"heartbeat": 1}}, "[agent] heartbeat"),
    ({"agnet": {}}, "[agnet]"),
    ({"etcd": {"enabled": False}}, "[redis] addr"),
    ({"etcd": {"ca-file": 5}}, "[etcd] ca-file"),
    ({"etcd": {"key-file": "/k"}}, "[etcd] cert-file"),
])
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).startswith(key)


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text("[agent\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(("text", "expected"), [
    ("512m", 512 << 20), ("2g", 2 << 30), ("1Gi", 1 << 30), ("1.5G", int(1.5 * (1 << 30))), (1024, 1024),
    ("100", 100),
])
def test_sizes(text, expected):
    assert parse_size("k", text) == expected


def test_curve_keys_use_backend_ai_names_and_auth_is_on_by_default(tmp_path):
    config = parse_config({"agent": {"rpc-auth-agent-keypair": "/k/agent.key_secret",
                                     "rpc-auth-manager-public-key": "/k/manager.key"}})
    assert config.agent.rpc_auth_agent_keypair == Path("/k/agent.key_secret")
    assert config.agent.rpc_auth_manager_public_key == Path("/k/manager.key")
    assert config.rpc.curve_auth is True
    assert parse_config({"rpc": {"curve-auth": False}}).rpc.curve_auth is False
    with pytest.raises(ConfigError, match=r"\[rpc\] token-file: unknown"):
        parse_config({"rpc": {"token-file": "/etc/gpufleet/agent.token"}})


def test_public_config_has_no_secrets(tmp_path):
    config = parse_config({"etcd": {"password": "hunter2"}, "redis": {"addr": "h:1", "password": "pw"}})
    text = str(config.as_public_dict())
    assert "hunter2" not in text and "'pw'" not in text
    assert Path(config.as_public_dict()["agent"]["state-dir"]) == Path("/var/lib/gpufleet")


def test_kernel_uid_defaults_to_1000_and_agent_keeps_the_agents_identity(monkeypatch):
    config = parse_config({})
    assert (config.container.kernel_uid, config.container.kernel_gid) == (1000, 1000)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert config.container.kernel_owner() == (1000, 1000)
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    assert config.container.kernel_owner() is None  # only root can switch users
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert parse_config({"container": {"kernel-uid": "agent"}}).container.kernel_owner() is None
    with pytest.raises(ConfigError, match=r"^\[container\] kernel-uid"):
        parse_config({"container": {"kernel-uid": "nobody"}})


@pytest.mark.parametrize(("etcd", "message"), [
    ({"ca-file": "relative/ca.crt"}, r"^\[etcd\] ca-file: must be an absolute path"),
    ({"cert-file": "/etc/c.crt"}, r"^\[etcd\] key-file: cert-file and key-file go together"),
    ({"timeout": 0}, r"^\[etcd\] timeout"),
    ({"timeout": "soon"}, r"^\[etcd\] timeout: expected a number"),
])
def test_etcd_tls_keys_are_validated(etcd, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"etcd": etcd})


def test_a_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_bytes(b'[agent]\nid = "n\xe9ud"\n')
    with pytest.raises(ConfigError, match=r"agent\.toml:2: not UTF-8 text"):
        load_config(path)


def test_kernel_uid_range_parsed_and_validated():
    assert parse_config({}).container.kernel_uid_range == (60000, 60999)
    assert parse_config({"container": {"kernel-uid-range": "61000-61009"}}).container.kernel_uid_range == \
        (61000, 61009)
    assert parse_config({"container": {"kernel-uid-range": ""}}).container.kernel_uid_range is None
    for bad in ("0-10", "70000-60000", "x"):
        with pytest.raises(ConfigError, match=r"^\[container\] kernel-uid-range"):
            parse_config({"container": {"kernel-uid-range": bad}})


def test_port_range_inside_the_ephemeral_range_is_refused(monkeypatch, tmp_path):
    from gpufleet.agent import config as config_module

    fake = tmp_path / "ip_local_port_range"
    fake.write_text("32768\t60999\n")
    monkeypatch.setattr(config_module, "EPHEMERAL_RANGE_PATH", fake)
    with pytest.raises(ConfigError, match=r"^\[container\] port-range: 40000-40100 overlaps this host's "
                                          r"ephemeral port range 32768-60999"):
        parse_config({"container": {"port-range": "40000-40100"}})
    with pytest.raises(ConfigError, match="overlaps"):
        parse_config({"container": {"port-range": "30000-32768"}})  # one port is enough
    assert parse_config({"container": {"port-range": "30000-32767"}}).container.port_range == (30000, 32767)


def test_gpus_may_come_from_the_simulated_backend():
    assert parse_config({"resource": {"gpus": "simulated"}}).resource.gpus == "simulated"
    with pytest.raises(ConfigError, match=r"^\[resource\] gpus"):
        parse_config({"resource": {"gpus": "fake"}})


def test_kernel_python_is_an_absolute_path_or_the_agents_own():
    import sys

    from gpufleet.agent.core import make_backend

    assert parse_config({}).container.kernel_python is None
    assert parse_config({"container": {"kernel-python": ""}}).container.kernel_python is None
    assert make_backend(parse_config({})).python == sys.executable
    config = parse_config({"container": {"kernel-python": "/usr/bin/python3"}})
    assert config.container.kernel_python == "/usr/bin/python3"
    assert make_backend(config).python == "/usr/bin/python3"
    assert config.as_public_dict()["container"]["kernel-python"] == "/usr/bin/python3"
    for bad in ("python3", "bin/python", 3):
        with pytest.raises(ConfigError, match=r"^\[container\] kernel-python"):
            parse_config({"container": {"kernel-python": bad}})
