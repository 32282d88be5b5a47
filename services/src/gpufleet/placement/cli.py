"""`gpufleet place …` commands."""

from __future__ import annotations

import functools
import json
import sys

import click

KUBE_OPTIONS = (
    click.option(
        "--kubeconfig", type=click.Path(dir_okay=False), help="Kubeconfig file (default: $KUBECONFIG)."
    ),
    click.option("--context", help="Kubeconfig context."),
)


def kube_options(function):
    for option in reversed(KUBE_OPTIONS):
        function = option(function)
    return function


def _api_client(kubeconfig: str | None, context: str | None):
    from gpufleet.kube.client import api_client

    return api_client(kubeconfig=kubeconfig, context=context)


class BadInput(click.ClickException):
    """Bad placement input: one line on stderr and exit 2, never a traceback."""

    exit_code = 2


def refuse_bad_input(function):
    """Turn a PlacementInputError raised anywhere below the command into BadInput."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from gpufleet.placement.sources import PlacementInputError

        try:
            return function(*args, **kwargs)
        except PlacementInputError as error:
            raise BadInput(str(error)) from None

    return wrapper


def _load_items(path: str) -> list:
    """Workload manifests (multi-document YAML, or `kind: List`) or resource requests, each checked."""
    from gpufleet.placement.sources import PlacementInputError, check_not_empty, load_yaml_documents
    from gpufleet.placement.workloads import request_from_item

    items: list = []
    for document in load_yaml_documents(path):
        if document is None:
            continue
        if isinstance(document, list):
            items.extend(document)
        elif isinstance(document, dict) and document.get("kind") == "List":
            items.extend(document.get("items") or [])
        elif isinstance(document, dict) and "requests" in document and "kind" not in document:
            items.extend(document["requests"] or [])
        else:
            items.append(document)
    if not items:
        raise PlacementInputError(f"{path}: no workloads in it")
    for number, item in enumerate(items, start=1):
        where = f"{path} workload {number}"
        if isinstance(item, dict) and "nodes" in item and "kind" not in item:
            raise PlacementInputError(f"{where}: a cluster file (nodes), not workloads; give it as --cluster")
        try:
            request = request_from_item(item, number - 1)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PlacementInputError(f"{where}: {error}") from None
        check_not_empty(where, request)
    return items


def _check_strategies(strategy: str, tie_break) -> None:
    from gpufleet.placement.replay import check_policy

    check_policy("+".join([strategy, *tie_break]))


@click.group()
def place() -> None:
    """GPU workload placement, replay and benchmarks."""


@place.command("nodes")
@kube_options
@click.option(
    "--cluster",
    "cluster_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A YAML/CSV snapshot instead of the API.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@refuse_bad_input
def nodes_command(kubeconfig, context, cluster_file, as_json) -> None:
    """A table of GPU nodes: GPUs free/used/shared, model, health, taints."""
    from gpufleet.placement.filters import node_is_healthy

    if cluster_file:
        from gpufleet.placement.sources import load_cluster

        cluster = load_cluster(cluster_file)
    else:
        from gpufleet.placement.kube import snapshot

        cluster = snapshot(_api_client(kubeconfig, context))
    rows = []
    for node in cluster.nodes:
        rows.append(
            {
                "node": node.name,
                "model": node.gpu_model or "-",
                "gpus": len(node.gpus),
                "free": sum(1 for g in node.gpus if g.milli_allocated == 0 and g.health != "fail"),
                "used": sum(1 for g in node.gpus if g.milli_allocated >= 1000),
                "shared": sum(1 for g in node.gpus if 0 < g.milli_allocated < 1000),
                "cpu_free_milli": node.cpu_milli - node.cpu_allocated,
                "health": node.health,
                "schedulable": node_is_healthy(node),
                "taints": [f"{t.key}:{t.effect}" for t in node.taints],
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = f"{'NODE':24} {'MODEL':24} {'GPUS':>4} {'FREE':>4} {'USED':>4} {'SHARED':>6} {'HEALTH':8} TAINTS"
    click.echo(header)
    for row in rows:
        taints = ",".join(row["taints"]) or "-"
        if not row["schedulable"]:
            taints += " (not schedulable)"
        click.echo(
            f"{row['node']:24} {row['model']:24} {row['gpus']:>4} {row['free']:>4} {row['used']:>4} "
            f"{row['shared']:>6} {row['health']:8} {taints}"
        )


def _decide_or_submit(
    file, strategy, tie_break, seed, kubeconfig, context, cluster_file, check, visible_devices, pin, as_json
):
    from gpufleet.placement.kube import NothingFits, place_workloads
    from gpufleet.placement.sources import load_cluster

    _check_strategies(strategy, tie_break)
    items = _load_items(file)
    cluster = load_cluster(cluster_file) if cluster_file else None
    client = None if cluster_file else _api_client(kubeconfig, context)
    if client is None and not check:
        raise click.UsageError("submit writes to the API: give --kubeconfig, not --cluster")
    try:
        if client is None:
            result = _plan_offline(cluster, items, strategy, tie_break, seed, cluster_file)
        else:
            result = place_workloads(
                client,
                items,
                strategy=strategy,
                tie_break=tie_break,
                seed=seed,
                check=check,
                pin=pin,
                visible_devices=visible_devices,
                cluster=cluster,
            )
    except NothingFits as error:
        if as_json:
            click.echo(
                json.dumps(
                    {"failed": True, "msg": str(error), "decisions": [d.as_dict() for d in error.decisions]}
                )
            )
        else:
            click.echo(f"error: {error}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for entry in result["placements"]:
        gpus = ",".join(str(g) for g in entry["gpus"]) or "-"
        line = f"{entry['workload']}: node {entry['node']} GPUs {gpus} score {entry['score']}"
        line += f" ({entry['action']})"
        runner_up = entry.get("runner_up")
        if runner_up:
            line += f"; runner-up {runner_up['node']} score {runner_up['score']}"
        click.echo(line)
        for removed in entry.get("filters") or []:
            if removed["removed"]:
                click.echo(f"    filter {removed['filter']} removed {removed['removed']} node(s)")


def _plan_offline(cluster, items, strategy, tie_break, seed, cluster_file) -> dict:
    """Decisions against a snapshot file: nothing is read from or written to an API."""
    from gpufleet.placement.engine import Placer
    from gpufleet.placement.kube import NothingFits
    from gpufleet.placement.sources import check_requests_fit
    from gpufleet.placement.strategies import Priority, make
    from gpufleet.placement.workloads import request_from_item

    chain = [make(strategy)] + [make(name) for name in tie_break if name != strategy]
    placer = Placer(cluster, chain, seed=seed)
    queue = chain[0] if isinstance(chain[0], Priority) else Priority()
    requests = queue.order([request_from_item(item, i) for i, item in enumerate(items)])
    check_requests_fit(requests, cluster, cluster_file)
    placer.fleet.typical_requests = placer.fleet.typical_requests + requests
    decisions = [placer.place(request) for request in requests]
    failed = [d for d in decisions if not d.placed]
    if failed:
        raise NothingFits(failed)
    return {
        "changed": False,
        "placements": [{**d.as_dict(), "changed": False, "action": "planned"} for d in decisions],
    }


def _placement_options(function):
    options = [
        click.argument("file", type=click.Path(exists=True, dir_okay=False)),
        click.option("--strategy", default="best_fit", show_default=True, help="Node scoring strategy."),
        click.option(
            "--tie-break",
            multiple=True,
            default=("topology",),
            show_default=True,
            help="Tie-break strategies, in order.",
        ),
        click.option(
            "--seed", type=int, default=0, show_default=True, help="Seed for the final random tie-break."
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON."),
    ]
    for option in reversed(options):
        function = option(function)
    return kube_options(function)


@place.command("plan")
@_placement_options
@click.option(
    "--cluster",
    "cluster_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Plan against a YAML/CSV snapshot instead of the API.",
)
@refuse_bad_input
def plan_command(file, strategy, tie_break, seed, as_json, kubeconfig, context, cluster_file) -> None:
    """Decide where the workloads in FILE would go, and why. Nothing is written."""
    _decide_or_submit(
        file,
        strategy,
        tie_break,
        seed,
        kubeconfig,
        context,
        cluster_file,
        True,
        False,
        "node_selector",
        as_json,
    )


@place.command("submit")
@_placement_options
@click.option("--visible-devices", is_flag=True, help="Also set NVIDIA_VISIBLE_DEVICES in the containers.")
@click.option(
    "--pin", type=click.Choice(["node_selector", "node_affinity"]), default="node_selector", show_default=True
)
@refuse_bad_input
def submit_command(
    file, strategy, tie_break, seed, as_json, kubeconfig, context, visible_devices, pin
) -> None:
    """Decide and apply: create (or patch) each workload in FILE pinned to its node and GPUs."""
    _decide_or_submit(
        file, strategy, tie_break, seed, kubeconfig, context, None, False, visible_devices, pin, as_json
    )


@place.command("replay")
@click.option(
    "--nodes",
    "nodes_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="openb node CSV.",
)
@click.option(
    "--pods", "pods_file", required=True, type=click.Path(exists=True, dir_okay=False), help="openb pod CSV."
)
@click.option(
    "--policy",
    default="fgd",
    show_default=True,
    help="A strategy, or a tie-break chain such as fgd+best_fit.",
)
@click.option(
    "--seed", type=int, multiple=True, default=(0,), show_default=True, help="Seed (repeat for several)."
)
@click.option("--sample", type=int, help="Keep this many random nodes and a matching share of the pods.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per seed, in a list).")
@refuse_bad_input
def replay_command(nodes_file, pods_file, policy, seed, sample, as_json) -> None:
    """Replay an openb trace with the FGD paper's protocol."""
    from gpufleet.placement.replay import replay_files

    results = [replay_files(nodes_file, pods_file, policy, s, sample=sample) for s in seed]
    for result in results:
        # 100% arrival is the protocol's headline number; 130% may be stepped over on a small fleet.
        if result["alloc_at_100"] is None:
            raise BadInput(
                "the replay never reached 100% arrival (its arrivals ended at "
                f"{result['final_arrived_pct']}% of {result['gpus']} GPUs, or stepped over 100%): "
                "the trace is too small for the protocol; "
                "replay more nodes and pods"
            )
    if as_json:
        click.echo(json.dumps(results if len(results) > 1 else results[0], indent=2))
        return
    for r in results:
        click.echo(
            f"{r['policy']} seed {r['seed']}: allocation {_percent(r['alloc_at_100'])} at 100% arrival, "
            f"{_percent(r['alloc_at_130'])} at 130%; "
            f"fragmentation ratio {_percent(r['frag_ratio_at_100'])} / "
            f"{_percent(r['frag_ratio_at_130'])}; failed tasks {r['failed_tasks']} of {r['tasks']} "
            f"({r['seconds']} s)"
        )


def _percent(value: float | None) -> str:
    return "n/a (not reached)" if value is None else f"{value}%"


@place.command("bench")
@click.option("--nodes", type=int, default=5000, show_default=True)
@click.option("--gpus-per-node", type=int, default=8, show_default=True)
@click.option("--decisions", type=int, default=2000, show_default=True, help="Decisions per strategy.")
@click.option("--strategy", "strategies", multiple=True, help="Strategies to time (default: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bench_command(nodes, gpus_per_node, decisions, strategies, seed, as_json) -> None:
    """Decisions per second per strategy on a synthetic half-full fleet."""
    from gpufleet.placement.bench import BENCH_STRATEGIES, bench

    results = bench(nodes, gpus_per_node, decisions, strategies or BENCH_STRATEGIES, seed)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    click.echo(f"{nodes} nodes x {gpus_per_node} GPUs, {decisions} decisions each")
    click.echo(f"{'STRATEGY':16} {'DECISIONS/S':>12} {'WARM/S':>10} {'P99 MS':>8} {'PLACED':>7}")
    for r in results:
        click.echo(
            f"{r['strategy']:16} {r['decisions_per_second']:>12} {r['warm_decisions_per_second']:>10} "
            f"{r['p99_ms']:>8} {r['placed']:>7}"
        )


@place.command("serve")
@kube_options
@click.option("--scheduler-name", default="gpufleet", show_default=True,
              help="Schedule the pods whose spec.schedulerName is this.")
@click.option("--policy", default=None,
              help="Strategy or composite, e.g. fgd+balance (default: the best measured).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the final random tie-break.")
@click.option("--lease", default="kube-system/gpufleet-scheduler", show_default=True,
              help="NAMESPACE/NAME of the Lease that elects one leader among instances.")
@click.option("--identity", default=None, help="This instance's name in the Lease (default: HOST_PID).")
@click.option("--http", "http_address", default="0.0.0.0:9402", show_default=True,
              help="ADDRESS:PORT of /healthz, /readyz and /metrics.")
@click.option("--request-timeout", type=float, default=10.0, show_default=True,
              help="Seconds each API request may take.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--log-format", default="logfmt", show_default=True, type=click.Choice(["logfmt", "json"]))
def serve_command(kubeconfig, context, scheduler_name, policy, seed, lease, identity, http_address,
                  request_timeout, log_level, log_format) -> None:
    """Run the live GPU scheduler: bind pending pods of --scheduler-name to nodes.

    Watches pods and nodes, places each pending pod with the placement engine,
    binds it (with `gpufleet.io/assigned-gpus`), and reports the ones that fit
    nowhere with a FailedScheduling event. Several instances may run: the Lease
    elects one leader, the others stand by. Stops cleanly on SIGTERM/SIGINT.
    """
    import signal
    import threading

    from gpufleet.kube.api import KUBE_ERRORS, KubeApi, describe_error
    from gpufleet.placement.serve import DEFAULT_POLICY, GpuScheduler, ServeConfig
    from gpufleet.placement.strategies import make_chain
    from gpufleet.service import StatusHttpServer, notify, setup_logging

    setup_logging(log_level, log_format)
    lease_namespace, _, lease_name = lease.partition("/")
    if not lease_namespace or not lease_name:
        raise click.BadParameter("NAMESPACE/NAME, e.g. kube-system/gpufleet-scheduler", param_hint="--lease")
    host, _, port = http_address.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter("ADDRESS:PORT, e.g. 0.0.0.0:9402", param_hint="--http")
    policy = policy or DEFAULT_POLICY
    try:
        make_chain(policy.split("+"))
    except (KeyError, ValueError) as exc:
        raise click.BadParameter(f"unknown policy {policy!r}: {exc}", param_hint="--policy") from None
    config = ServeConfig(scheduler_name=scheduler_name, policy=policy, seed=seed,
                         lease_namespace=lease_namespace, lease_name=lease_name)
    if identity:
        config.identity = identity
    try:
        from gpufleet.kube.client import api_client

        api = KubeApi(api_client(request_timeout=request_timeout, kubeconfig=kubeconfig, context=context,
                                 connections=config.connections))
    except KUBE_ERRORS as exc:
        raise click.ClickException(f"no Kubernetes API to talk to: {describe_error(exc)}") from None
    scheduler = GpuScheduler(api, config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    http = StatusHttpServer(scheduler, host, int(port), name="scheduler-http").start()
    notify("READY=1")
    try:
        scheduler.run(stop)
    finally:
        notify("STOPPING=1")
        http.stop()


def _live_api(kubeconfig, context):
    from gpufleet.kube.api import KubeApi

    return KubeApi(_api_client(kubeconfig, context))


def _kube_failure(exc: Exception) -> click.ClickException:
    from gpufleet.kube.api import describe_error

    return click.ClickException(f"the Kubernetes API: {describe_error(exc)}")


@place.command("status")
@kube_options
@click.option("--scheduler-name", default="gpufleet", show_default=True)
@click.option("--lease", default="kube-system/gpufleet-scheduler", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(kubeconfig, context, scheduler_name, lease, as_json) -> None:
    """The live scheduler: its leader, its pods, fenced nodes, GPU allocation, workloads."""
    from gpufleet.kube.api import KUBE_ERRORS
    from gpufleet.placement.live import scheduler_status

    try:
        status = scheduler_status(_live_api(kubeconfig, context), scheduler_name, lease)
    except KUBE_ERRORS as exc:
        raise _kube_failure(exc) from None
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    pods, nodes, gpus = status["pods"], status["nodes"], status["gpus"]
    click.echo(f"scheduler   {status['scheduler']}  leader {status['leader'] or '(none)'}"
               f"  renewed {status['lease_renewed'] or '-'}")
    click.echo(f"pods        {pods['bound']} bound, {pods['pending']} pending "
               f"({pods['unschedulable']} unschedulable)")
    click.echo(f"nodes       {nodes['total']}, fenced: {', '.join(nodes['fenced']) or '-'}, "
               f"cordoned: {', '.join(nodes['cordoned']) or '-'}")
    click.echo(f"gpus        {gpus['usable']} usable ({gpus['failed']} failed), "
               f"{100 * gpus['allocation_ratio']:.1f}% allocated")
    workloads = status["workloads"]
    if workloads is None:
        summary = "(no GPUWorkload CRD)"
    else:
        summary = ", ".join(f"{n} {phase}" for phase, n in sorted(workloads.items())) or "none"
    click.echo(f"workloads   {summary}")


@place.command("workloads")
@kube_options
@click.option("-n", "--namespace", default=None, help="One namespace (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def workloads_command(kubeconfig, context, namespace, as_json) -> None:
    """GPUWorkloads and where their replicas run."""
    from gpufleet.kube.api import KUBE_ERRORS
    from gpufleet.placement.live import workload_rows

    try:
        rows = workload_rows(_live_api(kubeconfig, context), namespace)
    except KUBE_ERRORS as exc:
        raise _kube_failure(exc) from None
    if rows is None:
        raise click.ClickException("this cluster has no GPUWorkload resource "
                                   "(the gpu_scheduler role installs its CRD)")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'NAMESPACE':16} {'NAME':24} {'PLACED':>7} {'PHASE':16} MESSAGE")
    for row in rows:
        click.echo(f"{row['namespace']:16} {row['name']:24} {row['placed']:>3}/{row['replicas']:<3} "
                   f"{row['phase']:16} {row['message']}")


@place.command("generate-template")
@click.option("--name", default="train", show_default=True)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--replicas", type=click.IntRange(1, 10_000), default=1, show_default=True)
@click.option("--gpus", type=click.IntRange(0, 64), default=1, show_default=True,
              help="Whole GPUs per replica.")
@click.option("--gpu-milli", type=click.IntRange(1, 999), default=None, help="A share of one GPU instead.")
@click.option("--model", "models", multiple=True, help="Accepted GPU model (repeat).")
@click.option("--priority", type=int, default=0, show_default=True)
@click.option("--gang/--no-gang", default=False, show_default=True, help="All replicas at once, or none.")
@click.option("--image", default="nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04", show_default=True)
def generate_template_command(name, namespace, replicas, gpus, gpu_milli, models, priority, gang,
                              image) -> None:
    """Print a GPUWorkload manifest to edit and `kubectl apply -f`."""
    import yaml

    from gpufleet.placement.live import template

    manifest = template(name, replicas, gpus, gpu_milli, image, gang, priority, models, namespace)
    click.echo(yaml.safe_dump(manifest, sort_keys=False), nl=False)


@place.command("watch")
@kube_options
@click.option("--scheduler-name", default="gpufleet", show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0.1), default=3600, show_default=True,
              help="Stop after this long.")
def watch_command(kubeconfig, context, scheduler_name, seconds) -> None:
    """Follow the scheduler's pods live: bound (node, GPUs), unschedulable (why), deleted."""
    import time

    from gpufleet.kube.api import KUBE_ERRORS
    from gpufleet.placement.live import watch_lines

    try:
        for line in watch_lines(_live_api(kubeconfig, context), scheduler_name, time.monotonic() + seconds):
            click.echo(line)
    except KUBE_ERRORS as exc:
        raise _kube_failure(exc) from None
    except KeyboardInterrupt:
        pass


@place.command("strategy")
@click.argument("name", required=False)
def strategy_command(name) -> None:
    """List the placement strategies, or describe one (composites join names with +)."""
    from gpufleet.placement.serve import DEFAULT_POLICY
    from gpufleet.placement.strategies import STRATEGIES

    if name is None:
        for key, cls in STRATEGIES.items():
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            click.echo(f"{key:16} {doc}")
        click.echo(f"\nthe live scheduler's default: {DEFAULT_POLICY}")
        return
    unknown = [part for part in name.split("+") if part not in STRATEGIES]
    if unknown:
        raise click.BadParameter(f"unknown strategy {', '.join(unknown)}; one of {', '.join(STRATEGIES)}",
                                 param_hint="NAME")
    for part in name.split("+"):
        click.echo(f"{part}: {(STRATEGIES[part].__doc__ or '').strip()}")
