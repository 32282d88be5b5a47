"""Reading NVIDIA Xid lines from the kernel log, once each, per boot.

Two sources, same interface: the systemd journal (``journalctl -k -o json
--after-cursor``) and ``/dev/kmsg`` (sequence numbers as the cursor). A cursor
is only meaningful within one boot: the caller stores it together with the boot
id and drops it when the boot id changes, so an Xid from before a reboot is
never reported again.
"""

from __future__ import annotations

import abc
import errno
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gpufleet.gpu.base import XidEvent, read_boot_id

# NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.
# Older drivers omit the "PCI:" prefix.
XID_LINE = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<bus>[0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f]+(?:\.\d)?)\): "
    r"(?P<xid>\d+),\s*(?P<text>.*)"
)


def normalize_bus_id(bus_id: str) -> str:
    """'00000000:3B:00.0', '0000:3b:00' and 'PCI:0000:3b:00' all become '0000:3b:00'."""
    text = bus_id.strip().lower().removeprefix("pci:")
    parts = text.split(":")
    if len(parts) < 3:
        return text
    domain, bus, device = parts[-3], parts[-2], parts[-1].split(".")[0]
    return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{int(device, 16):02x}"


def parse_xid_line(line: str, timestamp: float = 0.0) -> XidEvent | None:
    match = XID_LINE.search(line)
    if match is None:
        return None
    return XidEvent(
        xid=int(match["xid"]),
        gpu_index=None,
        pci_bus_id=normalize_bus_id(match["bus"]),
        message=match["text"].strip(),
        timestamp=timestamp,
        source="kernel-log",
    )


@dataclass
class KernelLine:
    text: str
    timestamp: float  # unix seconds


class KernelLogSource(abc.ABC):
    @abc.abstractmethod
    def boot_id(self) -> str: ...

    @abc.abstractmethod
    def read_after(self, cursor: str | None) -> tuple[list[KernelLine], str | None]:
        """Lines of the current boot after ``cursor`` (all of them when None) and the new cursor."""


class JournalKernelLog(KernelLogSource):
    def __init__(self, journalctl: str = "journalctl", timeout: float = 10.0):
        self.journalctl = journalctl
        self.timeout = timeout

    def boot_id(self) -> str:
        return read_boot_id()

    def read_after(self, cursor: str | None) -> tuple[list[KernelLine], str | None]:
        # -k implies the current boot only.
        argv = [self.journalctl, "-k", "-o", "json", "--no-pager", "-q"]
        if cursor:
            argv += ["--after-cursor", cursor]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        if proc.returncode != 0 and not proc.stdout:
            raise OSError(f"journalctl failed ({proc.returncode}): {proc.stderr.strip()[:200]}")
        return parse_journal_json(proc.stdout, cursor)


def parse_journal_json(output: str, cursor: str | None) -> tuple[list[KernelLine], str | None]:
    lines = []
    for raw in output.splitlines():
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        message = entry.get("MESSAGE", "")
        if isinstance(message, list):  # journald gives non-UTF-8 messages as a byte array
            message = bytes(message).decode("utf-8", "replace")
        timestamp = int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6
        lines.append(KernelLine(str(message), timestamp))
        cursor = entry.get("__CURSOR", cursor)
    return lines, cursor


class KmsgKernelLog(KernelLogSource):
    """/dev/kmsg: records are 'prio,seq,usec,flags;message'; the cursor is the last seq."""

    def __init__(self, path: str = "/dev/kmsg"):
        self.path = path

    def boot_id(self) -> str:
        return read_boot_id()

    def read_after(self, cursor: str | None) -> tuple[list[KernelLine], str | None]:
        last_seq = int(cursor) if cursor else -1
        lines = []
        boot_time = _boot_time()
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            for _ in range(1_000_000):  # bounded: the ring buffer holds far fewer records
                try:
                    record = os.read(fd, 8192)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EPIPE:  # overwritten while reading; continue with the next
                        continue
                    raise
                header, _, message = record.decode("utf-8", "replace").partition(";")
                fields = header.split(",")
                if len(fields) < 3:
                    continue
                seq = int(fields[1])
                if seq <= last_seq:
                    continue
                last_seq = seq
                lines.append(KernelLine(message.split("\n", 1)[0], boot_time + int(fields[2]) / 1e6))
        finally:
            os.close(fd)
        return lines, (str(last_seq) if last_seq >= 0 else cursor)


def _boot_time() -> float:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def system_kernel_log() -> KernelLogSource | None:
    """The journal when journalctl exists, else /dev/kmsg when readable, else None."""
    journalctl = shutil.which("journalctl")
    if journalctl:
        return JournalKernelLog(journalctl)
    if os.access("/dev/kmsg", os.R_OK):
        return KmsgKernelLog()
    return None
