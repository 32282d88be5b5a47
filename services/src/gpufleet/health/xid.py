"""The Xid catalog (``data/xid_catalog.yaml``): code -> name, NVIDIA's resolution bucket, severity, action.

Lookup order for a code: the base entry (its bucket gives severity and action
unless the entry sets them), then the GPU architecture's override, then the
operator's override file. Xid 154 carries the driver's recovery action in its
text; ``classify`` reads it from there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpufleet.health.datafiles import packaged, safe_load
from gpufleet.health.severity import Severity

DEFAULT_OPERATOR_OVERRIDES = Path("/etc/gpufleet/xid-overrides.yaml")
MAX_LOGGED_UNKNOWN = 64  # distinct unknown codes logged per process (a flood logs no more)

log = logging.getLogger("gpufleet.health.xid")
_logged_unknown: set[int] = set()

# "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)"
RECOVERY_CHANGE = re.compile(
    r"recovery action changed from\s+(?:0x)?(?P<old_code>[0-9a-fA-F]+)\s*\((?P<old>[^)]*)\)\s+to\s+"
    r"(?:0x)?(?P<new_code>[0-9a-fA-F]+)\s*\((?P<new>[^)]*)\)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class XidInfo:
    code: int
    name: str
    severity: Severity
    action: str
    window_seconds: float | None  # None: until the next reboot
    known: bool = True
    source: str = "catalog"  # catalog | architecture:<arch> | operator | recovery-action
    bucket: str = ""  # NVIDIA's resolution bucket (immediate action); "" when NVIDIA gives none
    reference: str = "nvidia"  # who decided the severity: nvidia (its bucket) | gpufleet | operator

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "severity": self.severity.name,
            "action": self.action,
            "window_seconds": self.window_seconds,
            "known": self.known,
            "source": self.source,
            "bucket": self.bucket,
            "reference": self.reference,
        }


class XidCatalogError(ValueError):
    """A catalog or override file that cannot be used (names the file and the entry)."""


class XidCatalog:
    def __init__(self, data: dict[str, Any], operator: dict[str, Any] | None = None):
        defaults = data.get("defaults", {})
        self.unknown_severity = Severity.parse(defaults.get("unknown_severity", "MONITOR"))
        self.unknown_action = defaults.get("unknown_action", "")
        self.buckets = {name: dict(v) for name, v in (data.get("buckets") or {}).items()}
        self.windows = {Severity.parse(k): v for k, v in defaults.get("window_seconds", {}).items()}
        self.entries = {int(k): dict(v) for k, v in (data.get("xids") or {}).items()}
        self.architectures = {
            arch.lower(): {int(k): dict(v) for k, v in (table or {}).items()}
            for arch, table in (data.get("architectures") or {}).items()
        }
        self.operator = {int(k): dict(v) for k, v in ((operator or {}).get("xids") or {}).items()}
        self.on_unknown: Callable[[int], None] | None = None  # the agent counts unknown codes here

    def report_unknown(self, code: int, message: str = "") -> None:
        """An Xid not in the catalog: counted every time, logged once per code (per process)."""
        if self.on_unknown is not None:
            self.on_unknown(code)
        if code not in _logged_unknown and len(_logged_unknown) < MAX_LOGGED_UNKNOWN:
            _logged_unknown.add(code)
            log.warning(
                "Xid not in the catalog: treated as MONITOR; look it up in NVIDIA's Xid catalog and add an "
                "override if it needs more",
                extra={"fields": {"xid": code, "message": message[:200]}},
            )

    @classmethod
    def load(cls, operator_file: Path | None = None) -> XidCatalog:
        """The packaged catalog plus the operator's file (when it exists), validated entry by entry.

        Raises XidCatalogError (or the YAML/OS error, which names the file and line) for a file
        that cannot be used, so a reload can keep the running catalog."""
        operator = None
        if operator_file is not None and Path(operator_file).exists():
            operator = safe_load(Path(operator_file).read_text(encoding="utf-8")) or {}
            if not isinstance(operator, dict) or not isinstance(operator.get("xids") or {}, dict):
                raise XidCatalogError(f"{operator_file}: expected a mapping with an `xids:` mapping")
        try:
            catalog = cls(packaged("xid_catalog.yaml"), operator)
        except (TypeError, ValueError, AttributeError) as exc:
            raise XidCatalogError(f"{operator_file}: {exc}") from None
        catalog.validate(str(operator_file or "xid_catalog.yaml"))
        return catalog

    def validate(self, source: str) -> None:
        """Every entry resolves to a severity (a typo fails at load, not at the first Xid)."""
        for code in sorted(set(self.entries) | set(self.operator)):
            for arch in [None, *self.architectures]:
                try:
                    self.lookup(code, arch)
                except (ValueError, TypeError) as exc:
                    raise XidCatalogError(f"{source}: Xid {code}: {exc}") from None

    def window_for(self, severity: Severity) -> float | None:
        value = self.windows.get(severity)
        return None if value is None else float(value)

    def lookup(self, code: int, architecture: str | None = None) -> XidInfo:
        entry: dict[str, Any] = {}
        source = "catalog"
        known = code in self.entries
        entry.update(self.entries.get(code, {}))
        if architecture and code in self.architectures.get(architecture.lower(), {}):
            entry.update(self.architectures[architecture.lower()][code])
            source = f"architecture:{architecture.lower()}"
        reference = entry.get("source", "nvidia" if known else "")
        if code in self.operator:
            entry.update(self.operator[code])
            source = "operator"
            known = True
            if "severity" in self.operator[code]:
                reference = "operator"
        bucket = entry.get("bucket", "")
        if bucket and bucket not in self.buckets:
            raise ValueError(
                f"unknown resolution bucket {bucket!r}; known: {', '.join(sorted(self.buckets))}"
            )
        by_bucket = self.buckets.get(bucket, {})
        severity = Severity.parse(entry.get("severity", by_bucket.get("severity", self.unknown_severity)))
        window = entry.get("window_seconds", self.window_for(severity))
        name = entry.get("name") or (
            f"unused code {entry['mnemonic']}" if "mnemonic" in entry else f"Xid {code}"
        )
        return XidInfo(
            code=code,
            name=name,
            severity=severity,
            action=entry.get("action", by_bucket.get("action", self.unknown_action)),
            window_seconds=None if window is None else float(window),
            known=known,
            source=source,
            bucket=bucket,
            reference=reference,
        )

    def recovery_actions(self) -> list[dict[str, Any]]:
        entry = dict(self.entries.get(154, {}))
        entry.update(self.operator.get(154, {}))
        return list(entry.get("recovery_actions", []))

    def classify(self, code: int, message: str = "", architecture: str | None = None) -> XidInfo:
        """Severity for one Xid occurrence; Xid 154 takes it from the recovery action in ``message``."""
        info = self.lookup(code, architecture)
        if code != 154 or info.source == "operator" and "severity" in self.operator.get(154, {}):
            return info
        action = parse_recovery_action(message, self.recovery_actions())
        if action is None:
            return info
        severity = Severity.parse(action["severity"])
        return XidInfo(
            code=code,
            name=f"{info.name}: {action['text']}",
            severity=severity,
            action=action.get("action", info.action),
            window_seconds=self.window_for(severity),
            known=True,
            source="recovery-action",
            bucket=info.bucket,
            reference="nvidia",
        )


def parse_recovery_action(message: str, actions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The catalog's recovery action named by an Xid 154 message (the new one, after "to")."""
    match = RECOVERY_CHANGE.search(message)
    if match is not None:
        text, code = match["new"].strip().lower(), int(match["new_code"], 16)
        for action in actions:
            if action["text"].lower() == text:
                return action
        for action in actions:
            if action.get("code") == code:
                return action
        return None
    # Some tools log only the action text; take the longest action text mentioned.
    lowered = message.lower()
    mentioned = [a for a in actions if a["text"].lower() != "none" and a["text"].lower() in lowered]
    return max(mentioned, key=lambda a: len(a["text"]), default=None)
