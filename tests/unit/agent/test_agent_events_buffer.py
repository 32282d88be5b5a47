import json

from gpufleet.agent.events import EventPublisher


def test_unsent_heartbeat_is_replaced_not_queued():
    pub = EventPublisher("agent-1")
    pub.publish("agent_heartbeat", n=1)
    pub.publish("kernel_started", kernel_id="k")
    pub.publish("agent_heartbeat", n=2)
    assert [(name, args) for name, args, _ in pub.buffer] == [
        ("kernel_started", {"kernel_id": "k"}), ("agent_heartbeat", {"n": 2})]


def test_full_buffer_drops_oldest_and_counts():
    drops = []
    pub = EventPublisher("agent-1", max_buffered=3, on_drop=lambda: drops.append(1))
    for i in range(5):
        pub.publish("kernel_started", i=i)
    assert [args["i"] for _, args, _ in pub.buffer] == [2, 3, 4]
    assert pub.dropped == 2 and len(drops) == 2
    json.dumps([a for _, a, _ in pub.buffer])  # args stay JSON-serialisable
