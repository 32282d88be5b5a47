"""The RPC server over real HTTP: auth, limits, validation, methods, and the CLI client."""

import asyncio
import base64
import json

import aiohttp
import pytest
from agent_helpers import capacity, make_config
from click.testing import CliRunner
from gpufleet.agent.cli import agent as agent_cli
from gpufleet.agent.config import read_token
from gpufleet.agent.core import Agent
from gpufleet.agent.rpc import serve

pytestmark = pytest.mark.integration


@pytest.fixture
async def served(tmp_path):
    config = make_config(tmp_path)
    instance = Agent(config, capacity=capacity())
    await instance.start()
    runners = await serve(instance, read_token(config.rpc))
    rpc = f"http://127.0.0.1:{config.agent.rpc_listen_addr.port}"
    http = f"http://127.0.0.1:{config.http.addr.port}"
    async with aiohttp.ClientSession() as session:
        yield instance, session, rpc, http, read_token(config.rpc)
    for runner in runners:
        await runner.cleanup()
    await instance.stop(destroy_kernels=True)


async def call(session, rpc, token, method, params=None, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(f"{rpc}/rpc/{method}", json=params if params is not None else {},
                            headers=headers, **kwargs) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-000000000000", "Basic abc", "Bearer "])
async def test_missing_or_wrong_token_is_401(served, header):
    agent, session, rpc, _, _ = served
    headers = {"Authorization": header} if header else {}
    for method in ("ping", "create_kernels", "no_such_method"):
        async with session.post(f"{rpc}/rpc/{method}", json={"kernels": [{}]}, headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
    async with session.get(f"{rpc}/openapi.json", headers=headers) as resp:
        assert resp.status == 401
    assert len(agent.registry) == 0


async def test_malformed_oversize_and_invalid_bodies_are_4xx(served):
    _, session, rpc, _, token = served
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with session.post(f"{rpc}/rpc/ping", data=b"{not json", headers=auth) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["type"] == "malformed"
    async with session.post(f"{rpc}/rpc/ping", data=b"x" * 70000, headers=auth) as resp:
        assert resp.status == 413
    status, body = await call(session, rpc, token, "execute", {"kernel_id": "k1", "mode": "repl"})
    assert status == 400 and body["error"]["type"] == "validation_error"
    assert {e["path"] for e in body["error"]["errors"]} == {"$.code", "$.mode"}
    status, body = await call(session, rpc, token, "ping", [1, 2])
    assert status == 400
    xml = {**auth, "Content-Type": "text/xml"}
    async with session.post(f"{rpc}/rpc/ping", data=b"{}", headers=xml) as resp:
        assert resp.status == 415
    status, body = await call(session, rpc, token, "no_such_method")
    assert status == 404


async def test_methods_over_http(served):
    agent, session, rpc, http, token = served
    assert (await call(session, rpc, token, "ping", {"message": "hi"}))[1]["result"]["message"] == "hi"
    status, body = await call(session, rpc, token, "gather_hwinfo")
    assert body["result"]["capacity"]["cuda.device"] == 4
    assert body["result"]["free_gpu_indices"] == [0, 1, 2, 3]
    status, body = await call(session, rpc, token, "get_local_config")
    assert "token" not in json.dumps(body["result"]["http"])

    status, body = await call(session, rpc, token, "create_kernels",
                              {"kernels": [{"gpus": 3}, {"gpus": 3}]})
    first, second = body["result"]["kernels"]
    assert first["status"] == "running" and first["gpu_indices"] == [0, 1, 2]
    assert second["status"] == "error" and "over-commit refused" in second["error"]
    kid = first["kernel_id"]

    status, body = await call(session, rpc, token, "execute", {"kernel_id": kid, "code": "v = 5"})
    assert status == 200 and body["result"]["exit_code"] == 0 and body["result"]["run_id"]
    status, body = await call(session, rpc, token, "execute", {"kernel_id": kid, "code": "print(v * 2)"})
    assert body["result"]["console"][0] == ["stdout", "10\n"]

    content = base64.b64encode(b"hello").decode()
    status, _ = await call(session, rpc, token, "upload_file",
                           {"kernel_id": kid, "path": "data/in.txt", "content_b64": content})
    assert status == 200
    status, body = await call(session, rpc, token, "list_files", {"kernel_id": kid, "path": "data"})
    assert [f["name"] for f in body["result"]["files"]] == ["in.txt"]
    status, body = await call(session, rpc, token, "download_file", {"kernel_id": kid, "path": "data/in.txt"})
    assert base64.b64decode(body["result"]["content_b64"]) == b"hello"
    for bad in ("../config/runner.token", "/etc/passwd", "data/../../config/runner.token"):
        status, body = await call(session, rpc, token, "download_file", {"kernel_id": kid, "path": bad})
        assert status == 403, bad
    status, _ = await call(session, rpc, token, "download_file", {"kernel_id": kid, "path": "missing"})
    assert status == 404
    status, body = await call(session, rpc, token, "upload_file",
                              {"kernel_id": kid, "path": "x", "content_b64": "***"})
    assert status == 400

    status, body = await call(session, rpc, token, "get_logs", {"kernel_id": kid})
    assert "runner ready" in body["result"]["logs"]

    status, body = await call(session, rpc, token, "assign_port")
    port = body["result"]["port"]
    assert agent.ports.owners()[port] == "agent:assigned"
    status, body = await call(session, rpc, token, "release_port", {"port": port})
    assert body["result"]["released"] is True
    status, body = await call(session, rpc, token, "release_port", {"port": first["ports"][0]})
    assert body["result"]["released"] is False  # a kernel's port is not released by release_port

    status, body = await call(session, rpc, token, "sync_kernel_registry")
    assert body["result"] == {"adopted": [kid], "terminated": []}
    status, body = await call(session, rpc, token, "destroy_kernel", {"kernel_id": kid})
    assert status == 200 and body["result"]["reason"] == "user-requested"
    status, body = await call(session, rpc, token, "destroy_kernel", {"kernel_id": kid})
    assert status == 404

    async with session.get(f"{http}/health") as resp:
        assert resp.status == 200 and (await resp.json())["id"] == agent.id
    async with session.get(f"{http}/metrics") as resp:
        text = await resp.text()
    assert 'backendai_rpc_requests_total{method="execute"} 2.0' in text
    assert 'backendai_rpc_failure_requests_total{method="download_file",status="403"} 3.0' in text
    assert "backendai_rpc_request_duration_seconds_bucket" in text
    assert "gpufleet_agent_kernels 0.0" in text
    assert 'gpufleet_agent_slot_capacity{slot="cuda.device"} 4.0' in text
    assert "gpufleet_agent_heartbeat_age_seconds" in text


async def test_cli_client_lifecycle_and_commands(served, tmp_path):
    agent, _, rpc, _, token = served
    config_path = tmp_path / "cli.toml"
    config_path.write_text(f'[agent]\nrpc-listen-addr = "{rpc.removeprefix("http://")}"\n'
                           f'[rpc]\ntoken-file = "{agent.config.rpc.token_file}"\n')
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(agent_cli, ["call", "--config", str(config_path), *args])

    result = await asyncio.to_thread(invoke, "--json", "lifecycle", "--gpus", "1")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["state_kept"] and report["gpu_indices"] == [0]
    assert set(report["timings"]) == {"create", "execute", "execute_state", "destroy"}

    result = await asyncio.to_thread(invoke, "create", "--gpus", "2", "--mem", "1g")
    assert result.exit_code == 0, result.output
    kid = result.output.strip()
    assert agent.registry.get(kid).allocation["mem"] == 1 << 30
    code = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
    result = await asyncio.to_thread(invoke, "exec", kid, code)
    assert result.output == "0,1\n"
    result = await asyncio.to_thread(invoke, "exec", "--mode", "batch", kid, "exit 5")
    assert result.exit_code == 5
    result = await asyncio.to_thread(invoke, "health")
    assert "kernels: 1" in result.output
    result = await asyncio.to_thread(invoke, "destroy", kid)
    assert result.exit_code == 0 and f"destroyed {kid}" in result.output
    result = await asyncio.to_thread(
        lambda: runner.invoke(agent_cli, ["call", "--address", rpc, "--token", "wrong" * 5, "health"]))
    assert result.exit_code == 1 and "HTTP 401" in result.output
