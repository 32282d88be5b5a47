"""The agent's configuration: `/etc/gpufleet/agent.toml` in Backend.AI's layout.

Every key is declared once below (gpufleet.config_model: kebab-case keys, unknown
keys refused); an error names the offending key (`[container] port-range: ...`)
so a bad file is fixed in one look. Adding a key is one line in its section.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from gpufleet.config_model import (
    AbsolutePath,
    Choice,
    ConfigError,
    Flag,
    HostPort,
    Integer,
    KeyProblem,
    ListenAddr,
    Number,
    PathText,
    PeerAddr,
    PortRange,
    Section,
    Size,
    Text,
    absolute_path,
    number,
    port_range_parts,
    read_toml,
    validate,
)
from gpufleet.config_model import size as _size

__all__ = ["AgentConfig", "ConfigError", "HostPort", "load_config", "parse_config", "parse_size"]

DEFAULT_CONFIG_PATH = Path("/etc/gpufleet/agent.toml")
BACKENDS = ("local", "kubernetes")
SCRATCH_TYPES = ("hostdir", "nfs")


def _kernel_id(value: Any) -> int | None:
    """A uid/gid, or None for "agent" (kernels keep the agent's identity)."""
    return None if value in ("agent", None) else int(number(0, integer=True)(value))


def _gpus(value: Any) -> str | int:
    return value if value in ("auto", "simulated") else int(number(0, integer=True)(value))


def _id_range(value: Any) -> tuple[int, int] | None:
    """Kernel uids LOW-HIGH (above the system ids), or None for an empty string."""
    if value == "" or value is None:
        return None
    low, high = port_range_parts(value)
    if not 1000 <= low <= high < 2**31 - 1:
        raise ValueError(f"need 1000 <= LOW <= HIGH < 2147483647 (no system ids), got {low}-{high}")
    return low, high


EPHEMERAL_RANGE_PATH = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_port_range(path: Path | None = None) -> tuple[int, int] | None:
    """The host's local port range for outbound connections, or None when unreadable."""
    try:
        low, high = (int(x) for x in (path or EPHEMERAL_RANGE_PATH).read_text().split())
    except (OSError, ValueError):
        return None
    return low, high


def _interpreter(value: Any) -> str | None:
    """An absolute path, or None for an empty string (the agent's own interpreter)."""
    return None if value in ("", None) else absolute_path(value)


KernelId = Annotated[int | None, BeforeValidator(_kernel_id)]
Interpreter = Annotated[str | None, BeforeValidator(_interpreter)]
IdRange = Annotated[tuple[int, int] | None, BeforeValidator(_id_range)]
Gpus = Annotated[str | int, BeforeValidator(_gpus)]


class EtcdConfig(Section):
    namespace: Text = "local"
    addr: PeerAddr = HostPort("127.0.0.1", 2379)
    user: Text | None = None
    password: Text | None = None
    # Client TLS: with a CA or a certificate set, etcd is reached over https.
    ca_file: AbsolutePath | None = None
    cert_file: AbsolutePath | None = None
    key_file: AbsolutePath | None = None
    timeout: Number(0.1) = 5.0  # seconds, every etcd request
    enabled: Flag = True
    # Wait for a manager under nodes/manager/* before registering as running.
    wait_for_manager: Flag = True
    manager_wait_timeout: Number() = 0.0  # 0 = wait forever

    @model_validator(mode="after")
    def _check(self) -> EtcdConfig:
        if not self.namespace or "/" in self.namespace:
            raise KeyProblem("namespace", "must be a non-empty name without '/'")
        if bool(self.cert_file) != bool(self.key_file):
            missing = "key-file" if self.cert_file else "cert-file"
            raise KeyProblem(missing, "cert-file and key-file go together")
        return self


class AgentSection(Section):
    id: Text = ""  # "" = the host name
    rpc_listen_addr: ListenAddr = HostPort("0.0.0.0", 6001)  # noqa: S104
    # CURVE keys, named as in Backend.AI 23.09's agent.toml (ZeroMQ certificate files).
    rpc_auth_agent_keypair: PathText = Path("/etc/gpufleet/rpc-keys/agent.key_secret")
    rpc_auth_manager_public_key: PathText = Path("/etc/gpufleet/rpc-keys/manager.key")
    advertised_host: Text = ""
    backend: Choice(*BACKENDS) = "local"
    region: Text = "local"
    scaling_group: Text = "default"
    state_dir: PathText = Path("/var/lib/gpufleet")
    # Kubernetes backend only.
    kube_namespace: Text = "gpufleet-kernels"
    kubeconfig: Text | None = None
    kernel_image: Text = "python:3.11-slim"
    kernel_ready_timeout: Number(0.1) = 120.0
    # Local backend: "auto" uses systemd-run when systemd is PID 1, else a subprocess.
    local_mode: Choice("auto", "systemd", "subprocess") = "auto"

    @model_validator(mode="after")
    def _check(self) -> AgentSection:
        self.id = self.id or os.uname().nodename
        if "/" in self.id:
            raise KeyProblem("id", "must not contain '/'")
        return self


class ContainerConfig(Section):
    port_range: PortRange = (30000, 31000)
    scratch_type: Choice(*SCRATCH_TYPES) = "hostdir"
    scratch_root: PathText = Path("/var/lib/gpufleet-scratches")
    scratch_nfs_address: Text | None = None
    scratch_pvc: Text = "gpufleet-scratch"
    # Kernels run as this uid/gid (Backend.AI's "work" user is 1000) when the agent is
    # root; None ("agent" in the file) keeps the agent's own identity.
    kernel_uid: KernelId = 1000
    kernel_gid: KernelId = 1000
    # Local backend, agent as root: each kernel gets its own uid (= gid) from this range, so
    # kernels cannot read or signal each other. None (an empty string in the file): kernel-uid.
    kernel_uid_range: IdRange = (60000, 60999)
    # Local backend: the Python that runs each kernel's runner (standard library only). It must
    # be executable by the kernel's uid, every directory above it traversable; None (an empty
    # string in the file): the agent's own interpreter.
    kernel_python: Interpreter = None

    @model_validator(mode="after")
    def _check(self) -> ContainerConfig:
        low, high = self.port_range
        ephemeral = ephemeral_port_range()
        # Outbound connections (the agent's own, every process's) take local ports from the
        # ephemeral range at random: a pool inside it hands kernels ports taken when they bind.
        if ephemeral is not None and low <= ephemeral[1] and ephemeral[0] <= high:
            raise KeyProblem("port-range", f"{low}-{high} overlaps this host's ephemeral port range "
                             f"{ephemeral[0]}-{ephemeral[1]} (net.ipv4.ip_local_port_range), where outbound "
                             "connections take their local ports; choose a range outside it")
        if not self.scratch_root.is_absolute():
            raise KeyProblem("scratch-root", "must be an absolute path")
        if self.scratch_type == "nfs" and not self.scratch_nfs_address:
            raise KeyProblem("scratch-nfs-address", "required when scratch-type is 'nfs'")
        return self

    def kernel_owner(self) -> tuple[int, int] | None:
        """(uid, gid) kernels run as, or None to run them as the agent itself."""
        if self.kernel_uid is None or os.geteuid() != 0:
            return None
        return self.kernel_uid, self.kernel_gid if self.kernel_gid is not None else self.kernel_uid


class ResourceConfig(Section):
    reserved_cpu: Number() = 1.0
    reserved_mem: Size = 1 << 30
    # "auto": what NVML reads (through gpufleet.gpu), else 0; "simulated": gpufleet.gpu's
    # simulated backend (labs without GPUs). An integer: that many GPUs (tests).
    gpus: Gpus = "auto"


class DebugConfig(Section):
    heartbeat_interval: Number(0.05) = 20.0


class RpcConfig(Section):
    # CURVE authentication (on by default; off only when set false explicitly).
    curve_auth: Flag = True
    max_request_bytes: Integer(1024) = 16 << 20
    max_concurrency: Integer(1) = 64
    call_timeout: Number(0.1) = 900.0
    # Tests and labs may run as a normal user; production insists on a root-owned agent keypair.
    require_root_owner: Flag = True


class HttpConfig(Section):
    addr: ListenAddr = HostPort("0.0.0.0", 6003)  # noqa: S104


class RedisSection(Section):
    """Optional: Redis given directly instead of through etcd's global config."""

    addr: PeerAddr | None = None  # overrides etcd's config/redis/addr when set
    password: Text | None = None


class AgentConfig(Section):
    etcd: EtcdConfig = Field(default_factory=EtcdConfig)
    agent: AgentSection = Field(default_factory=AgentSection)
    container: ContainerConfig = Field(default_factory=ContainerConfig)
    resource: ResourceConfig = Field(default_factory=ResourceConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)
    rpc: RpcConfig = Field(default_factory=RpcConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    redis: RedisSection = Field(default_factory=RedisSection)
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _check(self) -> AgentConfig:
        if self.redis.addr is None and not self.etcd.enabled:
            raise KeyProblem("redis", "addr: required when [etcd] enabled = false")
        return self

    @property
    def redis_addr(self) -> HostPort | None:
        return self.redis.addr

    @property
    def redis_password(self) -> str | None:
        return self.redis.password

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
                          "scratch-nfs-address": self.container.scratch_nfs_address,
                          "kernel-uid-range": list(self.container.kernel_uid_range or []),
                          "kernel-python": self.container.kernel_python or ""},
            "resource": {"reserved-cpu": self.resource.reserved_cpu,
                         "reserved-mem": self.resource.reserved_mem, "gpus": self.resource.gpus},
            "debug": {"heartbeat-interval": self.debug.heartbeat_interval},
            "http": {"addr": str(self.http.addr)},
        }


def _describe(location: tuple[str, ...], kind: str, message: str, value: Any) -> str:
    """`[section] key: message`, as every agent.toml error reads."""
    if len(location) == 1:
        section = location[0]
        if kind == "extra_forbidden" or section == "source":
            return f"[{section}]: unknown section"
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            return f"[{section}]: expected a table"
        if section == "redis":  # the cross-section rule above
            return f"[redis] {message}"
        return f"[{section}]: {message}"
    section, key = location[0], location[-1]
    if kind == "extra_forbidden":
        return f"[{section}] {key}: unknown key"
    if kind in ("path_type", "string_type"):
        message = f"expected a string, got {value!r}"
    return f"[{section}] {key}: {message}"


def parse_size(key: str, value: Any) -> int:
    """Bytes from an int or a string like '512m', '2g', '1.5G', '1Gi'."""
    try:
        return _size(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def parse_config(data: dict[str, Any], source: Path | None = None) -> AgentConfig:
    if "source" in data:
        raise ConfigError("[source]: unknown section")
    config = validate(AgentConfig, data, _describe)
    config.source = source
    return config


def load_config(path: str | os.PathLike = DEFAULT_CONFIG_PATH) -> AgentConfig:
    path = Path(path)
    data = read_toml(path, missing="no such configuration file", unreadable="cannot read it: {strerror}")
    try:
        return parse_config(data, source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
