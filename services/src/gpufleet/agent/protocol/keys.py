"""CURVE keys in ZeroMQ's certificate format (what `zmq.auth.create_certificates` writes).

Backend.AI 23.09 names them in agent.toml: `[agent] rpc-auth-agent-keypair` (the
agent's certificate with its secret key) and `rpc-auth-manager-public-key` (the
manager's public certificate); `backend.ai mgr generate-rpc-keypair` writes the same format.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq.auth


class KeyFileError(ValueError):
    pass


def load_public_key(path: str | os.PathLike) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a readable ZeroMQ certificate ({exc})") from None
    if not public:
        raise KeyFileError(f"{path}: no public-key in the certificate")
    return public


def load_keypair(path: str | os.PathLike, require_root_owner: bool = False) -> tuple[bytes, bytes]:
    """(public, secret) from a secret certificate that only its owner can read."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise KeyFileError(f"{path}: has mode {stat.S_IMODE(info.st_mode):04o}; it must be 0600 (owner only)")
    if require_root_owner and info.st_uid != 0:
        raise KeyFileError(f"{path}: must be owned by root")
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a readable ZeroMQ certificate ({exc})") from None
    if not public or not secret:
        raise KeyFileError(f"{path}: needs both public-key and secret-key (the *.key_secret file)")
    return public, secret


def create_keypair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write <name>.key (public) and <name>.key_secret (0600) into directory; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(os.fspath(directory), name)
    finally:
        os.umask(old_umask)
    os.chmod(public, 0o644)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)
