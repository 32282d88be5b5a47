"""The protocol's codec (Backend.AI's msgpack ext types) and the RPC functions' argument checks."""

import datetime
import decimal
import pickle
import pickletools
import uuid
from pathlib import PurePosixPath

import msgpack
import pytest
from gpufleet.agent.protocol import codec
from gpufleet.agent.protocol.codec import (
    BinarySize,
    ClusterMode,
    CodecError,
    KernelLifecycleEventReason,
    SlotTypes,
    packb,
    unpackb,
)
from gpufleet.agent.protocol.functions import (
    FUNCTIONS,
    AgentFunctions,
    InvalidArgument,
    kernel_spec,
    uuid_arg,
)
from hypothesis import given, settings
from hypothesis import strategies as st

BACKEND_AI_23_09_FUNCTIONS = {
    "ping", "gather_hwinfo", "get_local_config", "update_scaling_group", "ping_kernel",
    "sync_kernel_registry", "create_kernels", "destroy_kernel", "restart_kernel", "interrupt_kernel",
    "execute", "get_completions",
    "get_logs", "start_service", "shutdown_service", "get_commit_status", "commit", "upload_file",
    "download_file", "download_single", "list_files", "shutdown_agent", "create_local_network",
    "destroy_local_network", "reset_agent", "assign_port", "release_port",
}


def test_all_27_functions_of_23_09_plus_health():
    assert set(FUNCTIONS) == BACKEND_AI_23_09_FUNCTIONS | {"health"}
    assert all(callable(getattr(AgentFunctions, name)) for name in FUNCTIONS)


def test_ext_types_round_trip():
    value = {"u": uuid.UUID(int=7), "when": datetime.datetime(2026, 1, 2, 3, 4, 5, 678000,
                                                               tzinfo=datetime.timezone.utc),
             "d": decimal.Decimal("1.50"), "b": BinarySize(1 << 40), "mode": ClusterMode.MULTI_NODE,
             "reason": KernelLifecycleEventReason.IDLE_TIMEOUT, "slot": SlotTypes.BYTES,
             "p": PurePosixPath("/home/work"), "t": (1, "x")}
    decoded = unpackb(packb(value))
    assert decoded == {**value, "t": (1, "x")}
    assert type(decoded["b"]) is BinarySize and decoded["mode"] is ClusterMode.MULTI_NODE


def test_enum_and_binary_size_pickles_name_backend_ai_classes():
    ext = msgpack.unpackb(packb(ClusterMode.SINGLE_NODE), ext_hook=msgpack.ExtType)
    assert ext.code == codec.EXT_ENUM
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(ext.data)]
    assert ("SHORT_BINUNICODE", "ai.backend.common.types") in ops
    assert ("SHORT_BINUNICODE", "ClusterMode") in ops
    ext = msgpack.unpackb(packb(KernelLifecycleEventReason.USER_REQUESTED), ext_hook=msgpack.ExtType)
    assert ("SHORT_BINUNICODE", "ai.backend.common.events") in [(o.name, a) for o, a, _ in
                                                                 pickletools.genops(ext.data)]
    ext = msgpack.unpackb(packb(BinarySize(1 << 40)), ext_hook=msgpack.ExtType)
    assert ext.code == codec.EXT_BINARY_SIZE
    assert "NEWOBJ" in [o.name for o, _, _ in pickletools.genops(ext.data)]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("payload", [
    pickle.dumps(Evil()), pickle.dumps(OSError("x")), pickle.dumps({"a": 1}), b"not a pickle",
    b"\x80\x05\x8c\x05posix\x8c\x06system\x93\x8c\x02id\x85R.", b"x" * 10_000,
    # getattr on something that is not an allowed enum
    b"\x80\x05\x8c\x08builtins\x8c\x07getattr\x93\x8c\x02os\x8c\x06system\x86R.",
])
def test_pickles_outside_the_allow_list_are_refused(payload, capsys):
    for code in (codec.EXT_ENUM, codec.EXT_DECIMAL, codec.EXT_BINARY_SIZE):
        with pytest.raises(CodecError):
            unpackb(msgpack.packb(msgpack.ExtType(code, payload)))
    assert "pwned" not in capsys.readouterr().out


def test_an_allowed_class_in_the_wrong_ext_is_refused():
    decimal_pickle = msgpack.unpackb(packb(decimal.Decimal("1")), ext_hook=msgpack.ExtType).data
    with pytest.raises(CodecError, match="where"):
        unpackb(msgpack.packb(msgpack.ExtType(codec.EXT_ENUM, decimal_pickle)))


def test_python_3_12_enum_pickles_by_name_are_accepted_for_allowed_enums_only():
    by_name = (b"\x80\x05\x8c\x08builtins\x8c\x07getattr\x93\x8c\x17ai.backend.common.types"
               b"\x8c\x0bClusterMode\x93\x8c\x0bSINGLE_NODE\x86R.")
    assert unpackb(msgpack.packb(msgpack.ExtType(6, by_name))) is ClusterMode.SINGLE_NODE
    with pytest.raises(CodecError):
        unpackb(msgpack.packb(msgpack.ExtType(6, by_name.replace(b"SINGLE_NODE", b"__class__  "))))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=256))
def test_garbage_is_a_codec_error_never_another_exception(data):
    try:
        unpackb(data)
    except CodecError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 127), st.binary(max_size=64))
def test_any_ext_payload_is_decoded_or_refused(code, data):
    try:
        unpackb(msgpack.packb(msgpack.ExtType(code, data)))
    except CodecError:
        pass


def test_deep_nesting_and_huge_headers_are_refused():
    with pytest.raises(CodecError):
        unpackb(b"\x91" * 200_000 + b"\xc0")
    with pytest.raises(CodecError):
        unpackb(b"\xdd\xff\xff\xff\xff")


@pytest.mark.parametrize("text", ["nl\n", "0" * 32 + "\n", "../etc", "",
                                  "{12345678-1234-1234-1234-1234567890ab}",
                                  "12345678-1234-1234-1234-1234567890ab\x00"])
def test_ids_are_matched_whole(text):
    with pytest.raises(InvalidArgument):
        uuid_arg("kernel_id", text)


def test_ids_in_canonical_form():
    assert uuid_arg("k", "12345678123412341234123456789ABC") == "12345678-1234-1234-1234-123456789abc"


def test_kernel_spec_from_a_23_09_config():
    kid, sid = str(uuid.uuid4()), str(uuid.uuid4())
    labels = {"ai.backend.service-ports": "jupyter:http:8081,ssh:tcp:2200"}
    spec = kernel_spec(0, {"image": {"canonical": "cr.backend.ai/stable/python:3.11", "labels": labels},
                           "resource_slots": {"cpu": decimal.Decimal("2"), "mem": BinarySize(1 << 30),
                                              "cuda.device": "1", "cuda.shares": "0"},
                           "environ": {"A": "b"}}, kid, sid)
    assert spec == {"cpu": 2.0, "mem": 1 << 30, "gpus": 1, "service_ports": 2, "session_id": sid,
                    "kernel_id": kid, "environ": {"A": "b"}, "image": "cr.backend.ai/stable/python:3.11"}
    assert kernel_spec(0, {"resource_slots": {"mem": "4g"}}, kid, sid)["mem"] == 4 << 30
    for bad in ({"resource_slots": {"cpu": "NaN"}}, {"resource_slots": {"mem": "-1"}},
                {"environ": {"A": 1}}, {"environ": {"": "x"}}, {"image": {"canonical": ""}}):
        with pytest.raises(Exception) as refused:
            kernel_spec(0, bad, kid, sid)
        assert type(refused.value).__name__ in ("InvalidArgument", "NotSupported"), bad
