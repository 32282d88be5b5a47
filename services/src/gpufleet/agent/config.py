"""The agent's configuration: `/etc/gpufleet/agent.toml` in Backend.AI's layout.

Every key is validated here, once; an error names the offending key
(`[container] port-range: ...`) so a bad file is fixed in one look.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/gpufleet/agent.toml")
BACKENDS = ("local", "kubernetes")
SCRATCH_TYPES = ("hostdir", "nfs")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class EtcdConfig:
    namespace: str = "local"
    addr: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 2379))
    user: str | None = None
    password: str | None = None
    enabled: bool = True
    # Wait for a manager under nodes/manager/* before registering as running.
    wait_for_manager: bool = True
    manager_wait_timeout: float = 0.0  # 0 = wait forever


@dataclass
class AgentSection:
    id: str = ""
    rpc_listen_addr: HostPort = field(default_factory=lambda: HostPort("0.0.0.0", 6001))  # noqa: S104
    # CURVE keys, named as in Backend.AI 23.09's agent.toml (ZeroMQ certificate files).
    rpc_auth_agent_keypair: Path = Path("/etc/gpufleet/rpc-keys/agent.key_secret")
    rpc_auth_manager_public_key: Path = Path("/etc/gpufleet/rpc-keys/manager.key")
    advertised_host: str = ""
    backend: str = "local"
    region: str = "local"
    scaling_group: str = "default"
    state_dir: Path = Path("/var/lib/gpufleet")
    # Kubernetes backend only.
    kube_namespace: str = "gpufleet-kernels"
    kubeconfig: str | None = None
    kernel_image: str = "python:3.11-slim"
    kernel_ready_timeout: float = 120.0
    # Local backend: "auto" uses systemd-run when systemd is PID 1, else a subprocess.
    local_mode: str = "auto"


@dataclass
class ContainerConfig:
    port_range: tuple[int, int] = (30000, 31000)
    scratch_type: str = "hostdir"
    scratch_root: Path = Path("/var/lib/gpufleet-scratches")
    scratch_nfs_address: str | None = None
    scratch_pvc: str = "gpufleet-scratch"
    # Kernels run as this uid/gid (Backend.AI's "work" user is 1000) when the agent is
    # root; None ("agent" in the file) keeps the agent's own identity.
    kernel_uid: int | None = 1000
    kernel_gid: int | None = 1000

    def kernel_owner(self) -> tuple[int, int] | None:
        """(uid, gid) kernels run as, or None to run them as the agent itself."""
        if self.kernel_uid is None or os.geteuid() != 0:
            return None
        return self.kernel_uid, self.kernel_gid if self.kernel_gid is not None else self.kernel_uid


@dataclass
class ResourceConfig:
    reserved_cpu: float = 1.0
    reserved_mem: int = 1 << 30
    # "auto": NVML if it answers, else 0. An integer: that many GPUs (labs, tests).
    gpus: str | int = "auto"


@dataclass
class DebugConfig:
    heartbeat_interval: float = 20.0


@dataclass
class RpcConfig:
    # CURVE authentication (on by default; off only when set false explicitly).
    curve_auth: bool = True
    max_request_bytes: int = 16 << 20
    max_concurrency: int = 64
    call_timeout: float = 900.0
    # Tests and labs may run as a normal user; production insists on a root-owned agent keypair.
    require_root_owner: bool = True


@dataclass
class HttpConfig:
    addr: HostPort = field(default_factory=lambda: HostPort("0.0.0.0", 6003))  # noqa: S104


@dataclass
class AgentConfig:
    etcd: EtcdConfig
    agent: AgentSection
    container: ContainerConfig
    resource: ResourceConfig
    debug: DebugConfig
    rpc: RpcConfig
    http: HttpConfig
    redis_addr: HostPort | None = None  # overrides etcd's config/redis/addr when set
    redis_password: str | None = None
    source: Path | None = None

    def as_public_dict(self) -> dict[str, Any]:
        """The configuration without secrets (for get_local_config)."""
        return {
            "etcd": {"namespace": self.etcd.namespace, "addr": str(self.etcd.addr),
                     "enabled": self.etcd.enabled},
            "agent": {"id": self.agent.id, "rpc-listen-addr": str(self.agent.rpc_listen_addr),
                      "backend": self.agent.backend, "region": self.agent.region,
                      "scaling-group": self.agent.scaling_group, "state-dir": str(self.agent.state_dir)},
            "container": {"port-range": list(self.container.port_range),
                          "scratch-type": self.container.scratch_type,
                          "scratch-root": str(self.container.scratch_root),
                          "scratch-nfs-address": self.container.scratch_nfs_address},
            "resource": {"reserved-cpu": self.resource.reserved_cpu,
                         "reserved-mem": self.resource.reserved_mem, "gpus": self.resource.gpus},
            "debug": {"heartbeat-interval": self.debug.heartbeat_interval},
            "http": {"addr": str(self.http.addr)},
        }


# --- value parsers: each takes the dotted key for its error message -------------------------

def _host_port(key: str, value: Any, default_host: str = "0.0.0.0") -> HostPort:  # noqa: S104
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected 'host:port' or ':port', got {value!r}")
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ConfigError(f"{key}: expected 'host:port' or ':port', got {value!r}")
    host = host.strip("[]") or default_host
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{key}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: port {port} is outside 1-65535")
    return HostPort(host, port)


def _str(key: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if choices and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
    return value


def _number(key: str, value: Any, minimum: float = 0.0, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value!r}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(key: str, value: Any) -> int:
    """Bytes from an int or a string like '512m', '2g', '1.5G', '1Gi'."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a size like '2g', got {value!r}")
    text = value.strip().lower().removesuffix("ib").removesuffix("i").removesuffix("b")
    number, unit = text, ""
    if text and text[-1] in _SIZE_UNITS:
        number, unit = text[:-1], text[-1]
    try:
        amount = float(number)
    except ValueError:
        raise ConfigError(f"{key}: cannot read size {value!r}") from None
    if amount < 0:
        raise ConfigError(f"{key}: must be >= 0, got {value!r}")
    return int(amount * _SIZE_UNITS[unit])


def _port_range(key: str, value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        parts = value.split("-")
    elif isinstance(value, list):
        parts = value
    else:
        parts = []
    try:
        low, high = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected 'LOW-HIGH' or [LOW, HIGH], got {value!r}") from None
    if not (1 <= low <= high <= 65535):
        raise ConfigError(f"{key}: need 1 <= LOW <= HIGH <= 65535, got {low}-{high}")
    return low, high


class _Section:
    """Reads one table; remembers which keys were consumed so unknown keys are reported."""

    def __init__(self, data: dict[str, Any], name: str) -> None:
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{name}]: expected a table")
        self.raw, self.name, self.used = raw, name, set()

    def key(self, key: str) -> str:
        return f"[{self.name}] {key}"

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.raw.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.raw

    def check_unknown(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ConfigError(f"[{self.name}] {unknown[0]}: unknown key")


def parse_config(data: dict[str, Any], source: Path | None = None) -> AgentConfig:
    known_sections = {"etcd", "agent", "container", "resource", "debug", "rpc", "http", "redis"}
    for name in data:
        if name not in known_sections:
            raise ConfigError(f"[{name}]: unknown section")

    s = _Section(data, "etcd")
    etcd = EtcdConfig()
    etcd.namespace = _str(s.key("namespace"), s.get("namespace", etcd.namespace))
    if not etcd.namespace or "/" in etcd.namespace:
        raise ConfigError(f"{s.key('namespace')}: must be a non-empty name without '/'")
    if s.has("addr"):
        etcd.addr = _host_port(s.key("addr"), s.get("addr"), default_host="127.0.0.1")
    s.get("addr")
    if s.has("user"):
        etcd.user = _str(s.key("user"), s.get("user"))
    if s.has("password"):
        etcd.password = _str(s.key("password"), s.get("password"))
    etcd.enabled = _bool(s.key("enabled"), s.get("enabled", True))
    etcd.wait_for_manager = _bool(s.key("wait-for-manager"), s.get("wait-for-manager", True))
    etcd.manager_wait_timeout = _number(s.key("manager-wait-timeout"), s.get("manager-wait-timeout", 0.0))
    s.check_unknown()

    s = _Section(data, "agent")
    agent = AgentSection()
    agent.id = _str(s.key("id"), s.get("id", "")) or os.uname().nodename
    if "/" in agent.id:
        raise ConfigError(f"{s.key('id')}: must not contain '/'")
    if s.has("rpc-listen-addr"):
        agent.rpc_listen_addr = _host_port(s.key("rpc-listen-addr"), s.get("rpc-listen-addr"))
    s.get("rpc-listen-addr")
    agent.rpc_auth_agent_keypair = Path(_str(s.key("rpc-auth-agent-keypair"), s.get(
        "rpc-auth-agent-keypair", str(agent.rpc_auth_agent_keypair))))
    agent.rpc_auth_manager_public_key = Path(_str(s.key("rpc-auth-manager-public-key"), s.get(
        "rpc-auth-manager-public-key", str(agent.rpc_auth_manager_public_key))))
    agent.advertised_host = _str(s.key("advertised-host"), s.get("advertised-host", ""))
    agent.backend = _str(s.key("backend"), s.get("backend", agent.backend), BACKENDS)
    agent.region = _str(s.key("region"), s.get("region", agent.region))
    agent.scaling_group = _str(s.key("scaling-group"), s.get("scaling-group", agent.scaling_group))
    agent.state_dir = Path(_str(s.key("state-dir"), s.get("state-dir", str(agent.state_dir))))
    agent.kube_namespace = _str(s.key("kube-namespace"), s.get("kube-namespace", agent.kube_namespace))
    if s.has("kubeconfig"):
        agent.kubeconfig = _str(s.key("kubeconfig"), s.get("kubeconfig"))
    agent.kernel_image = _str(s.key("kernel-image"), s.get("kernel-image", agent.kernel_image))
    agent.kernel_ready_timeout = _number(s.key("kernel-ready-timeout"),
                                         s.get("kernel-ready-timeout", agent.kernel_ready_timeout), 0.1)
    agent.local_mode = _str(s.key("local-mode"), s.get("local-mode", "auto"),
                            ("auto", "systemd", "subprocess"))
    s.check_unknown()

    s = _Section(data, "container")
    container = ContainerConfig()
    if s.has("port-range"):
        container.port_range = _port_range(s.key("port-range"), s.get("port-range"))
    s.get("port-range")
    container.scratch_type = _str(s.key("scratch-type"), s.get("scratch-type", "hostdir"), SCRATCH_TYPES)
    container.scratch_root = Path(_str(s.key("scratch-root"),
                                       s.get("scratch-root", str(container.scratch_root))))
    if not container.scratch_root.is_absolute():
        raise ConfigError(f"{s.key('scratch-root')}: must be an absolute path")
    if s.has("scratch-nfs-address"):
        container.scratch_nfs_address = _str(s.key("scratch-nfs-address"), s.get("scratch-nfs-address"))
    container.scratch_pvc = _str(s.key("scratch-pvc"), s.get("scratch-pvc", container.scratch_pvc))
    for key, attr in (("kernel-uid", "kernel_uid"), ("kernel-gid", "kernel_gid")):
        value = s.get(key, getattr(container, attr))
        if value == "agent":
            value = None
        elif value is not None:
            value = int(_number(s.key(key), value, 0, integer=True))
        setattr(container, attr, value)
    if container.scratch_type == "nfs" and not container.scratch_nfs_address:
        raise ConfigError(f"{s.key('scratch-nfs-address')}: required when scratch-type is 'nfs'")
    s.check_unknown()

    s = _Section(data, "resource")
    resource = ResourceConfig()
    resource.reserved_cpu = _number(s.key("reserved-cpu"), s.get("reserved-cpu", resource.reserved_cpu))
    resource.reserved_mem = parse_size(s.key("reserved-mem"), s.get("reserved-mem", resource.reserved_mem))
    gpus = s.get("gpus", "auto")
    if gpus != "auto":
        gpus = int(_number(s.key("gpus"), gpus, 0, integer=True))
    resource.gpus = gpus
    s.check_unknown()

    s = _Section(data, "debug")
    debug = DebugConfig()
    debug.heartbeat_interval = _number(s.key("heartbeat-interval"), s.get("heartbeat-interval", 20.0), 0.05)
    s.check_unknown()

    s = _Section(data, "rpc")
    rpc = RpcConfig()
    rpc.curve_auth = _bool(s.key("curve-auth"), s.get("curve-auth", True))
    rpc.max_request_bytes = int(_number(s.key("max-request-bytes"),
                                        s.get("max-request-bytes", rpc.max_request_bytes), 1024,
                                        integer=True))
    rpc.max_concurrency = int(_number(s.key("max-concurrency"), s.get("max-concurrency", rpc.max_concurrency),
                                      1, integer=True))
    rpc.call_timeout = _number(s.key("call-timeout"), s.get("call-timeout", rpc.call_timeout), 0.1)
    rpc.require_root_owner = _bool(s.key("require-root-owner"), s.get("require-root-owner", True))
    s.check_unknown()

    s = _Section(data, "http")
    http = HttpConfig()
    if s.has("addr"):
        http.addr = _host_port(s.key("addr"), s.get("addr"))
    s.get("addr")
    s.check_unknown()

    # Optional: Redis given directly instead of through etcd's global config.
    s = _Section(data, "redis")
    redis_addr = _host_port(s.key("addr"), s.get("addr"), "127.0.0.1") if s.has("addr") else None
    s.get("addr")
    redis_password = _str(s.key("password"), s.get("password")) if s.has("password") else None
    s.check_unknown()

    if redis_addr is None and not etcd.enabled:
        raise ConfigError("[redis] addr: required when [etcd] enabled = false")

    return AgentConfig(etcd=etcd, agent=agent, container=container, resource=resource, debug=debug,
                       rpc=rpc, http=http, redis_addr=redis_addr, redis_password=redis_password,
                       source=source)


def load_config(path: str | os.PathLike = DEFAULT_CONFIG_PATH) -> AgentConfig:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_config(data, source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
