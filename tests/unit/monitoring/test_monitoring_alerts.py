"""The alert rules: promtool checks and unit-tests them; the PrometheusRule manifest says the same."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "monitoring"
# The brief's list: each must exist and be unit-tested (the scheduler's rule waits for the scheduler).
REQUIRED_ALERTS = {
    "GpuFleetNodeFenced",
    "GpuFleetFenceStuck",
    "GpuFleetCircuitBreakerOpen",
    "GpuFleetAgentHeartbeatMissing",
    "GpuFleetHealthAgentStale",
    "GpuFleetHealthUnknown",
    "GpuFleetXidStorm",
    "GpuFleetKernelCreateFailures",
}


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which("promtool"), "promtool missing: apt-get install prometheus (requirements/debian.txt)"
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=MONITORING)


def rules() -> list[dict]:
    return [r for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", "tests/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_would_catch_a_changed_rule(tmp_path):
    """The tests pin the rules: a fence alert that waits longer fails them."""
    broken = (MONITORING / "alerts.yml").read_text().replace("for: 1m", "for: 10m", 1)
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    shutil.copy(MONITORING / "tests" / "alerts_test.yml", tmp_path / "tests" / "alerts_test.yml")
    result = subprocess.run(
        ["promtool", "test", "rules", "tests/alerts_test.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "GpuFleetNodeFenced" in result.stdout + result.stderr


def test_every_required_alert_exists_and_is_tested_firing():
    names = {r["alert"] for r in rules()}
    assert REQUIRED_ALERTS <= names
    tests = yaml.safe_load((MONITORING / "tests" / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]
    }
    assert fired == names
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_prometheusrule_manifest_agrees_with_the_rules(tmp_path):
    manifest = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert manifest["spec"]["groups"] == yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "monitoring-rules"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # What the operator loads is a valid rule file too.
    (tmp_path / "spec.yml").write_text(yaml.safe_dump(manifest["spec"]))
    check = subprocess.run(
        ["promtool", "check", "rules", str(tmp_path / "spec.yml")], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
