"""A short, bounded schemathesis run against the agent's own OpenAPI document.

The agent runs as a real `gpufleet agent run` process; schemathesis must find
no 5xx, and the agent must still answer afterwards.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from agent_helpers import make_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def write_toml(config, path: Path) -> None:
    low, high = config.container.port_range
    path.write_text(f"""
[etcd]
enabled = false
[redis]
addr = "127.0.0.1:1"
[agent]
id = "fuzz"
rpc-listen-addr = "{config.agent.rpc_listen_addr}"
state-dir = "{config.agent.state_dir}"
kernel-ready-timeout = 10
[container]
port-range = "{low}-{high}"
scratch-root = "{config.container.scratch_root}"
kernel-uid = "agent"
[resource]
gpus = 2
reserved-cpu = 0
reserved-mem = 0
[rpc]
token-file = "{config.rpc.token_file}"
require-root-owner = false
max-request-bytes = 65536
[http]
addr = "{config.http.addr}"
[debug]
heartbeat-interval = 1
""")


def get(url: str, token: str | None = None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_schemathesis_finds_no_server_error_and_the_agent_survives(tmp_path):
    config = make_config(tmp_path, ports=8)
    path = tmp_path / "agent.toml"
    write_toml(config, path)
    token = config.rpc.token_file.read_text().strip()
    gpufleet = shutil.which("gpufleet", path=os.path.dirname(sys.executable))
    log = open(tmp_path / "agent.log", "wb")
    agent = subprocess.Popen([gpufleet, "agent", "run", "--config", str(path)], stdout=log, stderr=log)
    rpc = f"http://{config.agent.rpc_listen_addr}"
    health = f"http://{config.http.addr}/health"
    try:
        for _ in range(100):
            try:
                get(health)
                break
            except OSError:
                time.sleep(0.1)
        schema = tmp_path / "openapi.json"
        schema.write_text(json.dumps(get(f"{rpc}/openapi.json", token)))
        st = shutil.which("st", path=os.path.dirname(sys.executable))
        result = subprocess.run(
            [st, "run", str(schema), "--url", rpc, "-H", f"Authorization: Bearer {token}",
             "--checks", "not_a_server_error", "--phases", "examples,fuzzing", "--max-examples", "15",
             "--max-time", "20",
             "--request-timeout", "20", "--seed", "1", "--no-shrink", "--workers", "1"],
            # cwd: schemathesis keeps a .schemathesis/ cache in the working directory
            capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-4000:]
        assert "Fuzzing" in result.stdout and " passed" in result.stdout
        assert agent.poll() is None, "the agent died during the fuzzing run"
        assert get(health)["status"] == "ok"
        assert get(f"{rpc}/openapi.json", token)["info"]["title"]
    finally:
        agent.terminate()
        agent.wait(10)
        log.close()
        # fuzzed create_kernels may have left kernels: the agent leaves them running by design
        registry = config.agent.state_dir / "agent-kernels.json"
        if registry.exists():
            for kernel in json.loads(registry.read_text())["kernels"]:
                pid = kernel.get("backend_data", {}).get("pid")
                if pid:
                    try:
                        os.killpg(pid, 9)
                    except ProcessLookupError:
                        pass
