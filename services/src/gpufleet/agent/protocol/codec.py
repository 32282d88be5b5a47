"""msgpack with Backend.AI 23.09's extension types, decoded without trusting the sender.

Backend.AI encodes UUIDs (ext 1), datetimes (ext 2, temporenc), Decimals (ext 3,
a pickle), paths (ext 4/5), enums (ext 6, a pickle) and BinarySize (ext 16, a
pickle). A pickle from the network is never handed to `pickle.loads`: the
restricted unpickler below resolves only the classes of `ALLOWED_GLOBALS` (our
own enums with Backend.AI's names and values, `decimal.Decimal` and our
`BinarySize`), and anything else in the pickle is refused with `CodecError`.

Encoding writes the same pickles Backend.AI writes (protocol 5, module and
qualified name of the Backend.AI class), built opcode by opcode here so that
nothing needs `ai.backend` to be importable.
"""

from __future__ import annotations

import copyreg
import datetime
import decimal
import enum
import io
import os
import pickle
import struct
import uuid
from pathlib import PosixPath, PurePosixPath
from typing import Any

import msgpack
import temporenc

EXT_UUID = 1
EXT_DATETIME = 2
EXT_DECIMAL = 3
EXT_POSIX_PATH = 4
EXT_PURE_POSIX_PATH = 5
EXT_ENUM = 6
EXT_BINARY_SIZE = 16

# Limits a decoder applies to untrusted bytes (a msgpack array header can claim 2^32 items).
MAX_BODY_BYTES = 16 << 20
MAX_CONTAINER_LEN = 1 << 20
MAX_PICKLE_BYTES = 512


class CodecError(ValueError):
    """Bytes that are not a valid Backend.AI msgpack value (or carry a type we do not accept)."""


class BinarySize(int):
    """Backend.AI's `ai.backend.common.types.BinarySize`: an int counting bytes."""


# --- the enums the protocol carries (Backend.AI's names and values) ---------------------------

class ClusterMode(str, enum.Enum):
    SINGLE_NODE = "single-node"
    MULTI_NODE = "multi-node"


class SessionTypes(str, enum.Enum):
    INTERACTIVE = "interactive"
    BATCH = "batch"
    INFERENCE = "inference"


class SlotTypes(str, enum.Enum):
    COUNT = "count"
    BYTES = "bytes"
    UNIQUE = "unique"


class MountPermission(str, enum.Enum):
    READ_ONLY = "ro"
    READ_WRITE = "rw"
    RW_DELETE = "wd"


class MountTypes(str, enum.Enum):
    VOLUME = "volume"
    BIND = "bind"
    TMPFS = "tmpfs"
    K8S_GENERIC = "k8s-generic"
    K8S_HOSTPATH = "k8s-hostpath"


class AutoPullBehavior(str, enum.Enum):
    DIGEST = "digest"
    TAG = "tag"
    NONE = "none"


class CommitStatus(str, enum.Enum):
    READY = "ready"
    ONGOING = "ongoing"


class LogSeverity(str, enum.Enum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


class KernelLifecycleEventReason(str, enum.Enum):
    AGENT_TERMINATION = "agent-termination"
    ALREADY_TERMINATED = "already-terminated"
    ANOMALY_DETECTED = "anomaly-detected"
    EXEC_TIMEOUT = "exec-timeout"
    FAILED_TO_CREATE = "failed-to-create"
    FAILED_TO_START = "failed-to-start"
    FORCE_TERMINATED = "force-terminated"
    HANG_TIMEOUT = "hang-timeout"
    IDLE_TIMEOUT = "idle-timeout"
    IDLE_SESSION_LIFETIME = "idle-session-lifetime"
    IDLE_UTILIZATION = "idle-utilization"
    KILLED_BY_EVENT = "killed-by-event"
    SERVICE_SCALED_DOWN = "service-scaled-down"
    NEW_CONTAINER_STARTED = "new-container-started"
    PENDING_TIMEOUT = "pending-timeout"
    RESTARTING = "restarting"
    RESTART_TIMEOUT = "restart-timeout"
    RESUMING_AGENT_OPERATION = "resuming-agent-operation"
    SELF_TERMINATED = "self-terminated"
    TASK_DONE = "task-done"
    TASK_FAILED = "task-failed"
    TASK_TIMEOUT = "task-timeout"
    TASK_CANCELLED = "task-cancelled"
    TASK_FINISHED = "task-finished"
    TERMINATED_UNKNOWN_CONTAINER = "terminated-unknown-container"
    UNKNOWN = "unknown"
    USER_REQUESTED = "user-requested"
    NOT_FOUND_IN_MANAGER = "not-found-in-manager"

    @classmethod
    def lookup(cls, value: str | None) -> KernelLifecycleEventReason:
        """Our internal reason strings map onto Backend.AI's; anything else is UNKNOWN."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


BAI_TYPES = "ai.backend.common.types"
# (module, qualname) as Backend.AI pickles them -> our class. Nothing else is ever resolved.
ALLOWED_GLOBALS: dict[tuple[str, str], type] = {
    (BAI_TYPES, "ClusterMode"): ClusterMode,
    (BAI_TYPES, "SessionTypes"): SessionTypes,
    (BAI_TYPES, "SlotTypes"): SlotTypes,
    (BAI_TYPES, "MountPermission"): MountPermission,
    (BAI_TYPES, "MountTypes"): MountTypes,
    (BAI_TYPES, "AutoPullBehavior"): AutoPullBehavior,
    (BAI_TYPES, "CommitStatus"): CommitStatus,
    (BAI_TYPES, "LogSeverity"): LogSeverity,
    (BAI_TYPES, "BinarySize"): BinarySize,
    ("ai.backend.common.events", "KernelLifecycleEventReason"): KernelLifecycleEventReason,
    ("decimal", "Decimal"): decimal.Decimal,
}
_NAME_OF: dict[type, tuple[str, str]] = {cls: name for name, cls in ALLOWED_GLOBALS.items()}


def _enum_by_name(cls: Any, name: Any) -> Any:
    """Python >= 3.12 pickles some enums as `getattr(cls, name)`: allowed for our enums only."""
    if not (isinstance(cls, type) and issubclass(cls, enum.Enum) and cls in _NAME_OF):
        raise CodecError("getattr in a pickle on something that is not an allowed enum")
    if not isinstance(name, str) or name not in cls.__members__:
        raise CodecError(f"{cls.__name__} has no member {name!r}")
    return cls.__members__[name]


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        cls = ALLOWED_GLOBALS.get((module, name))
        if cls is not None:
            return cls
        if (module, name) == ("builtins", "getattr"):
            return _enum_by_name
        if (module, name) == ("copyreg", "__newobj__"):
            return copyreg.__newobj__
        raise CodecError(f"pickled type {module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise CodecError("persistent ids are not allowed")


def _unpickle(data: bytes, expected: tuple[type, ...]) -> Any:
    if len(data) > MAX_PICKLE_BYTES:
        raise CodecError("pickled value too large")
    try:
        value = _RestrictedUnpickler(io.BytesIO(data)).load()
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is a codec error
        raise CodecError(f"malformed pickled value ({type(exc).__name__})") from None
    if not isinstance(value, expected):
        raise CodecError(f"pickled value of type {type(value).__name__} where {expected} was expected")
    return value


# --- writing Backend.AI's pickles -------------------------------------------------------------

def _short_unicode(text: str) -> bytes:
    raw = text.encode()
    if len(raw) < 256:
        return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _pickle_call(cls: type, arg: bytes, newobj: bool = False) -> bytes:
    module, qualname = _NAME_OF[cls]
    body = (_short_unicode(module) + _short_unicode(qualname) + b"\x93"  # STACK_GLOBAL
            + arg + b"\x85"  # TUPLE1
            + (b"\x81" if newobj else b"R")  # NEWOBJ or REDUCE
            + b".")  # STOP
    return b"\x80\x05" + body  # PROTO 5 (no FRAME: optional for a short pickle)


def _pickle_int(value: int) -> bytes:
    if -(1 << 31) <= value < (1 << 31):
        return b"J" + struct.pack("<i", value)  # BININT
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(EXT_UUID, obj.bytes)
    if isinstance(obj, datetime.datetime):
        return msgpack.ExtType(EXT_DATETIME, temporenc.packb(obj))
    if isinstance(obj, BinarySize):
        return msgpack.ExtType(EXT_BINARY_SIZE, _pickle_call(BinarySize, _pickle_int(int(obj)), newobj=True))
    if isinstance(obj, decimal.Decimal):
        return msgpack.ExtType(EXT_DECIMAL, _pickle_call(decimal.Decimal, _short_unicode(str(obj))))
    if isinstance(obj, PosixPath):
        return msgpack.ExtType(EXT_POSIX_PATH, os.fsencode(obj))
    if isinstance(obj, PurePosixPath):
        return msgpack.ExtType(EXT_PURE_POSIX_PATH, os.fsencode(obj))
    if isinstance(obj, enum.Enum):
        if type(obj) not in _NAME_OF:
            raise TypeError(f"enum {type(obj).__name__} is not part of the protocol")
        return msgpack.ExtType(EXT_ENUM, _pickle_call(type(obj), _short_unicode(obj.value)))
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    try:
        if code == EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == EXT_DATETIME:
            return temporenc.unpackb(data).datetime()
        if code == EXT_POSIX_PATH:
            return PosixPath(os.fsdecode(data))
        if code == EXT_PURE_POSIX_PATH:
            return PurePosixPath(os.fsdecode(data))
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed ext payloads are codec errors
        raise CodecError(f"malformed ext {code} value ({type(exc).__name__})") from None
    if code == EXT_DECIMAL:
        return _unpickle(data, (decimal.Decimal,))
    if code == EXT_BINARY_SIZE:
        return _unpickle(data, (BinarySize,))
    if code == EXT_ENUM:
        return _unpickle(data, (enum.Enum,))
    raise CodecError(f"unknown msgpack ext type {code}")


def packb(value: Any) -> bytes:
    """Encode as Backend.AI does (tuples become arrays, strict types)."""
    return msgpack.packb(value, default=_default, use_bin_type=True, strict_types=True)


def unpackb(data: bytes, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """Decode untrusted bytes; every failure is a `CodecError` (never another exception)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("expected bytes")
    if len(data) > max_bytes:
        raise CodecError(f"message larger than {max_bytes} bytes")
    try:
        return msgpack.unpackb(
            data, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=False,
            max_str_len=max_bytes, max_bin_len=max_bytes,
            max_array_len=MAX_CONTAINER_LEN, max_map_len=MAX_CONTAINER_LEN, max_ext_len=max_bytes)
    except CodecError:
        raise
    except RecursionError:
        raise CodecError("message nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types on garbage
        raise CodecError(f"not valid msgpack ({type(exc).__name__}: {str(exc)[:120]})") from None
