"""Be a Backend.AI 23.09 manager towards an agent (run with .venv-backendai's python).

Everything on the wire is Backend.AI's own code: the manager's `PeerInvoker` (callosum over
ZeroMQ, `{"args", "kwargs"}` request bodies), `ai.backend.common.msgpack` (its ext types and
enum pickles), `ManagerAuthHandler` for CURVE, and `ai.backend.common.events` to decode the
Redis `events` stream. The argument shapes are those of ai/backend/manager/registry.py
(23.09); functions the manager does not call itself use ai/backend/agent/server.py's
signatures.

Prints one JSON object on stdout (bytes as {"__bytes__": base64}, enums as
{"__enum__": "Class.MEMBER"}). Sub-commands:

  call NAME [--args JSON] [--timeout S]      one call; "refused" when nothing answers in time
  scenario ...                               every RPC function in a manager's order
  bench ... [--kernels N] [--executes M]     timings straight to the agent (benchmarks)
  events --redis H:P [--password P] [--source AGENT_ID] [--since ID]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import enum
import json
import secrets
import sys
import time
import uuid
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import zmq.auth
from ai.backend.client.config import API_VERSION
from ai.backend.common import events as bai_events
from ai.backend.common import msgpack
from ai.backend.common.auth import ManagerAuthHandler
from ai.backend.common.defs import REDIS_STREAM_DB
from ai.backend.common.events import KernelLifecycleEventReason
from ai.backend.common.types import BinarySize, ClusterMode, ResourceSlot
from ai.backend.manager.agent_cache import PeerInvoker
from callosum.exceptions import AuthenticationError
from callosum.lower.zeromq import ZeroMQAddress, ZeroMQRPCTransport
from callosum.rpc import RPCUserError


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    if isinstance(value, enum.Enum):
        return {"__enum__": f"{type(value).__name__}.{value.name}", "value": to_json(value.value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "__attrs_attrs__"):
        return {a.name: to_json(getattr(value, a.name)) for a in value.__attrs_attrs__}
    return repr(value)


def from_json(value: Any) -> Any:
    """Arguments from the command line: {"__enum__": "KernelLifecycleEventReason.X"} etc."""
    if isinstance(value, dict):
        if "__bytes__" in value:
            return base64.b64decode(value["__bytes__"])
        if "__enum__" in value:
            cls_name, member = value["__enum__"].split(".")
            allowed = {"KernelLifecycleEventReason": KernelLifecycleEventReason, "ClusterMode": ClusterMode}
            cls = allowed[cls_name]
            return cls[member]
        if "__binary_size__" in value:
            return BinarySize.from_str(value["__binary_size__"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


class Manager:
    """One connection as the 23.09 manager opens it (agent_cache.AgentRPCCache.rpc_context)."""

    def __init__(self, addr: str, agent_public_key: Path | None, manager_keypair: Path | None) -> None:
        auth = None
        if agent_public_key is not None:
            agent_public, _ = zmq.auth.load_certificate(agent_public_key)
            manager_public, manager_secret = zmq.auth.load_certificate(manager_keypair)
            auth = ManagerAuthHandler("local", agent_public, manager_public, manager_secret)
        self.peer = PeerInvoker(
            connect=ZeroMQAddress(addr),
            transport=ZeroMQRPCTransport,
            authenticator=auth,
            transport_opts={"zsock_opts": {zmq.TCP_KEEPALIVE: 1, zmq.LINGER: 0}},
            serializer=msgpack.packb,
            deserializer=msgpack.unpackb,
        )
        self.log: list[dict] = []

    async def __aenter__(self) -> Manager:
        await self.peer.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.peer.__aexit__(*exc)

    async def call(self, name: str, *args: Any, timeout: float = 60, **kwargs: Any) -> dict:
        """{"ok": True, "result": ...} or {"ok": False, "error": ...}; never raises."""
        started = time.monotonic()
        entry: dict[str, Any] = {"name": name}
        try:
            async with asyncio.timeout(timeout):
                result = await getattr(self.peer.call, name)(*args, **kwargs)
            entry.update(ok=True, result=result)
        except RPCUserError as exc:
            entry.update(ok=False, error={"name": exc.name, "repr": exc.repr})
        except TimeoutError:
            entry.update(ok=False, refused=True,
                         error={"name": "timeout", "repr": f"no answer in {timeout}s"})
        except Exception as exc:  # a decoding or transport failure is a result too
            entry.update(ok=False, error={"name": type(exc).__name__, "repr": repr(exc)})
        entry["seconds"] = time.monotonic() - started
        self.log.append(entry)
        return entry


# -- the Redis `events` stream -------------------------------------------------------------

def event_classes() -> dict[str, type]:
    classes = {}
    for obj in vars(bai_events).values():
        if isinstance(obj, type) and issubclass(obj, bai_events.AbstractEvent) and obj.name != "undefined":
            classes[obj.name] = obj
    return classes


def read_events(redis_addr: str, password: str | None, source: str | None, since: str = "-") -> list[dict]:
    import redis

    host, port = redis_addr.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), password=password or None, db=REDIS_STREAM_DB,
                         socket_timeout=10, socket_connect_timeout=5)
    classes = event_classes()
    decoded = []
    for entry_id, fields in client.xrange("events", min=since, max="+"):
        name = fields[b"name"].decode()
        entry: dict[str, Any] = {"id": entry_id.decode(), "name": name, "source": fields[b"source"].decode()}
        if source is not None and entry["source"] != source:
            continue
        cls = classes.get(name)
        if cls is None:
            entry["error"] = f"no ai.backend.common.events class is named {name!r}"
        else:
            try:
                event = cls.deserialize(msgpack.unpackb(fields[b"args"]))
                entry["class"] = cls.__name__
                entry["event"] = to_json(event)
                if name == "agent_heartbeat":
                    # as the manager's handle_heartbeat reads them
                    images = msgpack.unpackb(zlib.decompress(event.agent_info["images"]))
                    entry["images"] = to_json(images)
            except Exception as exc:
                entry["error"] = f"{cls.__name__}.deserialize failed: {exc!r}"
        decoded.append(entry)
    client.close()
    return decoded


def last_event_id(args) -> str:
    """The stream position now, so a later wait only sees events after it."""
    import redis

    host, port = args.redis.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), password=args.redis_password or None, db=REDIS_STREAM_DB,
                         socket_timeout=10, socket_connect_timeout=5)
    last = client.xrevrange("events", count=1)
    client.close()
    return "(" + last[0][0].decode() if last else "-"


async def wait_event(args, name: str, kernel_id: str, timeout: float, since: str = "-",
                     poll: float = 0.2) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in read_events(args.redis, args.redis_password, args.agent_id, since):
            if entry["name"] == name and entry.get("event", {}).get("kernel_id") == kernel_id:
                return entry
        await asyncio.sleep(poll)
    return None


# -- the scenario --------------------------------------------------------------------------

def kernel_config(args, kernel_id: str, session_id: str) -> dict:
    """One element of create_kernels' third argument, as the 23.09 manager builds it."""
    labels = json.loads(args.image_labels)
    return {
        "image": {
            "registry": {"name": args.registry, "url": args.registry_url},
            "digest": "sha256:" + "0" * 64,
            "repo_digest": None,
            "canonical": args.image,
            "architecture": args.architecture,
            "labels": labels,
            "is_local": False,
        },
        "session_type": "interactive",
        "cluster_role": "main",
        "cluster_idx": 1,
        "local_rank": 0,
        "cluster_hostname": "main1",
        "idle_timeout": 0,
        "mounts": [],
        "environ": {
            "BACKENDAI_SESSION_ID": session_id,
            "BACKENDAI_SESSION_NAME": "conformance",
            "BACKENDAI_CLUSTER_SIZE": "1",
            "BACKENDAI_CLUSTER_REPLICAS": "main:1",
            "BACKENDAI_CLUSTER_HOSTS": "main1",
            "BACKENDAI_ACCESS_KEY": "AKIAGPUFLEETTEST0000",
            "BACKENDAI_PREOPEN_PORTS": "",
            "BACKENDAI_KERNEL_ID": kernel_id,
            "BACKENDAI_KERNEL_IMAGE": args.image,
            "BACKENDAI_CLUSTER_ROLE": "main",
            "BACKENDAI_CLUSTER_IDX": "1",
            "BACKENDAI_CLUSTER_LOCAL_RANK": "0",
            "BACKENDAI_CLUSTER_HOST": "main1",
            "BACKENDAI_SERVICE_PORTS": labels.get("ai.backend.service-ports", ""),
        },
        "resource_slots": ResourceSlot({"cpu": Decimal(1), "mem": Decimal(256 << 20)}).to_json(),
        # The manager puts a BinarySize here (msgpack ext 16).
        "resource_opts": {"shmem": BinarySize.from_str("64m")},
        "bootstrap_script": "",
        "startup_command": None,
        "internal_data": None,
        "auto_pull": "digest",
        "preopen_ports": [],
        "allocated_host_ports": [],
        "agent_addr": args.addr,
        "scaling_group": args.scaling_group,
    }


def cluster_info() -> dict:
    # mode travels as a pickled enum (msgpack ext 6).
    return {"mode": ClusterMode.SINGLE_NODE, "size": 1, "replicas": {"main": 1}, "network_name": None,
            "ssh_keypair": None, "cluster_ssh_port_mapping": None}


async def run_code(m: Manager, session_id: str, kernel_id: str, mode: str, code: str, opts: dict) -> dict:
    """execute until `finished`, as the manager's API loop does (flush_timeout 2.0)."""
    run_id = secrets.token_hex(8)
    api = API_VERSION[0]
    calls = [await m.call("execute", session_id, kernel_id, api, run_id, mode, code, opts, 2.0)]
    while (calls[-1]["ok"] and calls[-1]["result"].get("status") not in ("finished", None)
           and len(calls) < 200):
        calls.append(await m.call("execute", session_id, kernel_id, api, run_id, "continue", "", {}, 2.0))
    console = [item for c in calls if c["ok"] for item in (c["result"].get("console") or [])]
    return {"calls": calls, "console": console, "last": calls[-1]}


async def scenario(args) -> dict:
    out: dict[str, Any] = {}
    session_id, kernel_id = str(uuid.uuid4()), str(uuid.uuid4())
    out["session_id"], out["kernel_id"] = session_id, kernel_id
    async with Manager(args.addr, args.agent_public_key, args.manager_keypair) as m:
        out["ping"] = await m.call("ping", "are you there")
        out["gather_hwinfo"] = await m.call("gather_hwinfo")
        out["get_local_config"] = await m.call("get_local_config")
        out["update_scaling_group"] = await m.call("update_scaling_group", args.scaling_group)
        network = f"bai-singlenode-{session_id}"
        out["create_local_network"] = await m.call("create_local_network", network)
        out["assign_port"] = await m.call("assign_port")
        if out["assign_port"]["ok"]:
            out["release_port"] = await m.call("release_port", out["assign_port"]["result"])
        out["create_kernels"] = await m.call(
            "create_kernels", session_id, [kernel_id], [kernel_config(args, kernel_id, session_id)],
            cluster_info(), timeout=args.timeout)
        out["kernel_started_event"] = await wait_event(args, "kernel_started", kernel_id, args.timeout)
        out["ping_kernel"] = await m.call("ping_kernel", kernel_id)
        out["sync_kernel_registry"] = await m.call("sync_kernel_registry", [(kernel_id, session_id)])
        out["execute_query"] = await run_code(m, session_id, kernel_id, "query", "print(6*7)", {})
        out["execute_batch"] = await run_code(
            m, session_id, kernel_id, "batch", "",
            {"clean": None, "build": None, "buildLog": False, "exec": args.batch_command})
        out["get_completions"] = await m.call("get_completions", kernel_id, "pri",
                                              {"row": 0, "col": 3, "line": "pri", "post": ""})
        out["upload_file"] = await m.call("upload_file", kernel_id, "hello.txt", b"gpufleet says hi\n")
        out["list_files"] = await m.call("list_files", kernel_id, ".")
        out["download_file"] = await m.call("download_file", kernel_id, "hello.txt")
        out["download_single"] = await m.call("download_single", kernel_id, "hello.txt")
        out["get_logs"] = await m.call("get_logs", kernel_id)
        out["start_service"] = await m.call("start_service", kernel_id, "jupyter",
                                            {"port": 8090, "protocol": "http", "arguments": {}, "envs": {}})
        out["shutdown_service"] = await m.call("shutdown_service", kernel_id, "jupyter")
        out["get_commit_status"] = await m.call("get_commit_status", kernel_id, "admin_gpufleet.test")
        out["commit"] = await m.call("commit", kernel_id, "admin_gpufleet.test", "conformance.tar.gz")
        out["interrupt_kernel"] = await m.call("interrupt_kernel", kernel_id)
        out["restart_kernel"] = await m.call("restart_kernel", session_id, kernel_id, {},
                                             timeout=args.timeout)
        out["execute_after_restart"] = await run_code(m, session_id, kernel_id, "query", "print(6*7)", {})
        since = last_event_id(args)  # restart_kernel terminated this kernel once already
        out["destroy_kernel"] = await m.call("destroy_kernel", kernel_id, session_id,
                                             KernelLifecycleEventReason.USER_REQUESTED, timeout=args.timeout)
        out["kernel_terminated_event"] = await wait_event(args, "kernel_terminated", kernel_id, args.timeout,
                                                          since)
        out["destroy_local_network"] = await m.call("destroy_local_network", network)
        # reset_agent destroys every kernel: start a second one for it to destroy.
        second = str(uuid.uuid4())
        out["second_kernel_id"] = second
        out["create_second_kernel"] = await m.call(
            "create_kernels", session_id, [second], [kernel_config(args, second, session_id)], cluster_info(),
            timeout=args.timeout)
        out["second_kernel_started_event"] = await wait_event(args, "kernel_started", second, args.timeout)
        out["reset_agent"] = await m.call("reset_agent", timeout=args.timeout)
        out["second_kernel_terminated_event"] = await wait_event(args, "kernel_terminated", second,
                                                                 args.timeout)
        out["health"] = await m.call("health")
        out["unknown_function"] = await m.call("no_such_function", 1, 2)
        out["ping_after_unknown"] = await m.call("ping", "still there")
        out["shutdown_agent"] = await m.call("shutdown_agent", False)
        out["called"] = sorted({entry["name"] for entry in m.log})
    out["events"] = read_events(args.redis, args.redis_password, args.agent_id)
    return out


async def bench(args) -> dict:
    """Timings straight to the agent as the 23.09 manager talks to it (no manager in between):
    create_kernels until its kernel_started event, execute round trips, destroy_kernel."""
    create_s, execute_s, destroy_s = [], [], []
    async with Manager(args.addr, args.agent_public_key, args.manager_keypair) as m:
        for _ in range(args.kernels):
            session_id, kernel_id = str(uuid.uuid4()), str(uuid.uuid4())
            since = last_event_id(args)
            started = time.monotonic()
            created = await m.call("create_kernels", session_id, [kernel_id],
                                   [kernel_config(args, kernel_id, session_id)], cluster_info(),
                                   timeout=args.timeout)
            event = await wait_event(args, "kernel_started", kernel_id, args.timeout, since, poll=0.02)
            if not created["ok"] or event is None:
                raise RuntimeError(f"kernel {kernel_id} did not start: {created}")
            create_s.append(time.monotonic() - started)
            for _ in range(args.executes):
                started = time.monotonic()
                if args.connect_per_call:  # as the manager does: a new connection (and handshake) per call
                    async with Manager(args.addr, args.agent_public_key, args.manager_keypair) as fresh:
                        out = await run_code(fresh, session_id, kernel_id, "query", "print(6*7)", {})
                else:
                    out = await run_code(m, session_id, kernel_id, "query", "print(6*7)", {})
                stdout = "".join(data for kind, data in out["console"] if kind == "stdout")
                if stdout.strip() != "42":
                    raise RuntimeError(f"execute returned {out['last']}")
                execute_s.append(time.monotonic() - started)
            started = time.monotonic()
            await m.call("destroy_kernel", kernel_id, session_id, KernelLifecycleEventReason.USER_REQUESTED,
                         timeout=args.timeout)
            destroy_s.append(time.monotonic() - started)
    return {"create_to_started_s": create_s, "execute_roundtrip_s": execute_s, "destroy_call_s": destroy_s}


async def single_call(args) -> dict:
    try:
        async with Manager(args.addr, args.agent_public_key, args.manager_keypair) as m:
            return await m.call(args.name, *from_json(json.loads(args.args)), timeout=args.timeout)
    except AuthenticationError:
        # callosum's connect handshake (PING/PONG) got no answer: CURVE refused us, or nobody listens.
        return {"name": args.name, "ok": False, "refused": True,
                "error": {"name": "AuthenticationError", "repr": "the connect handshake was not answered"}}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)

    def connection(p):
        p.add_argument("--addr", required=True, help="the agent's tcp://host:port")
        p.add_argument("--agent-public-key", type=Path, help="CURVE: the agent's public key file")
        p.add_argument("--manager-keypair", type=Path, help="CURVE: the manager's .key_secret file")

    p = sub.add_parser("call")
    connection(p)
    p.add_argument("name")
    p.add_argument("--args", default="[]")
    p.add_argument("--timeout", type=float, default=30)
    p = sub.add_parser("scenario")
    connection(p)
    for option in ("--redis", "--agent-id", "--image", "--architecture", "--registry", "--registry-url",
                   "--scaling-group"):
        p.add_argument(option, required=True)
    p.add_argument("--redis-password")
    p.add_argument("--image-labels", default="{}")
    p.add_argument("--batch-command", default="exit 3")
    p.add_argument("--timeout", type=float, default=300)
    p = sub.add_parser("bench")
    connection(p)
    for option in ("--redis", "--agent-id", "--image", "--architecture", "--registry", "--registry-url",
                   "--scaling-group"):
        p.add_argument(option, required=True)
    p.add_argument("--redis-password")
    p.add_argument("--image-labels", default="{}")
    p.add_argument("--kernels", type=int, default=10)
    p.add_argument("--connect-per-call", action="store_true")
    p.add_argument("--executes", type=int, default=20)
    p.add_argument("--timeout", type=float, default=300)
    p = sub.add_parser("events")
    p.add_argument("--redis", required=True)
    p.add_argument("--redis-password")
    p.add_argument("--source")
    p.add_argument("--since", default="-")
    args = parser.parse_args()
    if args.command == "events":
        result: Any = {"events": read_events(args.redis, args.redis_password, args.source, args.since)}
    elif args.command == "call":
        result = asyncio.run(single_call(args))
    elif args.command == "bench":
        result = asyncio.run(bench(args))
    else:
        result = asyncio.run(scenario(args))
    print(json.dumps(to_json(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
