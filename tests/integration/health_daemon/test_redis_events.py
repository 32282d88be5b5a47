"""The optional Redis event sink against a real redis-server: changes only, in order, buffered while down."""

from __future__ import annotations

import json

import pytest
import redis

pytestmark = pytest.mark.integration


def events(server) -> list[dict]:
    client = redis.Redis.from_url(server.url)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange("events")]


def test_health_changes_become_events(fleet, kube_api, redis_server):
    redis.Redis.from_url(redis_server.url).delete("events")
    fleet.add("gpu-1")
    agent = fleet.agent("gpu-1", redis={"url": redis_server.url})

    agent.cycle()
    agent.cycle()  # unchanged: no second event
    fleet.inject("gpu-1", gpu=6, settings={"remapped_rows.pending": True})
    agent.cycle()

    sent = events(redis_server)
    assert [e["name"] for e in sent] == ["gpu_health_changed", "gpu_health_changed"]
    assert {e["source"] for e in sent} == {"gpu-1"}
    first, second = (json.loads(e["args"]) for e in sent)
    assert (first["status"], first["previous_status"]) == ("pass", None)
    assert (second["status"], second["verdict"], second["previous_verdict"]) == ("fail", "RESET", "PASS")
    assert second["fence"] == "fence"
    assert second["findings"][0]["check"] == "memory_remap"


def test_events_wait_while_redis_is_down(fleet, kube_api, redis_server):
    redis.Redis.from_url(redis_server.url).delete("events")
    fleet.add("gpu-1")
    agent = fleet.agent("gpu-1", redis={"url": redis_server.url})
    redis_server.stop()
    try:
        result = agent.cycle()  # the checks and the node go on without Redis
        assert result.published is True
        assert len(agent.redis_sink.buffer) == 1
        assert agent.metrics.registry.get_sample_value("gpufleet_health_redis_events_pending") == 1
    finally:
        redis_server.start()
    fleet.inject("gpu-1", gpu=6, settings={"remapped_rows.pending": True})
    agent.cycle()
    sent = [json.loads(e["args"])["status"] for e in events(redis_server)]
    assert sent == ["pass", "fail"]  # the buffered one first
    assert len(agent.redis_sink.buffer) == 0
