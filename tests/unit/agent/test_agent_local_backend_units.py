from pathlib import Path

from gpufleet.agent.backends.base import kernel_environ
from gpufleet.agent.backends.local import kernel_environment, runner_argv, systemd_run_argv, unit_name
from gpufleet.agent.registry import KernelRecord


def record(gpus=(1, 3), cpu=1.5, mem=2 << 30, minors=None):
    allocation = {"kernel_id": "abc123", "cpu": cpu, "mem": mem, "gpus": list(gpus)}
    if minors is not None:
        allocation["gpu_minors"] = list(minors)
    return KernelRecord(kernel_id="abc123", session_id="sess", status="creating", allocation=allocation,
                        ports=[30000], environ={"EXTRA": "1"})


def test_systemd_run_argv_carries_limits_and_gpus():
    rec = record()
    env = kernel_environment(kernel_environ(rec, "agent-1", cuda=True), Path("/scratch/abc123/work"))
    command = runner_argv("/opt/gpufleet/bin/python", Path("/scratch/abc123/config/runner.py"), 30000,
                          Path("/scratch/abc123/config/runner.token"), Path("/scratch/abc123/work"))
    argv = systemd_run_argv(rec, env, command, Path("/scratch/abc123/work"), Path("/scratch/k.log"))
    assert argv[0] == "systemd-run"
    assert "--unit=gpufleet-kernel-abc123.service" in argv
    assert "--property=CPUQuota=150%" in argv
    assert f"--property=MemoryMax={2 << 30}" in argv
    assert "--setenv=CUDA_VISIBLE_DEVICES=1,3" in argv
    assert "--setenv=EXTRA=1" in argv
    assert "--working-directory=/scratch/abc123/work" in argv
    # The command comes after "--", run by the agent's own interpreter (absolute path).
    tail = argv[argv.index("--") + 1:]
    assert tail[0] == "/opt/gpufleet/bin/python" and tail[2].endswith("runner.py")
    assert tail[tail.index("--port") + 1] == "30000"
    assert unit_name("abc123") == "gpufleet-kernel-abc123.service"


def test_no_gpus_means_an_empty_cuda_visible_devices():
    env = kernel_environment(kernel_environ(record(gpus=()), "agent-1", cuda=True), Path("/w"))
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["BACKENDAI_KERNEL_ID"] == "abc123" and env["HOME"] == "/w"
    assert env["BACKENDAI_AGENT_ID"] == "agent-1"


def test_the_agents_keys_win_over_the_requests():
    rec = record()
    rec.environ = {"BACKENDAI_KERNEL_ID": "forged", "BACKENDAI_AGENT_ID": "forged", "HOME": "/etc", "X": "1"}
    env = kernel_environment(kernel_environ(rec, "agent-1", cuda=True), Path("/w"))
    assert (env["BACKENDAI_KERNEL_ID"], env["BACKENDAI_AGENT_ID"], env["X"]) == ("abc123", "agent-1", "1")
    # a pod's environment has no CUDA_VISIBLE_DEVICES: the runtime mounts only its GPUs
    assert "CUDA_VISIBLE_DEVICES" not in kernel_environ(rec, "agent-1", cuda=False)


def test_fractional_cpu_rounds_to_at_least_one_percent():
    argv = systemd_run_argv(record(cpu=0.001), {}, ["x"], Path("/w"), Path("/l"))
    assert "--property=CPUQuota=1%" in argv


def test_kernels_get_their_own_uid_and_no_new_privileges():
    argv = systemd_run_argv(record(), {}, ["x"], Path("/w"), Path("/l"), owner=(1000, 1001),
                            owner_is_user=True)
    assert {"--uid=1000", "--gid=1001", "--property=NoNewPrivileges=yes"} <= set(argv)
    as_agent = systemd_run_argv(record(), {}, ["x"], Path("/w"), Path("/l"))
    assert not [a for a in as_agent if a.startswith("--uid")]


def test_kernel_unit_is_sandboxed_and_gets_only_its_gpu_devices():
    argv = systemd_run_argv(record(gpus=(1, 3)), {}, ["x"], Path("/var/lib/s/k/work"), Path("/l"),
                            owner=(60001, 60001), owner_is_user=True)
    props = {a.removeprefix("--property=") for a in argv if a.startswith("--property=")}
    for expected in ("ProtectProc=invisible", "ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes",
                     "RestrictSUIDSGID=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
                     "ProtectKernelLogs=yes", "SystemCallFilter=@system-service", "DevicePolicy=closed",
                     "ReadWritePaths=/var/lib/s/k/work", "ProtectHome=yes", "CapabilityBoundingSet="):
        assert expected in props, expected
    assert sorted(p for p in props if p.startswith("DeviceAllow=")) == sorted(
        f"DeviceAllow={d} rw" for d in ("/dev/nvidia1", "/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-uvm",
                                        "/dev/nvidia-uvm-tools"))
    # The device nodes are the GPUs' minor numbers; CUDA_VISIBLE_DEVICES keeps the indices.
    by_minor = systemd_run_argv(record(gpus=(1, 3), minors=(6, 0)), {"CUDA_VISIBLE_DEVICES": "1,3"}, ["x"],
                                Path("/w"), Path("/l"))
    assert sorted(a for a in by_minor if a.startswith("--property=DeviceAllow=")) == sorted(
        f"--property=DeviceAllow={d} rw" for d in ("/dev/nvidia6", "/dev/nvidia0", "/dev/nvidiactl",
                                                   "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"))
    assert "--setenv=CUDA_VISIBLE_DEVICES=1,3" in by_minor
    no_gpu = systemd_run_argv(record(gpus=()), {}, ["x"], Path("/w"), Path("/l"))
    assert "--property=DevicePolicy=closed" in no_gpu and not [a for a in no_gpu if "DeviceAllow" in a]


def test_a_kernel_uid_without_an_account_is_taken_by_setpriv_with_no_capabilities_left():
    argv = systemd_run_argv(record(), {}, ["python", "runner.py"], Path("/w"), Path("/l"),
                            owner=(60005, 60005),
                            owner_is_user=False)
    assert not [a for a in argv if a.startswith("--uid")]
    tail = argv[argv.index("--") + 1:]
    assert tail[:7] == ["setpriv", "--reuid=60005", "--regid=60005", "--clear-groups", "--inh-caps=-all",
                        "--bounding-set=-all", "--"] and tail[7:] == ["python", "runner.py"]
