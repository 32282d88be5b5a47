"""Kernel backends: local (systemd units or subprocesses) and kubernetes (pods)."""
