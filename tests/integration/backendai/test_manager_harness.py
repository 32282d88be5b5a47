"""The harness itself: a real 23.09 manager answers signed API requests before any agent exists."""

import json
import subprocess

from fixtures.backendai import PEER_DIR, backendai_python, run_peer


def test_manager_answers_a_signed_request_with_no_agents(backendai_manager):
    listed = run_peer("client_ops.py", "agents", "--status", "ALIVE", env=backendai_manager.client_env())
    assert listed == {"agents": [], "total": 0}


def test_the_manager_refuses_a_wrong_secret_key(backendai_manager):
    env = {**backendai_manager.client_env(), "BACKEND_SECRET_KEY": "x" * 40}
    proc = subprocess.run([str(backendai_python()), str(PEER_DIR / "client_ops.py"), "agents"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stdout
    assert "BackendAPIError(401" in json.loads(proc.stdout)["error"]


def test_everything_the_manager_is_told_about_is_on_loopback(backendai_manager):
    addresses = [line for line in backendai_manager.config_path.read_text().splitlines()
                 if line.split("=")[0].strip() in ("addr", "service-addr")]
    assert len(addresses) == 3
    assert all('"127.0.0.1:' in line for line in addresses), addresses
    assert backendai_manager.etcd_get("config/redis/addr") == f"127.0.0.1:{backendai_manager.redis.port}"
    assert backendai_manager.etcd_get("volumes/proxies/local/manager_api").startswith("http://127.0.0.1:")
