"""The health agent's configuration: `/etc/gpufleet/health.toml`, validated with clear errors.

Every key is optional; see docs/health-agent.md for the full, commented file.
Unknown keys are errors (a typo must not silently fall back to a default).
`load_config` raises ConfigError naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from gpufleet.health.checks import CheckConfig
from gpufleet.health.severity import Severity

DEFAULT_CONFIG_PATH = Path("/etc/gpufleet/health.toml")
DEFAULT_STATE_FILE = Path("/var/lib/gpufleet/health.json")
K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file and the key."""


@dataclass
class BackendSettings:
    type: str = "nvml"  # nvml | simulated
    fleet_spec: str = ""  # simulated: fleet spec YAML ("" = the built-in one-node fleet)
    node: str = ""  # simulated: which node of the fleet spec ("" = the first)
    faults: str = ""  # simulated: fault file ("" = $GPUFLEET_SIM_FAULTS or the default path)
    profile: str = ""  # hardware profile ("" = matched by GPU model and count)
    profiles_files: list[str] = field(default_factory=list)
    xid_overrides: str = "/etc/gpufleet/xid-overrides.yaml"
    checks: list[str] = field(default_factory=list)  # [] = every check
    keeper_window: float = 3600.0  # seconds a severe finding outlives milder ones


@dataclass
class HttpSettings:
    address: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes the node from outside
    port: int = 9401


@dataclass
class KubernetesSettings:
    enabled: str = "auto"  # auto (on when a kubeconfig or in-cluster credentials exist) | true | false
    kubeconfig: str = K3S_KUBECONFIG
    in_cluster: bool = False
    taint_severity: str = "RESET"  # fence at or above this verdict
    lift_after: int = 3  # consecutive healthy scheduled cycles before a fence is lifted
    max_fenced: str = "10%"  # circuit breaker: a count, or "N%" of the GPU nodes
    report_refresh: float = 3600.0  # rewrite an unchanged report (last-check) at most this often
    request_timeout: float = 10.0
    retry_max: float = 60.0  # longest wait between retries while the API is down

    @property
    def taint_level(self) -> Severity:
        return Severity.parse(self.taint_severity)


@dataclass
class RedisSettings:
    url: str = ""  # e.g. "redis://:password@10.0.0.5:6379/0"; "" = no Redis events
    stream: str = "events"


@dataclass
class AgentConfig:
    node_name: str = ""  # the Kubernetes node name ("" = the simulated node, else the hostname)
    interval: float = 300.0  # lightweight checks
    periodic_interval: float = 21600.0  # periodic checks, and DCGM diagnostics when idle
    intensive_when_busy: bool = False  # run DCGM diagnostics even while GPU pods run
    state_file: str = str(DEFAULT_STATE_FILE)
    log_level: str = "info"
    log_format: str = "logfmt"  # logfmt | json
    backend: BackendSettings = field(default_factory=BackendSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    thresholds: CheckConfig = field(default_factory=CheckConfig)
    redis: RedisSettings = field(default_factory=RedisSettings)
    source: str = "<defaults>"

    def resolved_node_name(self) -> str:
        if self.node_name:
            return self.node_name
        if self.backend.type == "simulated" and self.backend.node:
            return self.backend.node
        return socket.gethostname().split(".")[0].lower()


SECTIONS = {
    "redis": RedisSettings,
    "backend": BackendSettings,
    "http": HttpSettings,
    "kubernetes": KubernetesSettings,
    "thresholds": CheckConfig,
}


def load_config(path: Path | str | None = None) -> AgentConfig:
    """Read and validate the TOML file; a missing file at the default path means all defaults."""
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        if path == DEFAULT_CONFIG_PATH:
            return validate(AgentConfig(source=f"{path} (absent: defaults)"))
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> AgentConfig:
    config = AgentConfig(source=source)
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{key}] must be a table")
            setattr(config, key, _fill(SECTIONS[key](), value, source, f"{key}."))
        elif key == "source" or key not in _field_types(AgentConfig):
            raise ConfigError(
                f"{source}: unknown key {key!r}; known: "
                f"{', '.join(sorted(set(_field_types(AgentConfig)) - {'source'}))}"
            )
        else:
            _set(config, key, value, source, "")
    return validate(config)


def _field_types(cls) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _fill(target, values: dict[str, Any], source: str, prefix: str):
    known = _field_types(type(target))
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {prefix}{key!r}; known in [{prefix.rstrip('.')}]: "
                f"{', '.join(sorted(known))}"
            )
        _set(target, key, value, source, prefix)
    return target


def _set(target, key: str, value: Any, source: str, prefix: str) -> None:
    current = getattr(target, key)
    where = f"{source}: {prefix}{key}"
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
    elif isinstance(current, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        if isinstance(current, int) and not isinstance(current, bool) and not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number, not {value!r}")
        value = type(current)(value)
    elif isinstance(current, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, not {value!r}")
    elif isinstance(current, str):
        if key in ("max_fenced", "enabled") and isinstance(value, (int, bool)):
            value = str(value).lower()
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, not {value!r}")
    setattr(target, key, value)


def validate(config: AgentConfig) -> AgentConfig:
    """Cross-field and range checks; returns the config."""
    src = config.source
    if config.interval < 1:
        raise ConfigError(f"{src}: interval must be at least 1 second, not {config.interval}")
    if config.periodic_interval < config.interval:
        raise ConfigError(
            f"{src}: periodic_interval ({config.periodic_interval}) must not be shorter "
            f"than interval ({config.interval})"
        )
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"{src}: log_level must be one of {', '.join(LOG_LEVELS)}, not {config.log_level!r}"
        )
    if config.log_format not in ("logfmt", "json"):
        raise ConfigError(f"{src}: log_format must be logfmt or json, not {config.log_format!r}")
    if not config.state_file:
        raise ConfigError(f"{src}: state_file must not be empty")
    backend = config.backend
    if backend.type not in ("nvml", "simulated"):
        raise ConfigError(f"{src}: backend.type must be nvml or simulated, not {backend.type!r}")
    if backend.checks:
        from gpufleet.health.checks import select_checks

        try:
            select_checks(backend.checks)
        except ValueError as exc:
            raise ConfigError(f"{src}: backend.checks: {exc}") from None
    if backend.keeper_window < 0:
        raise ConfigError(f"{src}: backend.keeper_window must not be negative")
    if not 0 <= config.http.port <= 65535:
        raise ConfigError(f"{src}: http.port must be 0-65535, not {config.http.port}")
    kube = config.kubernetes
    if kube.enabled not in ("auto", "true", "false"):
        raise ConfigError(f"{src}: kubernetes.enabled must be auto, true or false, not {kube.enabled!r}")
    try:
        level = kube.taint_level
    except ValueError as exc:
        raise ConfigError(f"{src}: kubernetes.taint_severity: {exc}") from None
    if level < Severity.MONITOR:
        raise ConfigError(
            f"{src}: kubernetes.taint_severity must be MONITOR or worse (PASS would fence every node)"
        )
    if kube.lift_after < 1:
        raise ConfigError(f"{src}: kubernetes.lift_after must be at least 1, not {kube.lift_after}")
    if not re.fullmatch(r"\d+%?|\d+\.\d+%", kube.max_fenced.strip()):
        raise ConfigError(
            f"{src}: kubernetes.max_fenced must be a count (e.g. 5) or a share of the GPU "
            f'nodes (e.g. "10%"), not {kube.max_fenced!r}'
        )
    if config.redis.url and not config.redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{src}: redis.url must start with redis://, rediss:// or unix://")
    for name in ("report_refresh", "request_timeout", "retry_max"):
        if getattr(kube, name) <= 0:
            raise ConfigError(f"{src}: kubernetes.{name} must be positive")
    return config
