"""The base of gpufleet's configuration models (pydantic v2): one way to read a TOML file.

A section is a `Section` (kebab-case keys, unknown keys refused); a value type is
an `Annotated` type whose validator raises `ValueError` with the project's own
message ("expected 'host:port' or ':port', got 'x'"). `validate()` turns
pydantic's errors into one `ConfigError` naming the key, in the caller's format.
Adding a key to a section is one line: `name: Type = default`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class KeyProblem(ValueError):
    """Raised by cross-field checks: the problem belongs to `key`, not to where it was found."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def kebab(name: str) -> str:
    return name.replace("_", "-")


class Section(BaseModel):
    """A TOML table with kebab-case keys; unknown keys are errors. Fields stay assignable."""

    model_config = ConfigDict(extra="forbid", alias_generator=kebab, populate_by_name=True,
                              arbitrary_types_allowed=True)


# --- value types: each validator gets the raw TOML value -------------------------------------

@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def host_port(value: Any, default_host: str = "0.0.0.0") -> HostPort:  # noqa: S104
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str) or not value or ":" not in value:
        raise ValueError(f"expected 'host:port' or ':port', got {value!r}")
    host, _, port_text = value.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return HostPort(host.strip("[]") or default_host, port)


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if text(value) not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def number(minimum: float = 0.0, integer: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        if integer and not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value!r}")
        return value

    return check


def absolute_path(value: Any) -> str:
    if not os.path.isabs(text(value)):
        raise ValueError("must be an absolute path")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size(value: Any) -> int:
    """Bytes from an int or a string like '512m', '2g', '1.5G', '1Gi'."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size like '2g', got {value!r}")
    lowered = value.strip().lower().removesuffix("ib").removesuffix("i").removesuffix("b")
    amount, unit = lowered, ""
    if lowered and lowered[-1] in _SIZE_UNITS:
        amount, unit = lowered[:-1], lowered[-1]
    try:
        parsed = float(amount)
    except ValueError:
        raise ValueError(f"cannot read size {value!r}") from None
    if parsed < 0:
        raise ValueError(f"must be >= 0, got {value!r}")
    return int(parsed * _SIZE_UNITS[unit])


def port_range_parts(value: Any) -> tuple[int, int]:
    """(LOW, HIGH) from 'LOW-HIGH' or [LOW, HIGH]."""
    parts = value.split("-") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else []
    try:
        low, high = (int(part) for part in parts)
    except (TypeError, ValueError):
        raise ValueError(f"expected 'LOW-HIGH' or [LOW, HIGH], got {value!r}") from None
    return low, high


def port_range(value: Any) -> tuple[int, int]:
    low, high = port_range_parts(value)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"need 1 <= LOW <= HIGH <= 65535, got {low}-{high}")
    return low, high


def path_text(value: Any) -> Any:
    return value if isinstance(value, Path) else text(value)


Text = Annotated[str, BeforeValidator(text)]
PathText = Annotated[Path, BeforeValidator(path_text)]
Flag = Annotated[bool, BeforeValidator(flag)]
AbsolutePath = Annotated[str, BeforeValidator(absolute_path)]
Size = Annotated[int, BeforeValidator(size)]
PortRange = Annotated[tuple[int, int], BeforeValidator(port_range)]
ListenAddr = Annotated[HostPort, BeforeValidator(host_port)]  # ":6001" listens on every address
PeerAddr = Annotated[HostPort, BeforeValidator(lambda value: host_port(value, "127.0.0.1"))]


def Number(minimum: float = 0.0) -> Any:  # noqa: N802 - reads as a type in a field declaration
    return Annotated[float, BeforeValidator(number(minimum))]


def Integer(minimum: int = 0) -> Any:  # noqa: N802
    return Annotated[int, BeforeValidator(number(minimum, integer=True))]


def Choice(*choices: str) -> Any:  # noqa: N802
    return Annotated[str, BeforeValidator(choice(*choices))]


# --- reading -------------------------------------------------------------------------------------

ModelT = TypeVar("ModelT", bound=BaseModel)


def first_problem(error: ValidationError) -> tuple[tuple[str, ...], str, str, Any]:
    """(location, kind, message, input) of the first error, location as key names."""
    problem = error.errors(include_url=False)[0]
    location = tuple(str(part) for part in problem["loc"])
    raised = problem.get("ctx", {}).get("error")
    if isinstance(raised, KeyProblem):
        location = (*location, raised.key)
    message = str(raised) if raised is not None else problem["msg"]
    return location, problem["type"], message, problem.get("input")


Describe = Callable[[tuple[str, ...], str, str, Any], str]


def validate(model: type[ModelT], data: dict[str, Any], describe: Describe) -> ModelT:
    """`model` from `data`; a ConfigError with `describe(location, kind, message, input)` otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(*first_problem(exc))) from None


def read_toml(path: Path, missing: str = "no such file", unreadable: str = "{strerror}") -> dict[str, Any]:
    """The parsed file; ConfigError naming the file when it is absent, unreadable or not TOML."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {missing}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {unreadable.format(strerror=exc.strerror)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(not_utf8(path, exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def not_utf8(path: Path | str, exc: UnicodeDecodeError) -> str:
    """`file:line: not UTF-8 text (...)` — where in the file the bad byte is."""
    line = exc.object[: exc.start].count(b"\n") + 1 if isinstance(exc.object, bytes) else "?"
    return f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})"
