from gpufleet.agent import events as ev
from gpufleet.agent.events import EventPublisher
from gpufleet.agent.protocol.codec import KernelLifecycleEventReason, packb, unpackb


def test_unsent_heartbeat_is_replaced_not_queued():
    pub = EventPublisher("agent-1")
    pub.emit(ev.agent_heartbeat({"n": 1}))
    pub.emit(ev.kernel_creation("kernel_started", "k", "s"))
    pub.emit(ev.agent_heartbeat({"n": 2}))
    assert [(name, args) for name, args, _ in pub.buffer] == [
        ("kernel_started", ("k", "s", "", {})), ("agent_heartbeat", ({"n": 2},))]


def test_full_buffer_drops_oldest_and_counts():
    drops = []
    pub = EventPublisher("agent-1", max_buffered=3, on_drop=lambda: drops.append(1))
    for i in range(5):
        pub.emit(ev.execution("execution_started", f"s{i}"))
    assert [args[0] for _, args, _ in pub.buffer] == ["s2", "s3", "s4"]
    assert pub.dropped == 2 and len(drops) == 2
    for _, args, _ in pub.buffer:
        assert unpackb(packb(args)) == args  # args stay msgpack-serialisable


def test_termination_events_carry_backend_ai_enum_and_int_exit_code():
    name, args = ev.kernel_termination("kernel_terminated", "k", "s", "user-requested", None)
    assert name == "kernel_terminated" and args == ("k", "s", KernelLifecycleEventReason.USER_REQUESTED, -1)
    _, args = ev.kernel_termination("kernel_terminated", "k", "s", "no-such-reason", 3)
    assert args[2] is KernelLifecycleEventReason.UNKNOWN and args[3] == 3
