"""The health agent's configuration: `/etc/gpufleet/health.toml`, validated with clear errors.

The sections are plain dataclasses (the code reads them); the file is validated by
strict pydantic models derived from them (gpufleet.config_model), so adding a key
is one line in its dataclass.

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
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    create_model,
)

from gpufleet import config_model
from gpufleet.config_model import ConfigError, read_toml
from gpufleet.health.checks import CheckConfig
from gpufleet.health.severity import Severity

DEFAULT_CONFIG_PATH = Path("/etc/gpufleet/health.toml")
DEFAULT_STATE_FILE = Path("/var/lib/gpufleet/health.json")
K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
LOG_LEVELS = ("debug", "info", "warning", "error")


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
# Strings that TOML users naturally write as numbers or booleans.
LENIENT_STRINGS = ("max_fenced", "enabled")


def load_config(path: Path | str | None = None) -> AgentConfig:
    """Read and validate the TOML file; a missing file at the default path means all defaults."""
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    if path == DEFAULT_CONFIG_PATH and not path.exists():
        return validate(AgentConfig(source=f"{path} (absent: defaults)"))
    return config_from_dict(read_toml(path), source=str(path))


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> AgentConfig:
    def describe(location: tuple[str, ...], kind: str, message: str, value: Any) -> str:
        in_section = location[0] in SECTIONS
        if len(location) > 2:  # an item of a list: name the whole list, as the file has it
            value = data[location[0]][location[1]] if in_section else data[location[0]]
        return f"{source}: {_describe(location[:2] if in_section else location[:1], kind, value)}"

    values = config_model.validate(_FILE_MODEL, data, describe).model_dump(exclude_unset=True)
    sections = {name: SECTIONS[name](**values.pop(name)) for name in list(values) if name in SECTIONS}
    return validate(AgentConfig(source=source, **values, **sections))


def _describe(location: tuple[str, ...], kind: str, value: Any) -> str:
    """Today's wording: `interval must be a number, not '5m'`, `unknown key kubernetes.'x'`."""
    section, key = (location[0], location[1]) if len(location) > 1 else ("", location[0])
    prefix = f"{section}." if section else ""
    if kind == "extra_forbidden":
        if section:
            known = sorted(f.name for f in dataclasses.fields(SECTIONS[section]))
            return f"unknown key {prefix}{key!r}; known in [{section}]: {', '.join(known)}"
        return f"unknown key {key!r}; known: {', '.join(sorted(_TOP_LEVEL_KEYS))}"
    if kind in ("model_type", "model_attributes_type", "dict_type") and not section:
        return f"[{key}] must be a table"
    expected = {"bool_type": "true or false", "int_type": "a number", "float_type": "a number",
                "int_from_float": "a whole number", "string_type": "a string"}.get(kind, "valid")
    if kind == "list_type" or isinstance(value, list):
        expected = "a list of strings"
    elif kind == "int_type" and isinstance(value, float):
        expected = "a whole number"
    return f"{prefix}{key} must be {expected}, not {value!r}"


def _strict_type(name: str, default: Any) -> Any:
    """A strict pydantic type for a dataclass field, from its default's type."""
    if isinstance(default, bool):
        return StrictBool
    if isinstance(default, int):
        return StrictInt
    if isinstance(default, float):
        return Annotated[float, Field(strict=True)]
    if isinstance(default, list):
        return list[StrictStr]
    if name in LENIENT_STRINGS:
        return Annotated[StrictStr, BeforeValidator(
            lambda value: str(value).lower() if isinstance(value, (int, bool)) else value)]
    return StrictStr


def _model_of(cls, name: str, skip: tuple[str, ...] = (), **nested: Any) -> type[BaseModel]:
    fields: dict[str, Any] = dict(nested)
    for item in dataclasses.fields(cls):
        if item.name in skip or item.name in nested:
            continue
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        fields[item.name] = (_strict_type(item.name, default), default)
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


_FILE_MODEL = _model_of(AgentConfig, "HealthToml", skip=("source",), **{
    name: (_model_of(cls, f"{name}_section"), None) for name, cls in SECTIONS.items()})
_TOP_LEVEL_KEYS = [f.name for f in dataclasses.fields(AgentConfig) if f.name != "source"]


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
