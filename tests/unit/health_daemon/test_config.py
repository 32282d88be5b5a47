"""health.toml: defaults, validation with clear errors, thresholds reaching the checks."""

from __future__ import annotations

import pytest
from gpufleet.health.config import DEFAULT_CONFIG_PATH, ConfigError, config_from_dict, load_config
from gpufleet.health.severity import Severity


def test_every_key_is_optional():
    config = config_from_dict({})
    assert config.interval == 300 and config.periodic_interval == 21600
    assert config.http.port == 9401
    assert config.kubernetes.kubeconfig == "/etc/rancher/k3s/k3s.yaml"
    assert config.kubernetes.taint_level == Severity.RESET
    assert config.kubernetes.max_fenced == "10%"
    assert config.state_file == "/var/lib/gpufleet/health.json"


def test_a_full_file_is_read(tmp_path):
    path = tmp_path / "health.toml"
    path.write_text("""
interval = 5
periodic_interval = 60
[backend]
type = "simulated"
checks = ["xid", "ecc"]
[thresholds]
ecc_corrected_per_minute = 7.5
sw_power_cap_benign = true
[kubernetes]
taint_severity = "reboot"
max_fenced = 4
lift_after = 2
""")
    config = load_config(path)
    assert config.interval == 5.0 and isinstance(config.interval, float)
    assert config.backend.checks == ["xid", "ecc"]
    assert config.thresholds.ecc_corrected_per_minute == 7.5
    assert config.thresholds.sw_power_cap_benign is True
    assert config.kubernetes.taint_level == Severity.REBOOT
    assert config.kubernetes.max_fenced == "4"
    assert config.source == str(path)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"intervall": 5}, "unknown key 'intervall'"),
        ({"kubernetes": {"taint_severty": "RESET"}}, "unknown key kubernetes.'taint_severty'"),
        ({"interval": "5m"}, "interval must be a number"),
        ({"interval": 0.5}, "interval must be at least 1 second"),
        ({"interval": 600, "periodic_interval": 60}, "periodic_interval (60.0) must not be shorter"),
        ({"backend": {"type": "rocm"}}, "backend.type must be nvml or simulated"),
        ({"backend": {"checks": ["xid", "nope"]}}, "backend.checks"),
        ({"kubernetes": {"taint_severity": "PASS"}}, "MONITOR or worse"),
        ({"kubernetes": {"taint_severity": "BAD"}}, "unknown severity"),
        ({"kubernetes": {"max_fenced": "ten"}}, "max_fenced must be a count"),
        ({"kubernetes": {"lift_after": 0}}, "lift_after must be at least 1"),
        ({"kubernetes": {"lift_after": 1.5}}, "whole number"),
        ({"kubernetes": {"enabled": "maybe"}}, "auto, true or false"),
        ({"kubernetes": "yes"}, "[kubernetes] must be a table"),
        ({"http": {"port": 70000}}, "http.port must be 0-65535"),
        ({"thresholds": {"require_ecc": "yes"}}, "thresholds.require_ecc must be true or false"),
        ({"log_level": "loud"}, "log_level must be one of"),
    ],
)
def test_bad_values_are_named_in_the_error(data, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict(data, source="/etc/gpufleet/health.toml")
    assert message in str(error.value)
    assert str(error.value).startswith("/etc/gpufleet/health.toml: ")


def test_boolean_enabled_is_accepted():
    assert config_from_dict({"kubernetes": {"enabled": False}}).kubernetes.enabled == "false"


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("interval = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_the_default_path_may_be_absent(monkeypatch, tmp_path):
    monkeypatch.setattr("gpufleet.health.config.DEFAULT_CONFIG_PATH", tmp_path / "none.toml")
    import gpufleet.health.config as module

    config = module.load_config(None)
    assert config.interval == 300 and "absent" in config.source
    assert DEFAULT_CONFIG_PATH.name == "health.toml"


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    broken = tmp_path / "latin1.toml"
    broken.write_bytes(b'node_name = "n\xe9ud"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml:1: not UTF-8 text"):
        load_config(broken)


def test_section_models_follow_the_dataclasses():
    # A key added to a section's dataclass is accepted with no other change.
    config = config_from_dict({"kubernetes": {"retry_max": 5}, "backend": {"profiles_files": ["/a.yaml"]}})
    assert config.kubernetes.retry_max == 5.0 and config.backend.profiles_files == ["/a.yaml"]
    with pytest.raises(ConfigError, match=r"backend.checks must be a list of strings, not \['xid', 3\]"):
        config_from_dict({"backend": {"checks": ["xid", 3]}})
