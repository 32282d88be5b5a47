"""The local backend end to end with real runner processes (subprocess mode)."""

import asyncio
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

import pytest
from agent_helpers import capacity, event_names, make_config
from gpufleet.agent.backends.base import BackendError
from gpufleet.agent.backends.local import LocalBackend
from gpufleet.agent.core import Agent, KernelNotFound, KernelStateError
from gpufleet.agent.protocol.codec import KernelLifecycleEventReason
from gpufleet.agent.resources import ResourceError

pytestmark = pytest.mark.integration


def pid_alive(pid: int) -> bool:
    """Running (a zombie, or a pid gone while we look, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_create_execute_batch_interrupt_destroy(agent):
    record = await agent.create_kernel(gpus=2, cpu=2, mem=1 << 30)
    kid = record.kernel_id
    pid = record.backend_data["pid"]
    assert record.status == "running" and record.container_id == f"pid-{pid}"
    assert record.allocation["gpus"] == [0, 1]
    scratch = agent.config.container.scratch_root / kid
    assert "CUDA_VISIBLE_DEVICES=0,1" in (scratch / "config" / "environ.txt").read_text()
    assert "cuda.device=2" in (scratch / "config" / "resource.txt").read_text()

    # query mode keeps the namespace between calls
    await agent.execute(kid, "query", "counter = 41")
    result = await agent.execute(kid, "query", "counter += 1\nprint(counter)")
    assert (result["status"], result["exit_code"], result["stdout"]) == ("finished", 0, "42\n")
    assert result["console"] == [["stdout", "42\n"], ["stderr", ""]]

    # batch runs a shell command in /home/work with the allocated GPUs visible
    # (numbered in PCI bus order, as NVML numbers the allocation's indices)
    batch = await agent.execute(
        kid, "batch", 'echo "$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER"; pwd; echo oops >&2; exit 3')
    assert batch["stdout"].splitlines() == ["0,1 PCI_BUS_ID", str((scratch / "work").resolve())]
    assert batch["stderr"] == "oops\n" and batch["exit_code"] == 3 and batch["status"] == "error"

    # interrupt a long query; the kernel survives with its state
    running = asyncio.ensure_future(agent.execute(kid, "query", "import time\nwhile True: time.sleep(0.05)"))
    await asyncio.sleep(0.3)
    assert (await agent.interrupt_kernel(kid))["interrupted"] is True
    interrupted = await asyncio.wait_for(running, 5)
    assert interrupted["status"] == "interrupted" and interrupted["exit_code"] == 130
    assert (await agent.execute(kid, "query", "counter"))["stdout"] == "42\n"

    # a batch command past its timeout is stopped
    timed_out = await agent.execute(kid, "batch", "sleep 30", timeout=0.3)
    assert timed_out["status"] == "timeout" and timed_out["exit_code"] == 124

    result = await agent.destroy_kernel(kid)
    assert result["exit_code"] == 0
    assert not pid_alive(pid)
    assert not scratch.exists()
    assert agent.allocator.used() == {"cpu": 0, "mem": 0, "cuda.device": 0}
    assert agent.ports.free_count() == agent.ports.size
    names = event_names(agent)
    assert [n for n in names if n.startswith("kernel_")] == [
        "kernel_preparing", "kernel_creating", "kernel_started", "kernel_terminating", "kernel_terminated"]
    terminated = [args for name, args, _ in agent.events.buffer if name == "kernel_terminated"][0]
    assert terminated == (kid, kid, KernelLifecycleEventReason.USER_REQUESTED, 0)
    with pytest.raises(KernelNotFound):
        await agent.execute(kid, "query", "1")


async def test_kernel_that_exits_by_itself_is_reported_and_freed(agent):
    record = await agent.create_kernel(gpus=1)
    with pytest.raises(KernelStateError):
        await agent.execute(record.kernel_id, "query", "import os; os._exit(7)")
    for _ in range(100):
        if agent.registry.get(record.kernel_id) is None:
            break
        await asyncio.sleep(0.05)
    assert agent.registry.get(record.kernel_id) is None
    terminated = [args for name, args, _ in agent.events.buffer if name == "kernel_terminated"][-1]
    assert terminated[2:] == (KernelLifecycleEventReason.SELF_TERMINATED, 7)
    assert agent.allocator.used()["cuda.device"] == 0 and agent.ports.free_count() == agent.ports.size


async def test_overcommit_is_refused_and_leaves_nothing_behind(agent):
    await agent.create_kernel(gpus=4)
    with pytest.raises(ResourceError, match="cuda.device: requested 1, free 0"):
        await agent.create_kernel(gpus=1)
    assert len(agent.registry) == 1 and agent.ports.free_count() == agent.ports.size - 1
    refused = [(n, a) for n, a, _ in agent.events.buffer][-2:]
    assert [n for n, _ in refused] == ["kernel_preparing", "kernel_terminated"]
    assert refused[1][1][2] == KernelLifecycleEventReason.FAILED_TO_CREATE


async def test_restart_gives_a_fresh_namespace_with_the_same_resources(agent):
    record = await agent.create_kernel(gpus=1, service_ports=2)
    await agent.execute(record.kernel_id, "query", "x = 1")
    again = await agent.restart_kernel(record.kernel_id)
    assert again.kernel_id == record.kernel_id and len(again.ports) == 3
    assert again.allocation["gpus"] == record.allocation["gpus"]
    result = await agent.execute(record.kernel_id, "query", "print('x' in globals())")
    assert result["stdout"] == "False\n"


async def test_agent_restart_adopts_live_kernels_and_reports_dead_ones(tmp_path):
    config = make_config(tmp_path)
    first = Agent(config, capacity=capacity())
    await first.start()
    survivor = await first.create_kernel(gpus=1)
    await first.execute(survivor.kernel_id, "query", "kept = 'yes'")
    doomed = await first.create_kernel(gpus=1)
    await first.stop()  # kernels keep running
    os.killpg(doomed.backend_data["pid"], signal.SIGKILL)
    await asyncio.sleep(0.2)

    second = Agent(config, capacity=capacity())
    await second.start()
    try:
        assert second.registry.get(survivor.kernel_id) is not None
        assert second.registry.get(doomed.kernel_id) is None
        terminated = [a for n, a, _ in second.events.buffer if n == "kernel_terminated"]
        assert terminated == [(doomed.kernel_id, doomed.kernel_id,
                               KernelLifecycleEventReason.TERMINATED_UNKNOWN_CONTAINER, -1)]
        # the adopted kernel kept its state, its GPU and its port
        assert (await second.execute(survivor.kernel_id, "query", "kept"))["stdout"] == "'yes'\n"
        assert second.allocator.used()["cuda.device"] == 1
        assert second.ports.owners()[survivor.ports[0]] == survivor.kernel_id
        assert not (config.container.scratch_root / doomed.kernel_id).exists()
        # an adopted kernel is not the agent's child, yet it is stopped and reported
        await second.destroy_kernel(survivor.kernel_id)
        assert not pid_alive(survivor.backend_data["pid"])
        assert second.allocator.used()["cuda.device"] == 0
    finally:
        await second.stop(destroy_kernels=True)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="switching the kernel's user needs root (and a Python uid 1000 may run)")
async def test_kernels_run_as_the_configured_user(tmp_path):
    scratch_parent = Path(tempfile.mkdtemp(prefix="gpufleet-uid-"))
    scratch_parent.chmod(0o711)  # uid 1000 must reach its scratch, as under /var/lib/gpufleet
    config = make_config(tmp_path, container_uid=1000)
    config.container.scratch_root = scratch_parent / "scratch"
    # The runner is stdlib-only: the system Python runs it (this venv's may sit under /root).
    agent = Agent(config, capacity=capacity(), backend=LocalBackend("subprocess", python="/usr/bin/python3"))
    await agent.start()
    try:
        record = await agent.create_kernel()
        uid = record.identity[0]  # its own, from [container] kernel-uid-range (default 60000-60999)
        assert 60000 <= uid <= 60999 and record.identity == [uid, uid]
        result = await agent.execute(record.kernel_id, "batch", "id -u; id -g; touch mine; stat -c %u mine")
        assert result["stdout"].split() == [str(uid)] * 3
        token = config.container.scratch_root / record.kernel_id / "config" / "runner.token"
        # The agent's file, readable by the kernel's own gid only; the kernel cannot replace it.
        assert (token.stat().st_uid, token.stat().st_gid, token.stat().st_mode & 0o777) == (0, uid, 0o440)
        await agent.upload_file(record.kernel_id, "in/data.txt", "aGk=")
        uploaded = config.container.scratch_root / record.kernel_id / "work" / "in" / "data.txt"
        assert uploaded.stat().st_uid == uid and uploaded.parent.stat().st_uid == uid
        await agent.destroy_kernel(record.kernel_id)
    finally:
        await agent.stop(destroy_kernels=True)
        shutil.rmtree(scratch_parent, ignore_errors=True)


class InjectedFailure(Exception):
    pass


@pytest.mark.slow
async def test_100_cycles_with_injected_failures_leak_nothing(agent):
    initial_free = agent.ports.free_count()
    plan: dict[str, str] = {}

    def fault(stage, kernel_id):
        if plan.get(kernel_id) == stage:
            raise InjectedFailure(stage)

    agent.fault_hook = fault
    outcomes = {"ok": 0, "failed": 0}
    pids = []
    for cycle in range(100):
        kid = f"cycle{cycle}"
        mode = cycle % 5
        blocker = None
        if mode in (1, 2, 3):
            plan[kid] = {1: "prepare", 2: "create", 3: "started"}[mode]
        elif mode == 4 and cycle % 10 == 9:
            # the pool's lowest port is taken by someone else: the pool skips it
            blocker = socket.socket()
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            blocker.bind(("127.0.0.1", agent.ports.low))
            blocker.listen()
        try:
            record = await agent.create_kernel(kernel_id=kid, gpus=cycle % 3, service_ports=cycle % 2)
            pids.append(record.backend_data["pid"])
            if blocker is not None:
                assert agent.ports.low not in record.ports
            if cycle % 7 == 0:
                assert (await agent.execute(kid, "query", "print(6 * 7)"))["stdout"] == "42\n"
            await agent.destroy_kernel(kid)
            outcomes["ok"] += 1
        except (InjectedFailure, BackendError):
            outcomes["failed"] += 1
        finally:
            if blocker is not None:
                blocker.close()
        assert agent.allocator.used() == {"cpu": 0, "mem": 0, "cuda.device": 0}, f"cycle {cycle}"
        assert agent.ports.free_count() == initial_free, f"cycle {cycle}"
    # 60 injected failures (modes 1-3); the 10 cycles with a pool port bound elsewhere succeed
    assert outcomes == {"ok": 40, "failed": 60}
    assert len(agent.registry) == 0
    assert list(agent.config.container.scratch_root.iterdir()) == []
    assert not [pid for pid in pids if pid_alive(pid)]
    failures = [a for n, a, _ in agent.events.buffer
                if n == "kernel_terminated" and a[2] != KernelLifecycleEventReason.USER_REQUESTED]
    assert failures and all(a[2] == KernelLifecycleEventReason.FAILED_TO_START for a in failures)
