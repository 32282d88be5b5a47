"""One naming rule for every metric, every exported metric declared, docs/metrics.md from the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gpufleet.agent import metrics as agent_metrics
from gpufleet.agent.metrics import AgentMetrics
from gpufleet.health import metrics as health_metrics
from gpufleet.health.metrics import HealthMetrics
from gpufleet.metrics import MetricSpec, naming_problems
from gpufleet.placement import serve as scheduler_metrics
from gpufleet.placement.serve import SchedulerMetrics
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("module", [health_metrics, agent_metrics, scheduler_metrics],
                         ids=["health", "agent", "scheduler"])
def test_every_metric_follows_the_naming_rule(module):
    assert naming_problems(module.ALL_METRICS) == []
    names = [spec.name for spec in module.ALL_METRICS]
    assert len(names) == len(set(names))


def test_the_rule_rejects_what_it_should():
    bad = [
        MetricSpec("backendai_kernels", "gauge", "not a seed name"),
        MetricSpec("gpufleet_kernels", "gauge", "no service"),
        MetricSpec("gpufleet_health_events_total", "counter", "_total declared"),
        MetricSpec("gpufleet_health_gpu_temp_celsius", "gauge", "half the GPU labels", ("gpu", "device")),
    ]
    assert len(naming_problems(bad)) == 4


@pytest.mark.parametrize(
    "module, instance",
    [(health_metrics, HealthMetrics), (agent_metrics, AgentMetrics), (scheduler_metrics, SchedulerMetrics)],
    ids=["health", "agent", "scheduler"],
)
def test_everything_a_scrape_shows_is_declared(module, instance):
    """A metric added without a spec would be missing from docs/metrics.md and the naming check."""
    declared = {spec.name for spec in module.ALL_METRICS}
    scraped = {family.name for family in text_string_to_metric_families(instance().render().decode())}
    assert scraped == declared


def test_docs_metrics_md_is_generated_from_the_code():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "metrics-doc"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "docs" / "metrics.md").read_text()
    for spec in health_metrics.ALL_METRICS + agent_metrics.ALL_METRICS + scheduler_metrics.ALL_METRICS:
        assert f"`{spec.exposed_name}`" in text
