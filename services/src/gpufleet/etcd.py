"""A small etcd v3 client over etcd's JSON gateway, and the idempotent key operations.

The `etcd_kv` Ansible module is a thin wrapper around `apply()`. The client only
needs the standard library, so it runs wherever Python does: etcd's grpc-gateway
takes JSON over HTTP(S) at `/v3/` (etcd >= 3.4; 3.3 served `/v3beta/`, 3.2
`/v3alpha/`), keys and values base64-encoded. The gateway path is discovered from
`/version`.

`apply()` reads before it writes: a put whose value is already there, or a delete
of a key that is not there, changes nothing; in check mode it only reads.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

STATES = ("present", "absent", "get")


class EtcdError(Exception):
    """etcd could not be reached or refused a request; the message says which."""


class _TokenRejected(Exception):
    """etcd refused the auth token (expired, or none given while auth is on)."""


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(data: str | None) -> str:
    return base64.b64decode(data or "").decode("utf-8", errors="replace")


def prefix_range_end(prefix: str | bytes) -> bytes:
    """The smallest key after every key that starts with `prefix` (etcdctl --prefix).

    The last byte below 0xff is incremented and what follows it dropped; a prefix
    of only 0xff bytes (or empty) means "to the end of the keyspace", b"\\0".
    """
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


def gateway_prefix(server_version: str) -> str:
    """The gateway path for an etcd server version ("3.4.23" -> "/v3")."""
    try:
        major, minor = (int(part) for part in server_version.split(".")[:2])
    except ValueError:
        return "/v3"
    if (major, minor) >= (3, 4):
        return "/v3"
    if (major, minor) == (3, 3):
        return "/v3beta"
    return "/v3alpha"


@dataclass
class EtcdClient:
    """One etcd endpoint: `http(s)://host:port`, optional TLS client cert and auth."""

    endpoint: str
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    validate_certs: bool = True
    user: str | None = None
    password: str | None = None
    timeout: float = 5.0
    _prefix: str | None = field(default=None, init=False, repr=False)
    _token: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.endpoint = self.endpoint.rstrip("/")
        if "://" not in self.endpoint:
            scheme = "https" if (self.ca_cert or self.client_cert) else "http"
            self.endpoint = f"{scheme}://{self.endpoint}"
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"etcd endpoint must be an http:// or https:// URL, not {self.endpoint!r}")
        self._ssl = self._ssl_context() if self.endpoint.startswith("https://") else None

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_cert)
        if not self.validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def _request(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        method = "GET" if data is None else "POST"
        # The endpoint's scheme is http or https (checked in __post_init__).
        request = urllib.request.Request(self.endpoint + path, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", self._token)
        try:
            # The timeout bounds the connection and every read: no call waits forever.
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._ssl) as response:  # noqa: S310
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                parsed = json.loads(detail)
                detail = parsed.get("error") or parsed.get("message") or detail
            except (ValueError, AttributeError):
                pass
            if exc.code == 401 or "invalid auth token" in str(detail):
                raise _TokenRejected(detail) from exc
            raise EtcdError(f"etcd at {self.endpoint} answered {exc.code} to {path}: {detail}") from exc
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EtcdError(f"cannot reach etcd at {self.endpoint}: {reason}") from exc

    def _authenticate(self) -> None:
        self._token = None
        try:
            response = self._request(f"{self._prefix}/auth/authenticate",
                                     {"name": self.user, "password": self.password or ""})
        except _TokenRejected as exc:
            raise EtcdError(f"etcd at {self.endpoint} refused user {self.user!r}: {exc}") from None
        except EtcdError as exc:
            if "answered" not in str(exc):  # unreachable or too slow: say that, not "refused"
                raise
            raise EtcdError(f"etcd at {self.endpoint} refused user {self.user!r}: {exc}") from None
        self._token = response.get("token")
        if not self._token:
            raise EtcdError(f"etcd at {self.endpoint} gave no token for user {self.user!r}")

    def _call(self, method: str, body: dict) -> dict:
        if self._prefix is None:
            version = self._request("/version").get("etcdserver", "")
            self._prefix = gateway_prefix(version)
            if self.user:
                self._authenticate()
        try:
            return self._request(f"{self._prefix}/{method}", body)
        except _TokenRejected as exc:
            # Tokens expire (simple tokens after --auth-token-ttl, 300 s by default):
            # authenticate again once; a second refusal is a real one.
            if not self.user:
                raise EtcdError(f"etcd at {self.endpoint} needs a user and password: {exc}") from None
            self._authenticate()
            try:
                return self._request(f"{self._prefix}/{method}", body)
            except _TokenRejected as again:
                raise EtcdError(f"etcd at {self.endpoint} refused user {self.user!r}: {again}") from None

    def _range(self, key: str, prefix: bool) -> dict:
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_range_end(key))
        return body

    def get(self, key: str, prefix: bool = False) -> dict[str, str]:
        """The keys (one, or every key under a prefix) and their values."""
        response = self._call("kv/range", self._range(key, prefix))
        return {_unb64(kv["key"]): _unb64(kv.get("value")) for kv in response.get("kvs", [])}

    def put(self, key: str, value: str) -> None:
        self._call("kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete a key or a prefix; the number of keys deleted."""
        response = self._call("kv/deleterange", self._range(key, prefix))
        return int(response.get("deleted", 0))


@dataclass
class KvResult:
    changed: bool
    key: str
    state: str
    value: str | None = None
    values: dict[str, str] = field(default_factory=dict)
    before: dict[str, str] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)

    def diff(self) -> dict[str, str]:
        def render(keys: dict[str, str]) -> str:
            return "".join(f"{key} = {value}\n" for key, value in sorted(keys.items()))

        return {"before": render(self.before), "after": render(self.after),
                "before_header": self.key, "after_header": self.key}


def apply(client: EtcdClient, key: str, state: str = "present", value: str | None = None,
          prefix: bool = False, check_mode: bool = False) -> KvResult:
    """Make `key` (or every key under it with `prefix`) be as asked; read-only for `get`."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    if not key:
        raise ValueError("key must not be empty")
    if state == "present":
        if prefix:
            raise ValueError("prefix applies to state=absent and state=get only")
        if value is None:
            raise ValueError("state=present needs a value")
    before = client.get(key, prefix=prefix)
    if state == "get":
        return KvResult(False, key, state, value=before.get(key), values=before, before=before, after=before)
    if state == "present":
        after = {key: value}
        changed = before.get(key) != value
        if changed and not check_mode:
            client.put(key, value)
        return KvResult(changed, key, state, value=value, values=after, before=before, after=after)
    changed = bool(before)
    if changed and not check_mode:
        client.delete(key, prefix=prefix)
    return KvResult(changed, key, state, values={}, before=before, after={})


# --- auth: users, roles and `auth enable`, reconciled like the keys above ---------------------

PERMISSION_TYPES = {"read": "READ", "write": "WRITE", "readwrite": "READWRITE"}


@dataclass
class AuthResult:
    changed: bool
    actions: list[str]  # what was (or in check mode would be) done; never a password


def _permission(perm: dict) -> tuple[str, str, bool]:
    """(type, key, prefix) of a permission given as {type, key, prefix}."""
    kind = str(perm.get("type", "read")).lower()
    if kind not in PERMISSION_TYPES:
        raise ValueError(f"permission type must be one of {', '.join(PERMISSION_TYPES)}, not {kind!r}")
    key = perm.get("key")
    if not key:
        raise ValueError("every permission needs a key")
    return PERMISSION_TYPES[kind], str(key), bool(perm.get("prefix", True))


def _auth_enabled(client: EtcdClient) -> bool:
    """Auth is on when an anonymous client may not list users."""
    anonymous = EtcdClient(client.endpoint, client.ca_cert, client.client_cert, client.client_key,
                           client.validate_certs, timeout=client.timeout)
    try:
        anonymous._call("auth/user/list", {})
    except EtcdError:
        return True
    return False


def apply_auth(client: EtcdClient, root_password: str, roles: dict[str, list[dict]],
               users: dict[str, dict], check_mode: bool = False) -> AuthResult:
    """Make the roles and users exist with (at least) these permissions and roles, then enable auth.

    `client` carries TLS settings only; it is used as root (with `root_password`) once auth is on.
    Passwords of existing users are not compared (etcd cannot show them); a user is created with
    its password once. Permissions and role grants are added, never removed.
    """
    if not root_password:
        raise ValueError("the root password must not be empty")
    for name, user in users.items():
        if not user.get("password"):
            raise ValueError(f"etcd user {name!r} needs a password")
    enabled = _auth_enabled(client)
    if enabled:
        client.user, client.password, client._prefix = "root", root_password, None
    actions: list[str] = []

    def do(action: str, method: str, body: dict) -> None:
        actions.append(action)
        if not check_mode:
            client._call(method, body)

    existing_users = set(client._call("auth/user/list", {}).get("users", []))
    existing_roles = set(client._call("auth/role/list", {}).get("roles", []))
    wanted_users = {"root": {"password": root_password, "roles": ["root"]}, **users}
    for name, perms in roles.items():
        granted: set[tuple[str, str, str]] = set()
        if name in existing_roles:
            for perm in client._call("auth/role/get", {"role": name}).get("perm", []):
                granted.add((perm.get("permType", "READ"), _unb64(perm.get("key")),
                             _unb64(perm.get("range_end"))))
        else:
            do(f"add role {name}", "auth/role/add", {"name": name})
        for perm in perms:
            kind, key, prefix = _permission(perm)
            range_end = prefix_range_end(key).decode("utf-8", errors="replace") if prefix else ""
            if (kind, key, range_end) not in granted:
                body = {"key": _b64(key), "permType": kind}
                if prefix:
                    body["range_end"] = _b64(prefix_range_end(key))
                do(f"grant {kind.lower()} on {key}{'*' if prefix else ''} to role {name}",
                   "auth/role/grant", {"name": name, "perm": body})
    for name, user in wanted_users.items():
        have_roles: set[str] = set()
        if name in existing_users:
            have_roles = set(client._call("auth/user/get", {"name": name}).get("roles", []))
        else:
            do(f"add user {name}", "auth/user/add", {"name": name, "password": user["password"]})
        for role in user.get("roles", []):
            if role not in have_roles:
                do(f"grant role {role} to user {name}", "auth/user/grant", {"user": name, "role": role})
    if not enabled:
        do("enable auth", "auth/enable", {})
    return AuthResult(bool(actions), actions)
