"""File operations the agent (root) does on a kernel's behalf, immune to symlinks and races.

A kernel owns its work directory and everything in it, and may rename, swap or
replace any of it at any moment. So nothing here ever resolves a path the kernel
could change: every step is relative to a directory file descriptor, one
component at a time, with ``O_NOFOLLOW`` (``..``, absolute paths and symlinks are
refused - the same rule as openat2's RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), and
ownership is given with ``fchown`` on the open descriptor, never by path.

An upload is written to a fresh file (``O_CREAT | O_EXCL``) that is then renamed
over the target inside the same directory descriptor, so an existing file - or
a hard link the kernel planted - is replaced, never written through. A download
reads only a regular file the kernel itself owns (a hard link to a root file is
owned by root). Bad input is a :class:`KernelFileError` (a ``ValueError``) or a
:class:`PathRefused` (a ``PermissionError``) with a message that says what to fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NAME_MAX = 255  # bytes per path component (Linux)
PATH_MAX = 4096
MAX_LIST_ENTRIES = 10_000
KERNEL_PREFIX = "/home/work"  # the work directory as the kernel sees it

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class KernelFileError(ValueError):
    """The request cannot be done as asked (a directory as a file, a name too long, ...)."""


class PathRefused(PermissionError):
    """The path leaves the kernel's directory (.., absolute, a symlink on the way)."""


Owner = tuple[int, int] | None


def split_path(path: str) -> list[str]:
    """A kernel-supplied path as components below the work directory (kernel's view accepted)."""
    if not isinstance(path, str):
        raise KernelFileError("path must be a string")
    if "\x00" in path:
        raise PathRefused("path contains a NUL byte")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise KernelFileError("path is not valid UTF-8") from None
    if len(encoded) > PATH_MAX:
        raise KernelFileError(f"path longer than {PATH_MAX} bytes")
    if path == KERNEL_PREFIX or path.startswith(KERNEL_PREFIX + "/"):
        path = path[len(KERNEL_PREFIX):]
    elif path.startswith("/"):
        raise PathRefused(f"path {path!r} is outside the kernel's scratch")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for part in parts:
        if part == "..":
            raise PathRefused(f"path {path!r} contains '..'")
        if len(part.encode("utf-8")) > NAME_MAX:
            raise KernelFileError(f"name {part[:40]!r}... is longer than {NAME_MAX} bytes")
    return parts


def _refusal(exc: OSError, where: str) -> Exception:
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return PathRefused(f"{where} is a symlink (refused)")
    if exc.errno == errno.ENOTDIR:
        return KernelFileError(f"{where} is not a directory")
    if exc.errno == errno.ENOENT:
        return FileNotFoundError(f"{where} does not exist")
    if exc.errno == errno.EISDIR:
        return KernelFileError(f"{where} is a directory")
    if exc.errno == errno.ENAMETOOLONG:
        return KernelFileError(f"{where}: name too long")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PathRefused(f"{where}: permission denied")
    return KernelFileError(f"{where}: {os.strerror(exc.errno or 0)}")


def _refusal_at(parent_fd: int, name: str, exc: OSError, where: str) -> Exception:
    """As _refusal, but a symlink is named as one (O_DIRECTORY|O_NOFOLLOW on a link says ENOTDIR)."""
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        with contextlib.suppress(OSError):
            mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                return PathRefused(f"{where} is a symlink (refused)")
            if stat.S_ISDIR(mode) or exc.errno == errno.ELOOP:
                # Not a directory when opened, one now: swapped under us (a rename race).
                return PathRefused(f"{where} changed while it was opened (refused)")
    return _refusal(exc, where)


def open_dir(parent_fd: int, name: str, where: str) -> int:
    """openat(parent, name, O_DIRECTORY | O_NOFOLLOW): a real directory or a refusal."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        raise _refusal_at(parent_fd, name, exc, where) from None


@contextlib.contextmanager
def opened_root(path: Path) -> Iterator[int]:
    """The agent's own directory (never one a kernel can change) as a descriptor."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def walk(root_fd: int, parts: list[str], *, create: bool = False, owner: Owner = None,
         mode: int = 0o755) -> int:
    """A descriptor of the directory `parts` below root_fd; with `create`, missing ones are made
    (and given to `owner` through fchown on their descriptor). The caller closes it."""
    fd = os.dup(root_fd)
    try:
        for depth, part in enumerate(parts):
            where = "/".join(parts[: depth + 1])
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise FileNotFoundError(f"{where} does not exist") from None
                with contextlib.suppress(FileExistsError):  # the kernel made it first: opened below
                    os.mkdir(part, mode, dir_fd=fd)
                child = open_dir(fd, part, where)
                try:
                    give(child, owner)
                except BaseException:
                    os.close(child)
                    raise
            except OSError as exc:
                raise _refusal_at(fd, part, exc, where) from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def give(fd: int, owner: Owner) -> None:
    if owner is not None:
        os.fchown(fd, owner[0], owner[1])


def make_dir(parent_fd: int, name: str, mode: int, owner: Owner = None, group: int | None = None) -> int:
    """A fresh directory (it must not exist) with exactly `mode`, owned by `owner` or root:`group`."""
    os.mkdir(name, mode, dir_fd=parent_fd)
    fd = open_dir(parent_fd, name, name)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        elif group is not None:
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)  # exactly this mode, whatever the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_new(dir_fd: int, name: str, data: bytes, mode: int, group: int | None = None,
              owner: Owner = None) -> None:
    """Create `name` (replacing any old one by rename, never writing through it)."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            elif group is not None:
                os.fchown(fd, -1, group)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def upload(work_fd: int, path: str, data: bytes, owner: Owner) -> int:
    """Write `data` at `path` below the work directory as a file the kernel owns; the size."""
    parts = split_path(path)
    if not parts:
        raise KernelFileError("upload needs a file name, not the work directory itself")
    parent = walk(work_fd, parts[:-1], create=True, owner=owner)
    try:
        name = parts[-1]
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                raise KernelFileError(f"{path} is a directory")
        try:
            write_new(parent, name, data, 0o644, owner=owner)
        except IsADirectoryError:  # swapped for a directory since the check
            raise KernelFileError(f"{path} is a directory") from None
        except OSError as exc:
            raise _refusal(exc, path) from None
    finally:
        os.close(parent)
    return len(data)


def download(work_fd: int, path: str, owner: Owner, max_bytes: int) -> bytes:
    """The content of a regular file the kernel owns at `path`, at most max_bytes."""
    parts = split_path(path)
    if not parts:
        raise KernelFileError(f"{path or '.'} is a directory, not a file")
    parent = walk(work_fd, parts[:-1])
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=parent)
        except OSError as exc:
            raise _refusal_at(parent, parts[-1], exc, path) from None
    finally:
        os.close(parent)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise KernelFileError(f"{path} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise KernelFileError(f"{path} is not a regular file")
        if owner is not None and info.st_uid != owner[0]:
            # A hard link to a file of someone else (root's, another kernel's) is not the kernel's.
            raise PathRefused(f"{path} is not owned by the kernel")
        if info.st_size > max_bytes:
            raise KernelFileError(f"{path} is larger than {max_bytes} bytes")
        chunks, remaining = [], max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # grew while we read
            raise KernelFileError(f"{path} is larger than {max_bytes} bytes")
        return data
    finally:
        os.close(fd)


def display_name(raw: bytes) -> str:
    """A file name as text: UTF-8, or with undecodable bytes shown as \\xNN."""
    return raw.decode("utf-8", "backslashreplace")


def list_dir(work_fd: int, path: str) -> dict[str, Any]:
    """Entries of a directory below the work directory (symlinks listed, never followed)."""
    parts = split_path(path)
    fd = walk(work_fd, parts)
    entries: list[dict[str, Any]] = []
    truncated = False
    try:
        # scandir on a descriptor: its stat() calls are fstatat relative to it, never by path.
        with os.scandir(fd) as scan:
            for entry in scan:
                if len(entries) >= MAX_LIST_ENTRIES:
                    truncated = True
                    break
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed while we listed
                kind = ("dir" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode)
                        else "symlink" if stat.S_ISLNK(info.st_mode) else "other")
                raw = os.fsencode(entry.name)
                item = {"name": display_name(raw), "type": kind, "size": info.st_size,
                        "mode": oct(info.st_mode & 0o7777), "mtime": info.st_mtime}
                if display_name(raw).encode("utf-8", "surrogatepass") != raw:
                    item["name_not_utf8"] = True
                entries.append(item)
    finally:
        os.close(fd)
    entries.sort(key=lambda e: e["name"])
    return {"files": entries, "truncated": truncated}


def read_tail(dir_path: Path, name: str, tail_bytes: int) -> bytes:
    """The last bytes of an agent-owned file (the kernel's log), opened without following links."""
    try:
        with opened_root(dir_path) as dir_fd:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return b""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return b""
        os.lseek(fd, max(0, info.st_size - tail_bytes), os.SEEK_SET)
        return os.read(fd, tail_bytes)
    finally:
        os.close(fd)


def remove_tree(parent: Path, name: str) -> None:
    """Remove parent/name; shutil.rmtree with dir_fd walks by descriptor (symlinks unlinked,
    never followed). Errors other than 'already gone' are raised."""
    try:
        with opened_root(parent) as parent_fd:
            shutil.rmtree(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return


class KernelScratch:
    """`<scratch-root>/<kid>/`: `work/` is the kernel's (its home, /home/work, mode 0700, its
    uid); the rest is the agent's and the kernel cannot write it: `<kid>/` itself (root, 0711)
    and `config/` (root:<kernel gid>, 0750) with environ.txt, resource.txt, runner.py, the
    runner token (0440, readable by the kernel's gid only) and kernel.log (the runner's console,
    0640, written by the agent or by systemd, never opened by path inside work/)."""

    LOG_NAME = "kernel.log"

    def __init__(self, root: Path, kernel_id: str, owner: Owner = None) -> None:
        self.root = Path(root)
        self.kernel_id = kernel_id
        self.base = self.root / kernel_id
        self.work = self.base / "work"
        self.config = self.base / "config"
        self.owner = owner  # (uid, gid) the kernel runs as; None: as the agent itself

    @property
    def group(self) -> int | None:
        return None if self.owner is None else self.owner[1]

    @property
    def log_path(self) -> Path:
        return self.config / self.LOG_NAME

    def create(self, environ: dict[str, str], slots: dict[str, Any], gpu_indices: list[int]) -> None:
        """Make the tree from scratch (a left-over one of the same id is removed first)."""
        self.remove()
        with opened_root(self.root) as root_fd:
            base_fd = make_dir(root_fd, self.kernel_id, 0o711)
        try:
            os.close(make_dir(base_fd, "work", 0o700, owner=self.owner))
            config_fd = make_dir(base_fd, "config", 0o750, group=self.group)
            try:
                environ_text = "".join(f"{k}={v}\n" for k, v in sorted(environ.items()))
                write_new(config_fd, "environ.txt", environ_text.encode(), 0o640, group=self.group)
                lines = [f"{k}={v}" for k, v in slots.items()]
                lines.append("cuda.device.indices=" + ",".join(str(i) for i in gpu_indices))
                write_new(config_fd, "resource.txt", ("\n".join(lines) + "\n").encode(), 0o640,
                          group=self.group)
            finally:
                os.close(config_fd)
        finally:
            os.close(base_fd)

    def write_runner(self, runner_source: Path, token: str) -> Path:
        """runner.py and runner.token into config/ (readable by the kernel, writable by nobody)."""
        with opened_root(self.config) as config_fd:
            write_new(config_fd, "runner.token", token.encode(), 0o440, group=self.group)
            write_new(config_fd, "runner.py", Path(runner_source).read_bytes(), 0o640, group=self.group)
        return self.config / "runner.py"

    def open_log(self) -> int:
        """The kernel's log for appending (subprocess mode hands this descriptor to the kernel)."""
        with opened_root(self.config) as config_fd:
            fd = os.open(self.LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o640, dir_fd=config_fd)
        if self.group is not None:
            os.fchown(fd, -1, self.group)
        return fd

    def read_log(self, tail_bytes: int = 65536) -> str:
        return read_tail(self.config, self.LOG_NAME, tail_bytes).decode(errors="replace")

    @contextlib.contextmanager
    def work_fd(self) -> Iterator[int]:
        """The work directory as a descriptor, reached through agent-owned directories only."""
        try:
            base = opened_root(self.base)
            base_fd = base.__enter__()
        except FileNotFoundError:
            raise FileNotFoundError(f"kernel {self.kernel_id} has no scratch") from None
        try:
            fd = open_dir(base_fd, "work", "work")
        finally:
            base.__exit__(None, None, None)
        try:
            yield fd
        finally:
            os.close(fd)

    def remove(self) -> None:
        remove_tree(self.root, self.kernel_id)
