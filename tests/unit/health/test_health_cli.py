import json

from click.testing import CliRunner
from gpufleet.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_check_simulated_json_pass(tmp_path):
    result = run("health", "check", "--backend", "simulated", "--faults", str(tmp_path / "f.json"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["schema"] == "gpufleet.io/health-report/v1"
    assert report["status"] == "pass" and report["verdict"] == "PASS"
    assert report["profile"] == "h100-sxm-8" and report["device_count"] == 8
    assert len(report["gpus"]) == 8


def test_check_with_injected_fault_fails_with_exit_3(tmp_path):
    faults = str(tmp_path / "f.json")
    injected = run(
        "health",
        "inject",
        "--faults",
        faults,
        "--node",
        "sim-node-0",
        "--gpu",
        "3",
        "--set",
        "remapped_rows.pending=true",
    )
    assert injected.exit_code == 0, injected.output
    result = run("health", "check", "--backend", "simulated", "--faults", faults, "--json")
    assert result.exit_code == 3
    report = json.loads(result.output)
    assert report["status"] == "fail" and report["verdict"] == "RESET"
    (finding,) = [f for f in report["findings"] if f["severity"] != "PASS"]
    assert finding["check"] == "memory_remap" and finding["gpu"].startswith("3:GPU-")
    assert finding["evidence"]["pending"] is True


def test_check_exit_codes_warn_and_unknown(tmp_path):
    faults = str(tmp_path / "f.json")
    run(
        "health",
        "inject",
        "--faults",
        faults,
        "--node",
        "sim-node-0",
        "--gpu",
        "0",
        "--set",
        "persistence_mode=false",
    )
    assert run("health", "check", "--backend", "simulated", "--faults", faults).exit_code == 1
    run(
        "health",
        "inject",
        "--faults",
        faults,
        "--node",
        "sim-node-0",
        "--clear",
        "--set",
        "nvml_error=DriverNotLoaded",
    )
    result = run("health", "check", "--backend", "simulated", "--faults", faults)
    assert result.exit_code == 4
    assert "unknown" in result.output and "DriverNotLoaded" in result.output


def test_check_injected_xid_and_state_file(tmp_path):
    faults, state = str(tmp_path / "f.json"), str(tmp_path / "state.json")
    run(
        "health",
        "inject",
        "--faults",
        faults,
        "--node",
        "sim-node-0",
        "--gpu",
        "2",
        "--xid",
        "79",
        "--message",
        "GPU has fallen off the bus.",
    )
    args = (
        "health",
        "check",
        "--backend",
        "simulated",
        "--faults",
        faults,
        "--state",
        state,
        "--checks",
        "xid",
    )
    first = run(*args)
    assert first.exit_code == 3 and "Xid 79" in first.output
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["kernel_log"]["cursor"] == "1"
    # Simulated reboot: new boot id, so the Xid is forgotten.
    run("health", "inject", "--faults", faults, "--node", "sim-node-0", "--reboot")
    assert run(*args).exit_code == 0


def test_check_table_and_list(tmp_path):
    result = run("health", "check", "--backend", "simulated", "--faults", str(tmp_path / "f.json"))
    assert result.exit_code == 0
    assert result.output.splitlines()[0].split() == ["SEVERITY", "CHECK", "GPU", "MESSAGE"]
    assert "node sim-node-0: pass" in result.output
    listing = run("health", "check", "--list")
    assert "nvlink" in listing.output and "intensive" in listing.output


def test_check_fleet_spec_and_node(tmp_path):
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        "nodes:\n  a100-0:\n    profile: a100-sxm-8\n  ws:\n    model: NVIDIA RTX 6000 Ada Generation\n"
        "    count: 1\n    architecture: ada\n"
    )
    result = run(
        "health",
        "check",
        "--backend",
        "simulated",
        "--fleet-spec",
        str(spec),
        "--node",
        "a100-0",
        "--faults",
        str(tmp_path / "f.json"),
        "--json",
    )
    assert json.loads(result.output)["profile"] == "a100-sxm-8"
    result = run(
        "health",
        "check",
        "--backend",
        "simulated",
        "--fleet-spec",
        str(spec),
        "--node",
        "ws",
        "--faults",
        str(tmp_path / "f.json"),
        "--json",
    )
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["profile"] == "workstation-1"
    bad = CliRunner().invoke(
        main, ["health", "check", "--backend", "simulated", "--fleet-spec", str(spec), "--node", "nope"]
    )
    assert bad.exit_code == 2 and "not in the fleet spec" in bad.output


def test_xid_command():
    result = run("health", "xid", "79")
    assert result.exit_code == 0
    assert "fallen off the bus" in result.output and "REBOOT" in result.output
    as_json = json.loads(
        run(
            "health",
            "xid",
            "154",
            "--json",
            "--message",
            "GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)",
        ).output
    )
    assert as_json["severity"] == "RESET" and as_json["source"] == "recovery-action"
    as_json = json.loads(run("health", "xid", "54", "--json").output)
    assert as_json["severity"] == "ISOLATE" and as_json["bucket"] == "CHECK_MECHANICALS"


def test_nvml_backend_unavailable_gives_unknown(monkeypatch):
    import pynvml

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    result = run("health", "check", "--backend", "nvml", "--json", "--cost", "lightweight")
    assert result.exit_code == 4
    report = json.loads(result.output)
    assert report["status"] == "unknown" and report["verdict"] == "PASS"
    assert report["unknown"][0]["check"] == "backend"


def test_check_level_runs_dcgm_and_writes_termination_log(tmp_path, monkeypatch):
    """The diagnostics Job's command: --level runs the intensive DCGM check, and the
    verdict lands in the termination log that gpufleet.kube.diagnostics reads."""
    import json

    from click.testing import CliRunner
    from gpufleet.cli import main
    from gpufleet.kube.diagnostics import DEFAULT_COMMAND, verdict

    faults = tmp_path / "faults.json"
    monkeypatch.setenv("GPUFLEET_SIM_FAULTS", str(faults))
    runner = CliRunner()
    assert runner.invoke(main, ["health", "inject", "--faults", str(faults), "--node", "sim-node-0",
                                "--gpu", "0", "--xid", "79"]).exit_code == 0
    log = tmp_path / "termination-log"
    args = DEFAULT_COMMAND[2:]  # what the Job runs after `gpufleet health`
    args = [a if a != "/dev/termination-log" else str(log) for a in args]
    result = runner.invoke(main, ["health", *args, "--backend", "simulated", "--node", "sim-node-0",
                                  "--faults", str(faults), "--json"])
    assert result.exit_code == 3, result.output
    report = json.loads(result.output)
    assert "dcgm_diag" in report["checks"]
    message = json.loads(log.read_text())
    assert message["verdict"] == "fail" and message["severity"] == "REBOOT"
    assert message["findings"][0]["severity"] == "REBOOT"
    assert verdict("failed", log.read_text())["recommendation"] == "reboot"


def test_check_keeps_a_corrupt_state_file_aside_and_says_so(tmp_path, caplog):
    state = tmp_path / "state.json"
    state.write_text('{"version": 1, "counters": ')  # cut short, as a full disk leaves it
    args = ("health", "check", "--backend", "simulated", "--faults", str(tmp_path / "f.json"))
    result = run(*args, "--state", str(state), "--checks", "xid")
    assert result.exit_code == 0, result.output
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(kept) == 1 and kept[0].read_text() == '{"version": 1, "counters": '
    assert json.loads(state.read_text())["version"] == 1  # a fresh state written in its place
    assert any("state file is corrupt" in r.getMessage() for r in caplog.records)


def test_check_with_an_unreadable_state_path_is_a_usage_error(tmp_path):
    result = run("health", "check", "--backend", "simulated", "--faults", str(tmp_path / "f.json"),
                 "--state", str(tmp_path), "--checks", "xid")  # a directory: read fails with EISDIR
    assert result.exit_code == 2 and "--state" in result.output
