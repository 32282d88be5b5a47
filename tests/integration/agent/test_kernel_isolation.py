"""Kernels attack the agent and each other, for real: root agent, kernels as their own uids.

The agent is driven in-process (gpufleet.agent.core.Agent), local backend in subprocess
mode; each kernel's code runs as the uid the agent gave it. Every attack must fail with the
specific refusal asserted here. The device-policy attack (a /dev/nvidiaN not given) needs
systemd units: it runs in the `agent` molecule scenario (verify_isolation.yml).
"""

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from agent_helpers import capacity, make_config
from gpufleet.agent.backends.local import LocalBackend
from gpufleet.agent.core import RESERVED_ENV_KEYS, Agent, InvalidKernelRequest, KernelStateError
from gpufleet.agent.kernel_fs import KernelFileError, PathRefused

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                       reason="kernels as other uids need a root agent (and a system Python they may run)"),
]

SECRET = "ROOT-ONLY-SECRET-7f3a"
RACE_ITERATIONS = 2000


@pytest.fixture
async def root_agent(tmp_path):
    """A root agent whose kernels get uids of their own (the default kernel-uid-range)."""
    parent = Path(tempfile.mkdtemp(prefix="gpufleet-iso-"))
    parent.chmod(0o711)  # kernels must reach their own scratch, as under /var/lib
    config = make_config(tmp_path, container_uid=1000)
    config.container.scratch_root = parent / "scratch"
    config.container.kernel_uid_range = (60100, 60199)
    agent = Agent(config, capacity=capacity(),
                  backend=LocalBackend("subprocess", python="/usr/bin/python3"))
    await agent.start()
    secret_dir = parent / "root-secret"
    secret_dir.mkdir(mode=0o700)
    (secret_dir / "secret.txt").write_text(SECRET)
    (secret_dir / "secret.txt").chmod(0o600)
    agent.test_secret_dir = secret_dir
    yield agent
    await agent.stop(destroy_kernels=True)
    shutil.rmtree(parent, ignore_errors=True)
    # Even when a test failed half-way: nothing of the test's kernel uids survives it.
    for pid in [p for p in os.listdir("/proc") if p.isdigit() and 60100 <= (_uid_of(p) or 0) <= 60199]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


async def run(agent, kid, command):
    return await agent.execute(kid, "batch", command, timeout=60)


def work_dir(agent, kid) -> Path:
    return agent.config.container.scratch_root / kid / "work"


async def test_each_kernel_has_its_own_uid_and_cannot_reach_another(root_agent):
    agent = root_agent
    a = await agent.create_kernel()
    b = await agent.create_kernel()
    uid_a, uid_b = a.identity[0], b.identity[0]
    assert uid_a != uid_b and 60100 <= min(uid_a, uid_b) and max(uid_a, uid_b) <= 60199
    b_pid = b.backend_data["pid"]
    b_config = agent.config.container.scratch_root / b.kernel_id / "config"
    out = await run(agent, a.kernel_id, f"""
        id -u
        cat {b_config}/runner.token 2>&1 || echo TOKEN-REFUSED
        cat /proc/{b_pid}/environ 2>&1 || echo ENVIRON-REFUSED
        tr '\\0' ' ' < /proc/{b_pid}/cmdline
        echo
        kill -0 {b_pid} 2>&1 || echo SIGNAL-REFUSED
        ls {work_dir(agent, b.kernel_id)} 2>&1 || echo WORK-REFUSED
        ls {b_config} 2>&1 || echo CONFIG-REFUSED
        """)
    lines = out["stdout"]
    assert lines.splitlines()[0] == str(uid_a)
    for refusal in ("TOKEN-REFUSED", "ENVIRON-REFUSED", "SIGNAL-REFUSED", "WORK-REFUSED", "CONFIG-REFUSED"):
        assert refusal in lines, (refusal, lines, out["stderr"])
    assert "Permission denied" in lines and "Operation not permitted" in lines
    # The token is in no argv and no environment; B's runner refuses A's guesses.
    assert b.runner_token not in lines and b.runner_token not in out["stderr"]
    assert b.runner_token not in Path(f"/proc/{b_pid}/cmdline").read_bytes().decode(errors="replace")
    assert b.runner_token not in Path(f"/proc/{b_pid}/environ").read_bytes().decode(errors="replace")
    probe = await run(agent, a.kernel_id, textwrap.dedent(f"""
        "$PYTHON" - <<'EOF'
        import json, socket
        s = socket.create_connection(("127.0.0.1", {b.runner_port}))
        s.sendall(json.dumps({{"op": "execute", "token": "guess", "code": "1"}}).encode() + b"\\n")
        print(s.makefile().readline().strip())
        EOF"""))
    assert probe["stdout"].strip() == '{"error": "unauthorized"}'
    # A's own token and config stay readable to A only, and nothing of them is writable.
    a_config = agent.config.container.scratch_root / a.kernel_id / "config"
    own = await run(agent, a.kernel_id, f"""
        cat {a_config}/runner.token >/dev/null && echo OWN-OK
        echo x > {a_config}/runner.token 2>&1 || echo RO
        ln -sf /etc/shadow {a_config}/kernel.log 2>&1 || echo NOLINK
        """)
    assert own["stdout"].split("\n")[0] == "OWN-OK" and "RO" in own["stdout"] and "NOLINK" in own["stdout"]
    # Destroy frees the uid and kills what the kernel left behind outside its session.
    await run(agent, a.kernel_id, "setsid sleep 300 >/dev/null 2>&1 < /dev/null &")
    await agent.destroy_kernel(a.kernel_id)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid_a]
    assert uid_a not in agent.identities.owners()


async def test_a_kernel_that_exits_by_itself_leaves_no_process_for_the_next_owner_of_its_uid(root_agent):
    import asyncio

    agent = root_agent
    record = await agent.create_kernel()
    uid = record.identity[0]
    # A daemon outside the kernel's session, then the runner itself exits.
    await run(agent, record.kernel_id, "setsid sleep 300 >/dev/null 2>&1 < /dev/null &")
    with pytest.raises(KernelStateError, match="closed the connection"):
        await agent.execute(record.kernel_id, "query", "import os; os._exit(0)", timeout=30)
    for _ in range(200):  # the supervisor reports the exit and frees the uid
        if uid not in agent.identities.owners() and len(agent.registry) == 0:
            break
        await asyncio.sleep(0.05)
    assert uid not in agent.identities.owners()
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid]


def _uid_of(pid: str) -> int | None:
    """The real uid of a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
    except OSError:
        return None
    return None if fields["State"].strip().startswith("Z") else int(fields["Uid"].split()[0])


async def test_symlinks_planted_in_every_kernel_directory_are_refused(root_agent):
    agent = root_agent
    record = await agent.create_kernel()
    kid, secret = record.kernel_id, agent.test_secret_dir / "secret.txt"
    # The kernel owns work/ and what it makes below it: a link in each, to root's files.
    out = await run(agent, kid, f"""
        mkdir -p sub/deeper
        ln -s {secret} file-link
        ln -s {agent.test_secret_dir} dir-link
        ln -s {secret} sub/file-link
        ln -s {agent.test_secret_dir} sub/deeper/dir-link
        ln -s /etc/shadow sub/deeper/shadow
        ln {secret} hard-link 2>/dev/null || echo NO-HARDLINK
        echo done""")
    assert out["stdout"].strip().endswith("done"), out
    for path in ("file-link", "sub/file-link", "sub/deeper/shadow", "/home/work/file-link"):
        with pytest.raises(PathRefused, match="symlink"):
            await agent.download_file(kid, path)
    for path in ("dir-link/secret.txt", "sub/deeper/dir-link/secret.txt"):
        with pytest.raises(PathRefused, match="symlink"):
            await agent.download_file(kid, path)
        with pytest.raises(PathRefused, match="symlink"):
            await agent.upload_file(kid, path, base64.b64encode(b"owned").decode())
        with pytest.raises(PathRefused, match="symlink"):
            await agent.upload_file(kid, path.replace("secret.txt", "new/file"), "eA==")
    for path in ("dir-link", "sub/deeper/dir-link"):
        with pytest.raises(PathRefused, match="symlink"):
            await agent.list_files(kid, path)
    listing = await agent.list_files(kid, "sub/deeper")
    assert {f["name"]: f["type"] for f in listing["files"]} == {"dir-link": "symlink", "shadow": "symlink"}
    # Uploading onto a link replaces the link; the root file behind it is untouched.
    await agent.upload_file(kid, "file-link", base64.b64encode(b"mine").decode())
    assert secret.read_text() == SECRET and secret.stat().st_uid == 0
    assert (work_dir(agent, kid) / "file-link").read_bytes() == b"mine"
    assert sorted(os.listdir(agent.test_secret_dir)) == ["secret.txt"]
    logs = (await agent.get_logs(kid))["logs"]
    assert SECRET not in logs and "runner ready" in logs


async def test_rename_race_against_upload_download_list(root_agent):
    """The kernel swaps a directory and a symlink to a root-only directory (renameat2
    RENAME_EXCHANGE) in a loop while the agent uploads, downloads and lists through it."""
    agent = root_agent
    record = await agent.create_kernel()
    kid, uid = record.kernel_id, record.identity[0]
    work = work_dir(agent, kid)
    await run(agent, kid, f"mkdir d && echo kernel-own > d/secret.txt && ln -s {agent.test_secret_dir} s")
    stop = work / "stop"
    racer_src = textwrap.dedent(f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        AT_FDCWD, RENAME_EXCHANGE = -100, 2
        n = 0
        while not os.path.exists({str(stop)!r}):
            if libc.renameat2(AT_FDCWD, b"{work}/d", AT_FDCWD, b"{work}/s", RENAME_EXCHANGE) == 0:
                n += 1
        print(n)
        """)
    # The kernel's own code, as the kernel's own uid (what a batch job in it would run).
    racer = subprocess.Popen(["/usr/bin/python3", "-c", racer_src], user=uid, group=uid, extra_groups=[],
                             stdout=subprocess.PIPE, text=True, cwd=work)
    outcomes = {"ok": 0, "refused": 0, "missing": 0}
    try:
        for i in range(RACE_ITERATIONS):
            for op in ("upload", "download", "list"):
                try:
                    if op == "upload":
                        await agent.upload_file(kid, f"d/up{i % 7}.txt", base64.b64encode(b"u").decode())
                    elif op == "download":
                        reply = await agent.download_file(kid, "d/secret.txt")
                        assert base64.b64decode(reply["content_b64"]) == b"kernel-own\n"
                    else:
                        names = {f["name"] for f in (await agent.list_files(kid, "d"))["files"]}
                        assert "secret.txt" in names
                        assert not names - {"secret.txt"} - {f"up{j}.txt" for j in range(7)}
                    outcomes["ok"] += 1
                except PathRefused:
                    outcomes["refused"] += 1
                except FileNotFoundError:
                    outcomes["missing"] += 1  # caught between the two renames of an exchange
    finally:
        stop.touch()
        swaps = int(racer.communicate(timeout=60)[0].strip() or 0)
    assert swaps >= RACE_ITERATIONS, f"the racer swapped only {swaps} times"
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0, outcomes  # both states were met
    # Nothing reached the root-only directory: no file written, none chowned, none read.
    assert sorted(os.listdir(agent.test_secret_dir)) == ["secret.txt"]
    secret = agent.test_secret_dir / "secret.txt"
    assert secret.read_text() == SECRET
    assert (secret.stat().st_uid, secret.stat().st_mode & 0o777) == (0, 0o600)
    assert agent.test_secret_dir.stat().st_uid == 0


async def test_reserved_environment_keys_are_refused(root_agent):
    agent = root_agent
    keys = sorted(RESERVED_ENV_KEYS) + ["NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
                                        "NVIDIA_REQUIRE_CUDA", "NVIDIA_MIG_CONFIG_DEVICES", "GPUFLEET_RUNNER"]
    for key in keys:
        with pytest.raises(InvalidKernelRequest, match=rf"^environ: {key} is reserved"):
            await agent.create_kernel(gpus=0, environ={key: "0,1,2,3"})
    for bad_id in ("../../etc", "a/b", "nl\n", "", "-x", "x" * 65, ".."):
        with pytest.raises(InvalidKernelRequest, match="is not a valid id"):
            await agent.create_kernel(kernel_id=bad_id)
        with pytest.raises(InvalidKernelRequest, match="is not a valid id"):
            await agent.create_kernel(session_id=bad_id)
    for bad, message in (({"A=B": "x"}, "not a valid variable name"),
                         ({"X": "a\nCUDA_VISIBLE_DEVICES=0"}, "newline"), ({"X": 1}, "must map a string")):
        with pytest.raises(InvalidKernelRequest, match=message):
            await agent.create_kernel(environ=bad)
    assert len(agent.registry) == 0 and agent.allocator.used()["cuda.device"] == 0
    assert not [n for n, _, _ in agent.events.buffer if n.startswith("kernel_")]  # nothing was started
    # A kernel given no GPU sees none, whatever it does with its own environment. The ids a
    # Backend.AI manager sends are the agent's to set: a request's values for them lose.
    record = await agent.create_kernel(gpus=0, environ={"MY_SETTING": "1", "BACKENDAI_KERNEL_ID": "other",
                                                        "BACKENDAI_ACCESS_KEY": "AKIA"})
    probe = 'echo "[$CUDA_VISIBLE_DEVICES][$MY_SETTING][$BACKENDAI_KERNEL_ID][$BACKENDAI_ACCESS_KEY]"'
    out = await run(agent, record.kernel_id, probe)
    assert out["stdout"] == f"[][1][{record.kernel_id}][AKIA]\n"


async def test_hostile_file_requests_get_clear_errors(root_agent):
    agent = root_agent
    kid = (await agent.create_kernel()).kernel_id
    await run(agent, kid, "mkdir adir")
    cases = [
        (agent.upload_file(kid, "adir", "eA=="), KernelFileError, "adir is a directory"),
        (agent.upload_file(kid, "x" * 300, "eA=="), KernelFileError, "longer than 255 bytes"),
        (agent.upload_file(kid, "bad-\udcff", "eA=="), KernelFileError, "not valid UTF-8"),
        (agent.upload_file(kid, "big", "A" * (12 << 20)), KernelFileError, "larger than"),
        (agent.upload_file(kid, "../escape", "eA=="), PathRefused, "contains '..'"),
        (agent.upload_file(kid, "/etc/x", "eA=="), PathRefused, "outside the kernel's scratch"),
        (agent.download_file(kid, "adir"), KernelFileError, "is a directory"),
        (agent.list_files(kid, "nope"), FileNotFoundError, "nope does not exist"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            await call
    await run(agent, kid, "head -c 9000000 /dev/zero > huge")
    with pytest.raises(KernelFileError, match="huge is larger than"):
        await agent.download_file(kid, "huge")


async def test_port_taken_at_bind_time_gets_another_port(root_agent, monkeypatch):
    """The pool's probe saw the port free; someone binds it before the runner: retried elsewhere."""
    import socket

    agent = root_agent
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", agent.ports.low))
    blocker.listen()
    monkeypatch.setattr(agent.ports, "probe", lambda port: True)  # the race: free when probed
    try:
        started = time.monotonic()
        record = await agent.create_kernel()
    finally:
        blocker.close()
    assert record.ports[0] != agent.ports.low
    assert agent.ports.low not in agent.ports.owners()
    assert time.monotonic() - started < agent.config.agent.kernel_ready_timeout


async def test_failed_start_returns_the_kernels_own_last_log_lines(root_agent, caplog):
    agent = root_agent
    agent.backend.python = "/bin/sh"  # runs runner.py as a shell script: it fails with its own words
    with pytest.raises(Exception, match="last lines of its log") as failure:
        await agent.create_kernel()
    assert "runner.py" in str(failure.value)  # the shell's own error message, naming the file
    assert "last log lines" in caplog.text and "runner.py" in caplog.text
    assert len(agent.registry) == 0 and agent.identities.owners() == {}
