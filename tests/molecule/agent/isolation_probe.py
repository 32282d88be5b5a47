"""Kernel isolation under systemd, on a lab node: the Agent core in-process (no RPC), local
backend in systemd mode, kernels as transient units with their own uids. Prints one JSON
object of observations; verify_isolation.yml asserts on them.

Fake GPUs: /dev/nvidia0 and /dev/nvidia1 are made with mknod (char 195:N) by the playbook.
No driver owns major 195 here, so an open() the device cgroup lets through fails with ENXIO,
and one it refuses fails with EPERM: that difference is the device policy at work.
"""

import asyncio
import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gpufleet.agent.config import parse_config
from gpufleet.agent.core import Agent, InvalidKernelRequest
from gpufleet.agent.kernel_fs import PathRefused

OPEN_DEVICE = """import errno, os, sys
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDWR))
        print(path, "opened")
    except OSError as exc:
        print(path, errno.errorcode[exc.errno])
"""


def open_errno(path: str) -> str:
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "opened"


async def main() -> dict:
    root = Path(tempfile.mkdtemp(prefix="gpufleet-iso-", dir="/var/lib"))
    root.chmod(0o711)
    token = root / "token"  # a root-only secret the kernels try to reach
    token.write_text("probe-token")
    token.chmod(0o600)
    config = parse_config({
        "etcd": {"enabled": False},
        "redis": {"addr": "127.0.0.1:1"},
        "agent": {"id": "isolation-probe", "state-dir": str(root / "state"), "local-mode": "systemd",
                  "rpc-listen-addr": "127.0.0.1:1", "kernel-ready-timeout": 60},
        "container": {"port-range": "31500-31540", "scratch-root": str(root / "scratch"),
                      "kernel-uid": 1000, "kernel-uid-range": "61000-61009"},
        "resource": {"gpus": 2, "reserved-cpu": 0, "reserved-mem": 0},
        "rpc": {"curve-auth": False},  # the probe drives the agent's core in-process, not its RPC
        "debug": {"heartbeat-interval": 60},
    })
    agent = Agent(config)
    await agent.start()
    # Root, outside any kernel unit: whether the container itself lets GPU nodes be opened.
    out: dict = {"platform_gpu_open": open_errno("/dev/nvidia0")}
    try:
        a = await agent.create_kernel(gpus=1, cpu=0.5, mem=256 << 20)
        b = await agent.create_kernel(gpus=1, cpu=0.5, mem=256 << 20)
        out["uids"] = [a.identity[0], b.identity[0]]
        out["gpus"] = [a.allocation["gpus"], b.allocation["gpus"]]
        for name, kernel in (("start_a", a), ("start_b", b)):
            out[name] = subprocess.run(["systemctl", "show", "-p", "ExecStart", "-p", "User", "--value",
                                        kernel.container_id], capture_output=True, text=True).stdout
        script = f"python_code=$(cat <<'EOF'\n{OPEN_DEVICE}EOF\n)\n"
        run = await agent.execute(a.kernel_id, "batch", script + '"$PYTHON" -c "$python_code" '
                                  "/dev/nvidia0 /dev/nvidia1 /dev/nvidiactl /dev/sda /dev/null", timeout=60)
        out["devices_a"] = dict(line.split(" ", 1) for line in run["stdout"].splitlines())
        b_config = agent.config.container.scratch_root / b.kernel_id / "config"
        b_pid = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", b.container_id],
                               capture_output=True, text=True, check=True).stdout.strip()
        probe = await agent.execute(a.kernel_id, "batch", f"""
            cat {b_config}/runner.token 2>&1 | head -1
            ls /proc/{b_pid} >/dev/null 2>&1 && echo B-PROC-VISIBLE || echo B-PROC-HIDDEN
            touch /var/lib/escape 2>&1 | head -1
            touch /tmp/own-tmp && echo TMP-OK
            echo $CUDA_VISIBLE_DEVICES
            """, timeout=60)
        out["cross_kernel"] = probe["stdout"].splitlines()
        await agent.execute(a.kernel_id, "batch", f"ln -s {token} leak", timeout=30)
        try:
            await agent.download_file(a.kernel_id, "leak")
            out["symlink_download"] = "READ"
        except PathRefused as exc:
            out["symlink_download"] = f"refused: {exc}"
        try:
            await agent.create_kernel(environ={"NVIDIA_VISIBLE_DEVICES": "all"})
            out["reserved_env"] = "ACCEPTED"
        except InvalidKernelRequest as exc:
            out["reserved_env"] = f"refused: {exc}"
        show = subprocess.run(["systemctl", "show", a.container_id, "-p", "DevicePolicy", "-p", "DeviceAllow",
                               "-p", "ProtectProc", "-p", "User"], capture_output=True, text=True).stdout
        out["unit_properties"] = show.splitlines()
        score = subprocess.run(["systemd-analyze", "security", "--no-pager", a.container_id],
                               capture_output=True, text=True).stdout.strip().splitlines()
        out["kernel_unit_security"] = score[-1] if score else ""
    finally:
        await agent.stop(destroy_kernels=True)
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
    sys.exit(0)
