from gpufleet.health.dcgm import parse_dcgm_diag
from gpufleet.health.severity import Severity


def test_dcgm3_failures(fixtures_dir):
    result = parse_dcgm_diag((fixtures_dir / "dcgm3_diag_r2_fail.json").read_text())
    assert result.version == "3" and result.dcgm_version == "3.3.9"
    by_gpu = {p.gpu: p for p in result.problems}
    assert set(by_gpu) == {1, 2, 3}
    assert by_gpu[1].severity is Severity.ISOLATE  # error_severity 2 = DCGM_ERROR_ISOLATE
    assert by_gpu[2].severity is Severity.RESET  # error_severity 6 = DCGM_ERROR_RESET
    assert by_gpu[3].severity is Severity.MONITOR and by_gpu[3].status == "Warn"
    assert by_gpu[2].error_id == 3


def test_dcgm4_failures(fixtures_dir):
    result = parse_dcgm_diag((fixtures_dir / "dcgm4_diag_r2_fail.json").read_text())
    assert result.version == "4" and result.dcgm_version == "4.1.1"
    found = sorted((p.test, p.gpu, p.severity) for p in result.problems)
    assert found == [
        ("memory", 1, Severity.RESET),
        ("nvbandwidth", 0, Severity.ISOLATE),
        ("pcie", 0, Severity.MONITOR),
    ]


def test_passing_runs_have_no_problems(fixtures_dir):
    for name in ("dcgm3_diag_r1_pass.json", "dcgm4_diag_r1_pass.json"):
        result = parse_dcgm_diag((fixtures_dir / name).read_text())
        assert result.problems == [] and result.tests_run >= 1


def test_fail_without_severity_is_reset():
    text = (
        '{"DCGM GPU Diagnostic": {"test_categories": [{"category": "Hardware", "tests": ['
        '{"name": "Diagnostic", "results": [{"gpu_id": "5", "status": "Fail"}]}]}]}}'
    )
    (problem,) = parse_dcgm_diag(text).problems
    assert problem.gpu == 5 and problem.severity is Severity.RESET


def test_dcgm_severity_unknown_and_triage_are_monitor():
    text = (
        '{"DCGM Diagnostic": {"test_categories": [{"category": "Hardware", "tests": ['
        '{"name": "x", "results": ['
        '{"entity_group": "GPU", "entity_id": 0, "status": "Fail", "warnings": ['
        '{"warning": "a", "error_severity": 3}, {"warning": "b", "error_severity": 4}]}]}]}]}}'
    )
    assert [p.severity for p in parse_dcgm_diag(text).problems] == [Severity.MONITOR, Severity.MONITOR]
