"""The one client factory: auth as kubernetes.core resolves it, a deadline on every request, retries.

Auth (`resolve_auth`), the way kubernetes.core's modules resolve theirs, so
AWX's Kubernetes credential and `module_defaults` for `group/kubernetes.core.k8s`
work unchanged:

1. each option given explicitly (module parameter, CLI flag, service config);
2. else its `K8S_AUTH_<OPTION>` environment variable — kubernetes.core reads
   both spellings, the option name and the client's name (`K8S_AUTH_VALIDATE_CERTS`
   or `K8S_AUTH_VERIFY_SSL`, `K8S_AUTH_CA_CERT` or `K8S_AUTH_SSL_CA_CERT`,
   `K8S_AUTH_CLIENT_CERT` or `K8S_AUTH_CERT_FILE`, …); booleans are false for
   "0", "false", "no";
3. then the source: `host` with a token, user+password or a client cert/key is
   complete by itself; else a kubeconfig (the option, $KUBECONFIG, ~/.kube/config)
   when `kubeconfig` or `context` is set; else the in-cluster service account,
   then the default kubeconfig. Options from 1–2 override what the source set.

Every request made through a client from `api_client()` carries a deadline
(`request_timeout`, one value per client: no request without one) and is
retried with exponential backoff and jitter when the server says it did not
process it (429, 502, 503, 504, a refused or reset connection; 500 for reads
only). A timeout is never retried: a hung API server is reported within one
deadline, not several. The client announces itself as `gpufleet/<version>`.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import urllib3
from kubernetes import client, config
from kubernetes.client import rest
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.util.wait import wait_for_read

log = logging.getLogger("gpufleet.kube")

# One default for every caller; each service and module may pass its own.
DEFAULT_REQUEST_TIMEOUT = 10.0

# option -> (names of its K8S_AUTH_* variables, the kubernetes Configuration attribute, type)
AUTH_OPTIONS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "kubeconfig": (("KUBECONFIG",), "", "path"),
    "context": (("CONTEXT",), "", "str"),
    "host": (("HOST",), "host", "str"),
    "api_key": (("API_KEY",), "api_key", "str"),
    "username": (("USERNAME",), "username", "str"),
    "password": (("PASSWORD",), "password", "str"),
    "validate_certs": (("VALIDATE_CERTS", "VERIFY_SSL"), "verify_ssl", "bool"),
    "ca_cert": (("CA_CERT", "SSL_CA_CERT"), "ssl_ca_cert", "path"),
    "client_cert": (("CLIENT_CERT", "CERT_FILE"), "cert_file", "path"),
    "client_key": (("CLIENT_KEY", "KEY_FILE"), "key_file", "path"),
    "proxy": (("PROXY",), "proxy", "str"),
    "no_proxy": (("NO_PROXY",), "no_proxy", "str"),
}

# Gateway errors: the request did not reach kube-apiserver. 429 is retried only with Retry-After
# (API priority and fairness sends it; an eviction refused by a PodDisruptionBudget does not, and
# the drain logic decides about those). 500 only for reads. 409 is retried by the read-modify-write
# helpers, which must read again first.
RETRY_STATUSES = {502, 503, 504}
READ_RETRY_STATUSES = RETRY_STATUSES | {500}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gpufleet")
    except Exception:  # noqa: BLE001 — an uninstalled checkout still has a user agent
        return "0"


USER_AGENT = f"gpufleet/{_version()}"


def env_bool(value: str) -> bool:
    return value.strip().lower() not in ("0", "false", "no")


def resolve_auth(environ: Mapping[str, str] | None = None, **explicit) -> dict:
    """The auth options in effect: explicit values first, then each K8S_AUTH_* variable."""
    environ = os.environ if environ is None else environ
    unknown = set(explicit) - set(AUTH_OPTIONS)
    if unknown:
        raise TypeError(f"unknown Kubernetes auth option(s): {', '.join(sorted(unknown))}")
    auth: dict = {}
    for option, (env_names, _, kind) in AUTH_OPTIONS.items():
        value = explicit.get(option)
        if value is None:
            value = next((environ[f"K8S_AUTH_{name}"] for name in env_names
                          if environ.get(f"K8S_AUTH_{name}") not in (None, "")), None)
            if value is not None and kind == "bool":
                value = env_bool(value)
        if value is not None and value != "":
            auth[option] = os.path.expanduser(value) if kind == "path" else value
    if auth.get("host"):
        auth["host"] = str(auth["host"]).rstrip("/")
    return auth


def _load_source(auth: dict, configuration: client.Configuration, environ: Mapping[str, str]) -> str:
    """Fill `configuration` from the source that applies; returns what was used (for errors and logs)."""
    def has(*names: str) -> bool:
        return all(auth.get(name) for name in names)

    if has("host", "api_key") or has("host", "username", "password") \
            or has("host", "client_cert", "client_key"):
        return "parameters"
    if has("kubeconfig") or has("context"):
        path = auth.get("kubeconfig") or environ.get("KUBECONFIG") or None
        config.load_kube_config(config_file=path, context=auth.get("context"),
                                client_configuration=configuration)
        return f"kubeconfig {path or '~/.kube/config'}"
    try:
        config.load_incluster_config(client_configuration=configuration)
        return "in-cluster service account"
    except ConfigException:
        pass
    path = environ.get("KUBECONFIG") or None
    if path is None and not os.path.exists(os.path.expanduser(config.KUBE_CONFIG_DEFAULT_LOCATION)):
        if has("host"):
            return "parameters"
        raise ConfigException(
            "no Kubernetes credentials: set host and api_key (K8S_AUTH_HOST, K8S_AUTH_API_KEY), a kubeconfig "
            "(K8S_AUTH_KUBECONFIG, KUBECONFIG, ~/.kube/config), or run in a pod with a service account")
    config.load_kube_config(config_file=path, client_configuration=configuration)
    return f"kubeconfig {path or '~/.kube/config'}"


@dataclass
class RetryPolicy:
    """Backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    attempts: int = 4
    base: float = 0.2
    cap: float = 2.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), self.cap)
        return random.uniform(0, min(self.cap, self.base * 2 ** attempt))


class GpufleetApiClient(client.ApiClient):
    """An ApiClient whose every request has a deadline and retries what the server did not process."""

    def __init__(self, configuration: client.Configuration, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 retry: RetryPolicy | None = None, source: str = "") -> None:
        super().__init__(configuration)
        self.request_timeout = float(request_timeout)
        self.retry = retry or RetryPolicy()
        self.source = source
        self.user_agent = USER_AGENT
        self.sleep = time.sleep
        self._direct = _direct_target(configuration)
        self._kept = threading.local()  # each thread's own keep-alive connection (_send_kept)

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        timeout = _request_timeout or self.request_timeout
        return self._retrying(method, url, lambda: super(GpufleetApiClient, self).call_api(
            method, url, header_params=header_params, body=body, post_params=post_params,
            _request_timeout=timeout))

    def post_json(self, path: str, body: dict) -> rest.RESTResponse:
        """POST a JSON body to `path` with the same auth, deadline and retries as `call_api`, answer unread.

        The lean path for a request made at a high rate (a scheduler's bindings):
        the body is encoded once and handed to the connection pool, without the
        generated client's per-request parameter sanitizing and dispatch.
        """
        data = json.dumps(body).encode()
        headers = self._lean_headers("POST", path, body, "application/json")
        url = self.configuration.host + path
        if self._direct is not None:
            return self._retrying("POST", url, lambda: self._send_kept("POST", url, path, data, headers))
        timeout = urllib3.Timeout(total=self.request_timeout)
        pool = self.rest_client.pool_manager
        return self._retrying("POST", url, lambda: rest.RESTResponse(pool.request(
            "POST", url, body=data, headers=headers, timeout=timeout, preload_content=False)))

    def request_kept(self, method: str, path: str, query: list[tuple[str, str]] | None = None,
                     body=None, content_type: str = "application/json") -> rest.RESTResponse | None:
        """One request on this thread's keep-alive connection, answer read in full; None: not possible here.

        The lean path for a caller that reads the whole answer (KubeApi.request): the
        same auth, headers, body encoding, deadline and retries as `call_api`, without
        the pool's and the generated client's per-request work. None through a proxy or
        a TLS server name (`_direct_target`): the caller uses `call_api`.
        """
        if self._direct is None:
            return None
        data = None if body is None else json.dumps(self.sanitize_for_serialization(body)).encode()
        headers = self._lean_headers(method, path, body, content_type if body is not None else None)
        if query:  # encoded as the generated client encodes them (quote, "/" kept)
            path = f"{path}?{urllib.parse.urlencode(query, safe='/', quote_via=urllib.parse.quote)}"
        url = self.configuration.host + path
        return self._retrying(method, url, lambda: self._send_kept(method, url, path, data, headers))

    def _lean_headers(self, method: str, path: str, body, content_type: str | None) -> dict:
        """The headers `call_api` would send (default ones, cookie, auth) for the lean paths."""
        headers = {**self.default_headers, "Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if self.cookie:
            headers["Cookie"] = self.cookie
        self.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        return headers

    def _send_kept(self, method: str, url: str, path: str, data: bytes | None,
                   headers: dict) -> rest.RESTResponse:
        """One request on this thread's keep-alive connection (http.client: half urllib3's CPU per request).

        Errors are reported as the pool reports them, so `_retrying` decides alike:
        a refused connection is retried, a connection reset or closed under a read is
        retried (a GET), a timeout (the deadline, per socket operation as urllib3's read
        timeout) and a reset under a write never are.
        """
        scheme, host, port, prefix, context = self._direct
        connection = getattr(self._kept, "connection", None)
        if connection is not None and connection.sock is not None and wait_for_read(connection.sock, 0):
            connection.close()  # closed by the server while idle: http.client reconnects
        if connection is None:
            if scheme == "https":
                connection = http.client.HTTPSConnection(host, port, timeout=self.request_timeout,
                                                         context=context)
            else:
                connection = http.client.HTTPConnection(host, port, timeout=self.request_timeout)
            self._kept.connection = connection
        try:
            connection.request(method, prefix + path, body=data, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
        except ConnectionRefusedError as exc:
            connection.close()
            raise urllib3.exceptions.MaxRetryError(
                None, url, urllib3.exceptions.NewConnectionError(None, f"connection refused: {exc}")) from exc
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
            connection.close()  # half a request on it: never reused
            raise urllib3.exceptions.MaxRetryError(
                None, url, urllib3.exceptions.ProtocolError(f"connection lost: {exc!r}", exc)) from exc
        except BaseException:
            connection.close()
            raise
        return rest.RESTResponse(_Answer(answer.status, answer.reason, answer.headers, body))

    def _retrying(self, method: str, url: str, send) -> rest.RESTResponse:
        reading = method in ("GET", "HEAD")
        statuses = READ_RETRY_STATUSES if reading else RETRY_STATUSES
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = send()
            except urllib3.exceptions.MaxRetryError as exc:
                # Retried: a refused connection (nothing was sent), or a reset one for a read.
                # A timeout is the deadline itself and is never retried.
                refused = isinstance(exc.reason, urllib3.exceptions.NewConnectionError)
                reset = reading and isinstance(exc.reason, urllib3.exceptions.ProtocolError)
                if last or not (refused or reset):
                    raise
                log.debug("%s %s: %s; retrying", method, url, exc.reason)
                self.sleep(self.retry.delay(attempt))
                continue
            retry_after = response.getheaders().get("Retry-After")
            throttled = response.status == 429 and retry_after is not None
            if (response.status in statuses or throttled) and not last:
                response.read()
                log.debug("%s %s: HTTP %s; retrying", method, url, response.status)
                self.sleep(self.retry.delay(attempt, retry_after))
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class _Answer:
    """What RESTResponse reads of an answer: the keep-alive path's, read in full."""

    status: int
    reason: str
    headers: http.client.HTTPMessage  # case-insensitive get(), as the pool's headers
    data: bytes


def _direct_target(configuration: client.Configuration) -> tuple | None:
    """(scheme, host, port, path prefix, TLS context) for post_json's keep-alive connections.

    None: post_json uses the pool.

    Through a proxy, or with a TLS server name other than the host's, the pool's
    own handling applies.
    """
    parts = urllib.parse.urlsplit(configuration.host or "")
    if parts.scheme not in ("http", "https") or not parts.hostname or configuration.proxy \
            or getattr(configuration, "tls_server_name", None) or configuration.assert_hostname is not None:
        return None
    context = None
    if parts.scheme == "https":
        # The pool's TLS rules: the CA file (else the system's), the client certificate, verify_ssl.
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if not configuration.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return parts.scheme, parts.hostname, parts.port, parts.path.rstrip("/"), context


def configuration_for(environ: Mapping[str, str] | None = None,
                      **auth_options) -> tuple[client.Configuration, str]:
    """A kubernetes Configuration for the resolved auth, and the name of its source."""
    environ = os.environ if environ is None else environ
    auth = resolve_auth(environ, **auth_options)
    configuration = client.Configuration()
    source = _load_source(auth, configuration, environ)
    for option, (_, attribute, _) in AUTH_OPTIONS.items():
        value = auth.get(option)
        if not attribute or value is None:
            continue
        if option == "api_key":
            configuration.api_key = {"BearerToken": f"Bearer {value}"}  # the client's own key name
            configuration.api_key_prefix = {}
        else:
            setattr(configuration, attribute, value)
    if configuration.username and configuration.password and not auth.get("api_key"):
        configuration.api_key = {"BearerToken": configuration.get_basic_auth_token()}
    # The environment's proxy for this host, resolved once (the pool is built with it anyway): the
    # client's host setter re-reads os.environ whenever the host is assigned, and a kubeconfig token's
    # refresh hook assigns it before every request (a sixth of a small request's CPU).
    configuration.proxy = configuration.proxy
    # Our own retry loop decides; urllib3's would repeat a timed-out GET three more times.
    configuration.retries = urllib3.util.Retry(total=0, connect=0, read=0, redirect=3, status=0,
                                                raise_on_redirect=True, raise_on_status=False)
    return configuration, source


def api_client(request_timeout: float | None = None, retry: RetryPolicy | None = None,
               environ: Mapping[str, str] | None = None, connections: int | None = None,
               **auth_options) -> GpufleetApiClient:
    """THE way gpufleet gets an ApiClient (modules, health sink, placement, kernel agent).

    `auth_options` are those of AUTH_OPTIONS (kubeconfig, context, host, api_key,
    username, password, validate_certs, ca_cert, client_cert, client_key, proxy,
    no_proxy); None means "not given" (the environment may supply it).
    `connections`: the most connections kept open to the API server (the client's
    default is 5 per core); a caller with more concurrent requests (watches, a pool
    of workers) sizes it to them, else each request beyond it opens a new connection.
    """
    configuration, source = configuration_for(environ, **auth_options)
    if connections:
        configuration.connection_pool_maxsize = int(connections)
    return GpufleetApiClient(configuration, request_timeout or DEFAULT_REQUEST_TIMEOUT, retry, source)


def connect(request_timeout: float | None = None, **auth_options):
    """A `KubeApi` (the dict-based helpers) over a client from `api_client`."""
    from gpufleet.kube.api import KubeApi

    return KubeApi(api_client(request_timeout=request_timeout, **auth_options))


__all__ = ["AUTH_OPTIONS", "DEFAULT_REQUEST_TIMEOUT", "USER_AGENT", "ApiException", "GpufleetApiClient",
           "RetryPolicy", "api_client", "configuration_for", "connect", "resolve_auth"]
