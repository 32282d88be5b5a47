"""Hardware profiles: the expected shape of a healthy node (``data/profiles.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gpufleet.gpu.base import NodeReading
from gpufleet.gpu.datafiles import packaged, safe_load


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    gpu_count: int
    description: str = ""
    model: str | None = None
    memory_mib: int | None = None
    architecture: str | None = None
    nvlinks_per_gpu: int = 0
    nvswitch: bool = False
    pcie_gen: int | None = None
    pcie_width: int | None = None
    power_limit_w: float | None = None
    temperature_warn_c: int = 85
    temperature_critical_c: int = 92
    efa_devices: int | None = None
    ib_devices: int | None = None
    match_models: tuple[str, ...] = field(default=())
    match_any_count: bool = False
    generic: bool = False  # made up from what was observed because nothing matched

    def matches(self, models: list[str], count: int) -> bool:
        if not self.match_models or (count != self.gpu_count and not self.match_any_count):
            return False
        lowered = [m.lower() for m in models]
        return any(pattern.lower() in model for pattern in self.match_models for model in lowered)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("match_models",)}


def _profile_from(
    name: str, raw: dict[str, Any], raw_all: dict[str, dict], depth: int = 0
) -> HardwareProfile:
    if depth > 5:
        raise ProfileError(f"profile {name}: 'extends' nests too deep")
    merged: dict[str, Any] = {}
    if "extends" in raw:
        parent = raw_all.get(raw["extends"])
        if parent is None:
            raise ProfileError(f"profile {name} extends unknown profile {raw['extends']}")
        base = _profile_from(raw["extends"], parent, raw_all, depth + 1)
        merged.update(base.to_dict())
        merged["match_models"] = ()  # a named variant is only ever chosen by name
        merged["match_any_count"] = False
    for key, value in raw.items():
        if key == "extends":
            continue
        if key == "match":
            merged["match_models"] = tuple(value.get("models", [])) if value else ()
            merged["match_any_count"] = bool(value.get("any_count", False)) if value else False
        else:
            merged[key] = value
    merged["name"] = name
    known = {f.name for f in fields(HardwareProfile)}
    unknown = set(merged) - known
    if unknown:
        raise ProfileError(f"profile {name}: unknown keys {sorted(unknown)}")
    if "gpu_count" not in merged:
        raise ProfileError(f"profile {name}: gpu_count is required")
    return HardwareProfile(**merged)


def load_profiles(extra_files: list[Path] | None = None) -> dict[str, HardwareProfile]:
    """Built-in profiles, then each extra file's (same name replaces)."""
    raw_all: dict[str, dict] = dict(packaged("profiles.yaml").get("profiles", {}))
    for path in extra_files or []:
        raw_all.update((safe_load(Path(path).read_text()) or {}).get("profiles", {}))
    return {name: _profile_from(name, raw, raw_all) for name, raw in raw_all.items()}


def generic_profile(reading: NodeReading) -> HardwareProfile:
    models = sorted({g.model for g in reading.gpus})
    return HardwareProfile(
        name="generic",
        gpu_count=reading.device_count,
        description="no profile matched; expectations taken from what was observed",
        model=models[0] if len(models) == 1 else None,
        generic=True,
    )


def select_profile(
    reading: NodeReading, name: str | None = None, profiles: dict[str, HardwareProfile] | None = None
) -> HardwareProfile:
    """The named profile, else the first whose model and count match, else a generic one."""
    profiles = profiles if profiles is not None else load_profiles()
    if name:
        if name not in profiles:
            raise ProfileError(f"unknown profile {name!r}; known: {', '.join(sorted(profiles))}")
        return profiles[name]
    models = [g.model for g in reading.gpus]
    for profile in profiles.values():
        if profile.matches(models, reading.device_count):
            return profile
    return generic_profile(reading)
