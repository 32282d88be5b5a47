"""The redis role's ACL users, rendered by ansible-playbook and loaded by a real redis-server 7.

Each service user may run what its service needs and is refused the rest; the
rendered file holds password hashes, never the ACL users' passwords.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from fixtures.infra_services import free_port

pytestmark = pytest.mark.ansible

ROLE = Path(__file__).resolve().parents[3] / "roles" / "redis"


@pytest.fixture
def acl_redis(ansible_playbook, tmp_path):
    port = free_port()
    passwords = {"default": secrets.token_hex(12), "gpufleet-health": secrets.token_hex(12),
                 "gpufleet-agent": secrets.token_hex(12)}
    tasks = [
        {"name": "Defaults", "ansible.builtin.include_vars": {"file": str(ROLE / "defaults" / "main.yml")}},
        {"name": "Validate", "ansible.builtin.include_tasks": {"file": str(ROLE / "tasks" / "validate.yml")}},
        {"name": "Config", "ansible.builtin.template": {
            "src": str(ROLE / "templates" / "gpufleet.conf.j2"), "dest": str(tmp_path / "redis.conf"),
            "mode": "0600"}},
    ]
    result = ansible_playbook(tasks, extra_vars={
        "redis_port": port, "redis_bind": ["127.0.0.1"], "redis_save": [],
        "redis_password": passwords["default"], "redis_health_password": passwords["gpufleet-health"],
        "redis_agent_password": passwords["gpufleet-agent"], "ansible_virtualization_type": "none"})
    assert result.returncode == 0, result.stdout[-3000:]
    conf = (tmp_path / "redis.conf").read_text()
    for user in ("gpufleet-health", "gpufleet-agent"):
        assert passwords[user] not in conf
        assert passwords[user] not in result.stdout + result.stderr
    server = subprocess.Popen([shutil.which("redis-server"), str(tmp_path / "redis.conf"),
                               "--dir", str(tmp_path), "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=port, password=passwords["default"], socket_timeout=2).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port, passwords
    finally:
        server.terminate()
        server.wait(10)


def connect(port, passwords, user, db=0):
    return redis.Redis(port=port, username=user, password=passwords[user], db=db, socket_timeout=5)


def test_health_user_may_only_add_to_its_stream(acl_redis):
    port, passwords = acl_redis
    health = connect(port, passwords, "gpufleet-health")
    assert health.ping()
    assert health.xadd("events", {"name": "gpu_health"}, maxlen=1000, approximate=True)
    for forbidden in (lambda: health.xadd("other", {"a": "1"}), lambda: health.set("events", "x"),
                      lambda: health.xrange("events"), lambda: health.config_get("requirepass"),
                      lambda: health.flushall()):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()


def test_agent_user_reads_and_writes_stats_and_streams_but_does_not_administer(acl_redis):
    port, passwords = acl_redis
    stream_db = connect(port, passwords, "gpufleet-agent", db=4)  # Backend.AI's stream database
    stat_db = connect(port, passwords, "gpufleet-agent", db=0)  # and its stat database
    assert stream_db.ping() and stat_db.ping()
    entry = stream_db.xadd("events", {"name": "agent_heartbeat"}, maxlen=100, approximate=True)
    assert stream_db.xread({"events": "0"}, count=10)[0][1][-1][0] == entry
    assert stat_db.set("kernel-1", "{}", px=5000) and stat_db.get("kernel-1") == b"{}"
    assert stat_db.expire("kernel-1", 10)
    assert stat_db.hset("agent-1", mapping={"cpu": "1"}) == 1
    assert "redis_version" in stat_db.info()
    for forbidden in (stat_db.flushall, stat_db.flushdb, lambda: stat_db.config_get("*"),
                      lambda: stat_db.keys("*"), lambda: stat_db.acl_list(), stat_db.shutdown):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()


def test_wrong_password_is_refused(acl_redis):
    port, passwords = acl_redis
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=port, username="gpufleet-agent", password="wrong", socket_timeout=5).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=port, socket_timeout=5).set("x", "1")
