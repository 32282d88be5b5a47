"""RPC on :6001 — JSON over HTTP, token-authenticated — and the HTTP side on :6003.

Each method is `POST /rpc/<method>` with a JSON object of parameters; the
answer is `{"result": ...}` or `{"error": {"type", "message", "errors"?}}` with
a 4xx status. The parameter schemas below are the single source for both the
validation and the OpenAPI document (`GET /openapi.json`).
"""

from __future__ import annotations

import asyncio
import binascii
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gpufleet.agent.core import Agent, KernelNotFound, KernelStateError
from gpufleet.agent.resources import ResourceError

KERNEL_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
PATH = {"type": "string", "minLength": 1, "maxLength": 4096}


def _obj(properties: dict[str, Any] | None = None, required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties or {}, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


KERNEL_CONFIG = _obj({
    "cpu": {"type": "number", "exclusiveMinimum": 0, "maximum": 1024, "default": 1},
    "mem": {"type": "integer", "minimum": 1 << 20, "maximum": 1 << 50, "default": 512 << 20,
            "description": "bytes"},
    "gpus": {"type": "integer", "minimum": 0, "maximum": 64, "default": 0},
    "service_ports": {"type": "integer", "minimum": 0, "maximum": 16, "default": 0},
    "session_id": KERNEL_ID,
    "kernel_id": KERNEL_ID,
    "image": {"type": "string", "minLength": 1, "maxLength": 512},
    "environ": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 4096},
                "maxProperties": 128},
})

# method -> (parameter schema, summary)
METHODS: dict[str, tuple[dict[str, Any], str]] = {
    "ping": (_obj({"message": {"type": "string", "maxLength": 1024}}), "Echo a message back."),
    "health": (_obj(), "Agent status: etcd/Redis connectivity, kernels, heartbeat age."),
    "gather_hwinfo": (_obj(), "Hardware, slot capacity, GPUs and free devices."),
    "get_local_config": (_obj(), "The agent's configuration without secrets."),
    "create_kernels": (_obj({"kernels": {"type": "array", "items": KERNEL_CONFIG, "minItems": 1,
                                         "maxItems": 64}}, ("kernels",)),
                       "Create kernels; all-or-nothing per kernel (each result lists its own error)."),
    "destroy_kernel": (_obj({"kernel_id": KERNEL_ID, "reason": {"type": "string", "maxLength": 256}},
                            ("kernel_id",)), "Stop a kernel and free its resources."),
    "restart_kernel": (_obj({"kernel_id": KERNEL_ID}, ("kernel_id",)), "Recreate a kernel with the same id."),
    "execute": (_obj({"kernel_id": KERNEL_ID, "mode": {"type": "string", "enum": ["query", "batch"]},
                      "code": {"type": "string", "maxLength": 1 << 20},
                      "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
                      "run_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}},
                     ("kernel_id", "code")),
                "Run code (query: persistent Python namespace; batch: shell command)."),
    "interrupt_kernel": (_obj({"kernel_id": KERNEL_ID}, ("kernel_id",)), "Interrupt the running execution."),
    "get_logs": (_obj({"kernel_id": KERNEL_ID}, ("kernel_id",)), "The kernel's console log."),
    "list_files": (_obj({"kernel_id": KERNEL_ID, "path": PATH}, ("kernel_id",)),
                   "List a directory inside the kernel's scratch."),
    "upload_file": (_obj({"kernel_id": KERNEL_ID, "path": PATH,
                          "content_b64": {"type": "string", "maxLength": 12 << 20}},
                         ("kernel_id", "path", "content_b64")), "Write a file inside the kernel's scratch."),
    "download_file": (_obj({"kernel_id": KERNEL_ID, "path": PATH}, ("kernel_id", "path")),
                      "Read a file inside the kernel's scratch."),
    "sync_kernel_registry": (_obj(), "Reconcile the registry with what runs."),
    "assign_port": (_obj(), "Take a port from the container port pool."),
    "release_port": (_obj({"port": {"type": "integer", "minimum": 1, "maximum": 65535}}, ("port",)),
                     "Return a port taken with assign_port."),
}


# --- validation: the subset of JSON Schema the schemas above use --------------------------

class ValidationFailed(Exception):
    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['path']}: {e['message']}" for e in errors))
        self.errors = errors


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []

    def fail(message: str) -> list[dict[str, str]]:
        return [{"path": path, "message": message}]

    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return fail("expected an object")
        for key in schema.get("required", []):
            if key not in value:
                errors.append({"path": f"{path}.{key}", "message": "is required"})
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors += fail(f"more than {schema['maxProperties']} properties")
        for key, item in value.items():
            if key in properties:
                errors += validate(item, properties[key], f"{path}.{key}")
            elif extra is False:
                errors.append({"path": f"{path}.{key}", "message": "unknown property"})
            elif isinstance(extra, dict):
                errors += validate(item, extra, f"{path}.{key}")
        return errors
    if kind == "array":
        if not isinstance(value, list):
            return fail("expected an array")
        if len(value) < schema.get("minItems", 0):
            return fail(f"needs at least {schema['minItems']} items")
        if len(value) > schema.get("maxItems", 1 << 30):
            return fail(f"takes at most {schema['maxItems']} items")
        for index, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{index}]")
        return errors
    if kind == "string":
        if not isinstance(value, str):
            return fail("expected a string")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 62):
            return fail(f"length must be {schema.get('minLength', 0)}-{schema.get('maxLength', 'any')}")
        if "enum" in schema and value not in schema["enum"]:
            return fail(f"must be one of {schema['enum']}")
        if "pattern" in schema:
            if not re.search(schema["pattern"], value):
                return fail(f"does not match {schema['pattern']}")
        return errors
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return fail(f"expected {'an integer' if kind == 'integer' else 'a number'}")
        if kind == "integer" and not isinstance(value, int):
            return fail("expected an integer")
        if value != value or value in (float("inf"), float("-inf")):
            return fail("must be finite")
        if "minimum" in schema and value < schema["minimum"]:
            return fail(f"must be >= {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return fail(f"must be > {schema['exclusiveMinimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            return fail(f"must be <= {schema['maximum']}")
        return errors
    return errors


# --- OpenAPI -------------------------------------------------------------------------------

ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "type": {"type": "string"}, "message": {"type": "string"},
    "errors": {"type": "array", "items": {"type": "object"}}}, "required": ["type", "message"]}},
    "required": ["error"]}
ERROR_STATUSES = {"400": "Malformed request or invalid parameters", "401": "Missing or wrong token",
                  "403": "Path outside the kernel's scratch", "404": "Unknown kernel or file",
                  "409": "Insufficient resources or kernel not in a usable state",
                  "413": "Request body too large", "415": "Body is not application/json"}


def openapi_document(version: str) -> dict[str, Any]:
    paths = {}
    for name, (schema, summary) in METHODS.items():
        responses: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"result": {}}, "required": ["result"]}}}}}
        for status, description in ERROR_STATUSES.items():
            responses[status] = {"description": description,
                                 "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        paths[f"/rpc/{name}"] = {"post": {
            "operationId": name, "summary": summary, "security": [{"bearerAuth": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": responses}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "gpufleet kernel agent RPC", "version": version},
        "paths": paths,
        "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearerAuth": []}],
    }


# --- the server -----------------------------------------------------------------------------

def _error(status: int, kind: str, message: str, errors: list | None = None) -> web.Response:
    body: dict[str, Any] = {"type": kind, "message": message}
    if errors:
        body["errors"] = errors
    return web.json_response({"error": body}, status=status)


class RpcServer:
    def __init__(self, agent: Agent, token: str) -> None:
        self.agent = agent
        self._token = token.encode()
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "ping": self._ping,
            "health": lambda p: _value(agent.health()),
            "gather_hwinfo": lambda p: _value(agent.hwinfo()),
            "get_local_config": lambda p: _value(agent.config.as_public_dict()),
            "create_kernels": self._create_kernels,
            "destroy_kernel": lambda p: agent.destroy_kernel(p["kernel_id"],
                                                             p.get("reason", "user-requested")),
            "restart_kernel": self._restart_kernel,
            "execute": lambda p: agent.execute(p["kernel_id"], p.get("mode", "query"), p["code"],
                                               p.get("timeout"), p.get("run_id")),
            "interrupt_kernel": lambda p: agent.interrupt_kernel(p["kernel_id"]),
            "get_logs": lambda p: agent.get_logs(p["kernel_id"]),
            "list_files": lambda p: agent.list_files(p["kernel_id"], p.get("path", ".")),
            "upload_file": lambda p: agent.upload_file(p["kernel_id"], p["path"], p["content_b64"]),
            "download_file": lambda p: agent.download_file(p["kernel_id"], p["path"]),
            "sync_kernel_registry": lambda p: agent.reconcile(),
            "assign_port": lambda p: _value({"port": agent.assign_port()}),
            "release_port": lambda p: _value({"port": p["port"], "released": agent.release_port(p["port"])}),
        }
        assert set(self.handlers) == set(METHODS)

    async def _ping(self, params: dict[str, Any]) -> Any:
        return {"message": params.get("message", "pong"), "agent_id": self.agent.id, "time": time.time()}

    async def _create_kernels(self, params: dict[str, Any]) -> Any:
        results = []
        for spec in params["kernels"]:
            try:
                record = await self.agent.create_kernel(**spec)
                results.append({"status": "running", **record.public()})
            except (ResourceError, KernelStateError) as exc:
                results.append({"status": "error", "kernel_id": spec.get("kernel_id"), "error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - one failed kernel must not hide the others' results
                results.append({"status": "error", "kernel_id": spec.get("kernel_id"),
                                "error": f"{type(exc).__name__}: {exc}"})
        return {"kernels": results}

    async def _restart_kernel(self, params: dict[str, Any]) -> Any:
        return (await self.agent.restart_kernel(params["kernel_id"])).public()

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() != "bearer" or not supplied:
            return False
        return hmac.compare_digest(supplied.strip().encode(), self._token)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if not self.authorized(request):
            # Labelled "-": an unauthenticated caller must not create label values.
            self.agent.metrics.rpc_failures.labels("-", "401").inc()
            return _unauthorized()
        if method not in METHODS:
            return _error(404, "unknown_method", f"no RPC method {method!r}")
        metrics = self.agent.metrics
        metrics.rpc_requests.labels(method).inc()
        started = time.monotonic()
        response = await self._dispatch(request, method)
        metrics.rpc_duration.labels(method).observe(time.monotonic() - started)
        if response.status >= 400:
            metrics.rpc_failures.labels(method, str(response.status)).inc()
        return response

    async def _dispatch(self, request: web.Request, method: str) -> web.Response:
        limit = self.agent.config.rpc.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            return _error(413, "too_large", f"body exceeds {limit} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "too_large", f"body exceeds {limit} bytes")
        if raw.strip():
            if request.content_type not in ("application/json", "application/octet-stream", ""):
                return _error(415, "unsupported_media_type", "send application/json")
            try:
                params = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                return _error(400, "malformed", f"body is not JSON: {exc}")
        else:
            params = {}
        schema, _ = METHODS[method]
        errors = validate(params, schema)
        if errors:
            return _error(400, "validation_error", "invalid parameters", errors)
        try:
            result = await self.handlers[method](params)
        except KernelNotFound as exc:
            return _error(404, "kernel_not_found", str(exc))
        except FileNotFoundError as exc:
            return _error(404, "file_not_found", str(exc))
        except PermissionError as exc:
            return _error(403, "forbidden", str(exc))
        except (ResourceError, KernelStateError) as exc:
            return _error(409, "conflict", str(exc))
        except (ValueError, binascii.Error) as exc:
            return _error(400, "invalid_value", str(exc))
        return web.json_response({"result": result})

    async def openapi(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _unauthorized()
        from gpufleet import __version__

        return web.json_response(openapi_document(__version__))

    def app(self) -> web.Application:
        # aiohttp's own limit is a second line of defence; it answers 413 itself.
        app = web.Application(client_max_size=self.agent.config.rpc.max_request_bytes)
        app.router.add_post("/rpc/{method}", self.handle)
        app.router.add_get("/openapi.json", self.openapi)
        return app


def _unauthorized() -> web.Response:
    return web.json_response({"error": {"type": "unauthorized", "message": "missing or wrong token"}},
                             status=401, headers={"WWW-Authenticate": "Bearer"})


async def _value(value: Any) -> Any:
    return value


def http_app(agent: Agent) -> web.Application:
    """:6003 — /health and /metrics, unauthenticated and read-only."""

    async def health(request: web.Request) -> web.Response:
        info = agent.health()
        return web.json_response(info, status=200)

    async def metrics(request: web.Request) -> web.Response:
        agent.metrics.observe_agent(agent)
        return web.Response(body=agent.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(agent: Agent, token: str) -> list[web.AppRunner]:
    """Start both listeners; returns their runners (call .cleanup() to stop)."""
    runners = []
    for app, addr in ((RpcServer(agent, token).app(), agent.config.agent.rpc_listen_addr),
                      (http_app(agent), agent.config.http.addr)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, addr.host, addr.port).start()
        runners.append(runner)
    return runners


async def run_agent(agent: Agent, token: str, stop: asyncio.Event) -> None:
    await agent.start()
    runners = await serve(agent, token)
    try:
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await agent.stop()
