"""Every PromQL expression in the dashboards and alert rules parses (promtool) and reads only metrics
the services export, taken from live /metrics scrapes of a health agent (simulated GPUs), a kernel
agent (local backend, one real kernel) and the live GPU scheduler (against the API emulator)."""

from __future__ import annotations

import socket
import threading
import urllib.request

import aiohttp
import pytest
from aiohttp import web
from fixtures.infra_services import free_port_range, wait_until
from fixtures.kube_api import pod_object
from gpufleet.agent.config import parse_config
from gpufleet.agent.core import Agent
from gpufleet.agent.resources import GpuDevice, SlotCapacity
from gpufleet.agent.rpc import http_app
from gpufleet.gpu.simulated import SimulatedBackend, inject
from gpufleet.health.config import config_from_dict
from gpufleet.health.daemon import XID, HealthAgent
from gpufleet.kube.api import KubeApi
from gpufleet.placement.serve import GpuScheduler, ServeConfig
from gpufleet.service import StatusHttpServer
from monitoring_promql import (
    PROMETHEUS_OWN,
    alert_expressions,
    dashboard_expressions,
    fill_variables,
    metric_names,
    promtool_check,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exported_names(text: str) -> set[str]:
    """Every name PromQL can select in a scrape: sample names and each family's declared names."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


@pytest.fixture
def scheduler_scrape(kube_api):
    """/metrics of a leading scheduler that bound one pod and refused another."""
    kube_api.add_node("gpu-0", gpus=1)
    for name, gpus in (("fits", 1), ("too-big", 4)):
        pod = pod_object(name, gpus=gpus, phase="Pending")
        pod["spec"]["schedulerName"] = "gpufleet"
        kube_api.add_object("pods", pod)
    scheduler = GpuScheduler(KubeApi(kube_api.api_client), ServeConfig(identity="scrape"))
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
    server = StatusHttpServer(scheduler, "127.0.0.1", 0).start()
    thread.start()
    try:
        wait_until(lambda: (kube_api.get_pod("fits") or {}).get("spec", {}).get("nodeName")
                   and scheduler.metrics.unschedulable.labels(reason="resources")._value.get(), 120,
                   "a binding and a refusal")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as resp:
            return resp.read().decode()
    finally:
        stop.set()
        thread.join(30)
        server.stop()


@pytest.fixture
def health_scrape(tmp_path):
    """/metrics of a health agent on a simulated 8-GPU node after a cycle and an Xid."""
    faults = tmp_path / "faults.json"
    data = {
        "interval": 60,
        "state_file": str(tmp_path / "health.json"),
        "backend": {"type": "simulated", "node": "sim-node-0", "faults": str(faults)},
        "kubernetes": {"enabled": "false"},
        "http": {"address": "127.0.0.1", "port": 0},
    }
    agent = HealthAgent(config_from_dict(data, source="test"))
    server = StatusHttpServer(agent, "127.0.0.1", 0).start()
    try:
        agent.cycle()
        inject(faults, "sim-node-0", gpu=1, xid=79)
        agent.cycle(XID, agent.backend.wait_xid_events(2.0))
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as resp:
            return resp.read().decode()
    finally:
        server.stop()


@pytest.fixture
async def agent_scrape(tmp_path):
    """/metrics (:6003 app) of a kernel agent holding one kernel on a GPU, GPUs read through gpufleet.gpu."""
    low, _ = free_port_range(1)
    config = parse_config(
        {
            "etcd": {"enabled": False},
            "agent": {
                "id": "monitoring-test",
                "state-dir": str(tmp_path / "state"),
                "rpc-listen-addr": f"127.0.0.1:{free_port()}",
                "kernel-ready-timeout": 20,
            },
            "container": {
                "port-range": f"{low}-{low}",
                "scratch-root": str(tmp_path / "scratch"),
                "kernel-uid": "agent",
            },
            "rpc": {"curve-auth": False, "require-root-owner": False},  # the RPC is not used here
            "http": {"addr": f"127.0.0.1:{free_port()}"},
            "redis": {"addr": f"127.0.0.1:{free_port()}"},  # nobody there: events stay buffered
        }
    )
    agent = Agent(
        config, capacity=SlotCapacity(cpu=8, mem=16 << 30, gpus=[GpuDevice(i, "sim") for i in range(8)])
    )
    agent.metrics.gpu_backend = SimulatedBackend(node="sim-node-0", faults=tmp_path / "faults.json")
    await agent.start()
    runner = web.AppRunner(http_app(agent))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await agent.create_kernel(gpus=1, cpu=1, mem=256 << 20)
        agent.heartbeat()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                yield await resp.text()
    finally:
        await runner.cleanup()
        await agent.stop(destroy_kernels=True)


def test_every_expression_parses(tmp_path):
    expressions = dashboard_expressions() + alert_expressions()
    assert len(expressions) > 50
    result = promtool_check(expressions, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout


def test_promtool_refuses_a_broken_expression(tmp_path):
    """The check above would catch a typo: promtool really parses the expressions."""
    result = promtool_check([("broken", "sum by (node (gpufleet_agent_kernels)")], tmp_path)
    assert result.returncode != 0


def test_the_name_scan_finds_metrics_and_nothing_else():
    expr = (
        "histogram_quantile(0.95, sum by (le, method) (rate(backendai_rpc_request_duration_seconds_bucket"
        '{node=~"a|b", method!="x"}[5m]))) > on (instance) group_left (node) up offset 1h'
    )
    assert metric_names(expr) == {"backendai_rpc_request_duration_seconds_bucket", "up"}
    assert metric_names("time() - gpufleet_health_last_cycle_timestamp_seconds > 1e3") == {
        "gpufleet_health_last_cycle_timestamp_seconds"
    }


async def test_dashboards_and_alerts_read_only_exported_metrics(health_scrape, agent_scrape,
                                                                scheduler_scrape):
    exported = PROMETHEUS_OWN.union(*(exported_names(scrape)
                                      for scrape in (health_scrape, agent_scrape, scheduler_scrape)))
    assert 'gpufleet_scheduler_bindings_total{result="ok"} 1.0' in scheduler_scrape
    # The scrapes have the series the dashboards are about, not just their declarations.
    assert 'gpufleet_health_gpu_xid_events_total{Hostname="sim-node-0"' in health_scrape
    assert 'container_metric_name="cuda_util"' in agent_scrape
    assert "gpufleet_agent_gpu_allocated{" in agent_scrape
    missing = []
    used = set()
    for where, expr in dashboard_expressions() + alert_expressions():
        names = metric_names(fill_variables(expr))
        assert names, f"{where}: no metric found in {expr!r}"
        used |= names
        missing += [f"{where}: {name}" for name in sorted(names - exported)]
    assert missing == []
    # Every dashboard covers the three services' main series.
    assert {"gpufleet_health_gpu_temperature_celsius", "backendai_container_utilization",
            "gpufleet_scheduler_queue_depth"} <= used
