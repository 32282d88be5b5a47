"""`gpufleet health …` commands: check, xid, inject, and the agent's run and status."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import click
import yaml

from gpufleet.health.severity import HealthStatus

# Exit codes of `gpufleet health check` (2 is click's usage error, so it is skipped).
EXIT_CODES = {HealthStatus.PASS: 0, HealthStatus.WARN: 1, HealthStatus.FAIL: 3, HealthStatus.UNKNOWN: 4}


@click.group()
def health() -> None:
    """GPU health checks and the health agent."""


def _split(values: tuple[str, ...]) -> list[str]:
    return [item for value in values for item in value.split(",") if item]


@health.command("check")
@click.option("--backend", type=click.Choice(["nvml", "simulated"]), default="nvml", show_default=True)
@click.option(
    "--fleet-spec",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Simulated backend: the fleet spec YAML (default: one 8x H100 node).",
)
@click.option("--node", help="Simulated backend: the node of the fleet spec to be (default: the first).")
@click.option(
    "--faults",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Simulated backend: the fault file (default $GPUFLEET_SIM_FAULTS or "
    "/var/lib/gpufleet/simulated-faults.json).",
)
@click.option("--checks", "check_ids", multiple=True, help="Check ids to run (comma-separated or repeated).")
@click.option(
    "--cost",
    "cost_classes",
    multiple=True,
    type=click.Choice(["lightweight", "periodic", "intensive"]),
    help="Cost classes to run [default: lightweight, periodic].",
)
@click.option("--profile", help="Hardware profile name (default: matched by GPU model and count).")
@click.option(
    "--profiles-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="Extra hardware profiles YAML.",
)
@click.option(
    "--xid-overrides",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Operator Xid override file (default /etc/gpufleet/xid-overrides.yaml if present).",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep counters, kernel-log cursor and Xids here between runs.",
)
@click.option(
    "--level",
    type=click.IntRange(1, 4),
    help="Also run the intensive checks, DCGM diagnostics at this run level (dcgmi diag -r N): "
    "what the quarantine and sweep diagnostics Jobs run.",
)
@click.option(
    "--termination-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a compact verdict {verdict, severity, findings} here (a Kubernetes "
    "container's /dev/termination-log, read back by the diagnostics Job's caller).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
@click.option("--list", "list_checks", is_flag=True, help="List the checks and exit.")
def check_command(
    backend,
    fleet_spec,
    node,
    faults,
    check_ids,
    cost_classes,
    profile,
    profiles_file,
    xid_overrides,
    state_file,
    level,
    termination_log,
    as_json,
    list_checks,
) -> None:
    """Run the health checks once and print the verdict.

    Exit code: 0 pass, 1 warn, 3 fail, 4 unknown (the monitor itself is broken).
    """
    from gpufleet.gpu import open_backend
    from gpufleet.gpu.profiles import ProfileError, load_profiles
    from gpufleet.gpu.simulated import FleetSpecError
    from gpufleet.health.checks import CheckConfig
    from gpufleet.health.engine import HealthEngine, describe_checks
    from gpufleet.health.state import HealthState
    from gpufleet.health.xid import DEFAULT_OPERATOR_OVERRIDES, XidCatalog

    if list_checks:
        for entry in describe_checks():
            click.echo(f"{entry['id']:<18} {entry['cost']:<12} {entry['description']}")
        return
    options = {}
    if backend == "simulated":
        options = {"node": node, "fleet_spec": fleet_spec, "faults": faults}
    try:
        gpu_backend = open_backend(backend, **options)
    except (FleetSpecError, OSError) as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        state = HealthState.load(state_file) if state_file else HealthState()
    except OSError as exc:
        raise click.UsageError(f"--state {state_file}: {exc.strerror}") from None
    try:
        engine = HealthEngine(
            gpu_backend,
            profile=profile or getattr(gpu_backend, "profile_name", None),
            checks=_split(check_ids) or None,
            state=state,
            catalog=XidCatalog.load(xid_overrides or DEFAULT_OPERATOR_OVERRIDES),
            profiles=load_profiles(list(profiles_file)),
            config=CheckConfig(dcgm_level=level) if level else None,
        )
        classes = tuple(cost_classes) or ("lightweight", "periodic")
        if level and "intensive" not in classes:
            classes += ("intensive",)
        report = engine.run(classes)
    except (ProfileError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    finally:
        gpu_backend.close()
    if state_file:
        state.save(state_file)
    if termination_log:
        termination_log.write_text(termination_message(report))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render_table(report))
    sys.exit(EXIT_CODES[report.status])


# Kubernetes keeps at most 4096 bytes of a container's termination message.
TERMINATION_MESSAGE_LIMIT = 4096


def termination_message(report) -> str:
    """The verdict the diagnostics Job's caller reads (gpufleet.kube.diagnostics.verdict)."""
    findings = [f.to_dict() for f in report.findings]
    while True:
        message = json.dumps(
            {"verdict": "pass" if report.status.value == "pass" else "fail",
             "severity": report.verdict.name, "status": report.status.value, "findings": findings},
            separators=(",", ":"),
        )
        if len(message.encode()) <= TERMINATION_MESSAGE_LIMIT or not findings:
            return message
        findings = findings[:-1]  # keep the most severe first findings that fit


def render_table(report) -> str:
    rows = [(f.severity.name, f.check, f.gpu, f.message) for f in report.findings]
    rows += [("UNKNOWN", u["check"], "-", u["reason"]) for u in report.unknown]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("SEVERITY", "CHECK", "GPU"))]
    lines = [f"{'SEVERITY':<{widths[0]}}  {'CHECK':<{widths[1]}}  {'GPU':<{widths[2]}}  MESSAGE"]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]
    gpus = report.device_count if report.device_count is not None else "?"
    lines.append("")
    lines.append(
        f"node {report.node}: {report.status.value} (verdict {report.verdict.name}); "
        f"profile {report.profile}; {gpus} GPUs; backend {report.backend}"
    )
    return "\n".join(lines)


@health.command("xid")
@click.argument("code", type=int)
@click.option("--architecture", help="GPU architecture (ampere, hopper, blackwell, ...) for its overrides.")
@click.option("--message", default="", help="The Xid's text (Xid 154: the recovery action is read from it).")
@click.option(
    "--xid-overrides",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Operator Xid override file (default /etc/gpufleet/xid-overrides.yaml if present).",
)
@click.option("--json", "as_json", is_flag=True)
def xid_command(code, architecture, message, xid_overrides, as_json) -> None:
    """Explain Xid CODE: its meaning, severity, window and what to do."""
    from gpufleet.health.xid import DEFAULT_OPERATOR_OVERRIDES, XidCatalog

    catalog = XidCatalog.load(xid_overrides or DEFAULT_OPERATOR_OVERRIDES)
    info = catalog.classify(code, message, architecture)
    if as_json:
        data = info.to_dict()
        if code == 154:
            data["recovery_actions"] = catalog.recovery_actions()
        click.echo(json.dumps(data, indent=2))
        return
    window = "until the next reboot" if info.window_seconds is None else f"{info.window_seconds:.0f} s"
    click.echo(f"Xid {info.code}: {info.name}")
    click.echo(f"  severity: {info.severity.name}{'' if info.known else ' (not in the catalog)'}")
    click.echo(f"  action:   {info.action}")
    click.echo(f"  window:   {window}")
    click.echo(f"  source:   {info.source}")
    if info.bucket:
        click.echo(f"  bucket:   {info.bucket} (NVIDIA's resolution bucket)")
    elif info.known:
        click.echo(f"  bucket:   none published; severity chosen by {info.reference}")
    if code == 154 and not message:
        click.echo("  recovery actions (from the message):")
        for action in catalog.recovery_actions():
            click.echo(f"    0x{action['code']:x} {action['text']:<22} -> {action['severity']}")


def _parse_setting(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise click.BadParameter(f"{text!r}: expected KEY=VALUE")
    key, _, raw = text.partition("=")
    if "," in raw and not raw.startswith(("[", "{")):
        return key, [yaml.safe_load(part) for part in raw.split(",")]
    value = yaml.safe_load(raw) if raw != "" else None
    return key, value


@health.command("inject")
@click.option(
    "--faults",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The fault file (default $GPUFLEET_SIM_FAULTS or /var/lib/gpufleet/simulated-faults.json).",
)
@click.option("--node", required=True, help="The simulated node.")
@click.option("--gpu", type=int, help="GPU index the fault applies to (node-level when omitted).")
@click.option("--xid", type=int, help="Inject this Xid (as an NVML event and a kernel-log line).")
@click.option(
    "--message",
    default="",
    help="The Xid's text, e.g. for Xid 154 "
    "'GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)'.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A fault value, e.g. remapped_rows.pending=true, ecc.volatile_uncorrected=2, temperature_c=97, "
    "nvlink_down=0,1, nvlink_rising.crc_flit_errors=120, pcie.gen_current=3, missing=true, "
    "nvml_error=GpuIsLost; node-level: nvml_error=DriverNotLoaded, fabric_manager_active=false. "
    "An empty value removes the key.",
)
@click.option("--clear", is_flag=True, help="Remove the node's faults first.")
@click.option(
    "--reboot", is_flag=True, help="Simulate a reboot: clear faults, new boot id, empty kernel log."
)
def inject_command(faults, node, gpu, xid, message, settings, clear, reboot) -> None:
    """Inject faults into the simulated backend while it runs."""
    from gpufleet.gpu.simulated import DEFAULT_FAULTS_PATH, inject

    path = faults or DEFAULT_FAULTS_PATH
    parsed = dict(_parse_setting(s) for s in settings)
    result = inject(
        path, node, gpu=gpu, settings=parsed, xid=xid, message=message, clear=clear, reboot=reboot
    )
    click.echo(json.dumps({"faults": str(path), "node": node, "state": result}, indent=1))


@health.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="/etc/gpufleet/health.toml",
    show_default=True,
    help="The agent's TOML config (absent at the default path: all defaults).",
)
@click.option("--check-config", is_flag=True, help="Validate the config, print it as JSON and exit.")
@click.option("--once", is_flag=True, help="Run one full cycle (publishing to every sink) and exit.")
def run_command(config_path, check_config, once) -> None:
    """Run the GPU health agent (gpufleet-health.service).

    Lightweight checks every `interval`, periodic ones every `periodic_interval`,
    an immediate cycle on every Xid event; publishes to the Kubernetes node,
    /var/lib/gpufleet/health.json and :9401/metrics. SIGHUP re-reads the config;
    SIGTERM stops without touching the node (a fence stays).
    """
    import dataclasses

    from gpufleet.health.config import ConfigError, load_config
    from gpufleet.service import setup_logging

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if check_config:  # printed by Ansible (and kept by AWX): no secret in it
        click.echo(json.dumps(redact_secrets(dataclasses.asdict(config)), indent=2, default=str))
        return
    setup_logging(config.log_level, config.log_format)
    from gpufleet.gpu.simulated import FleetSpecError
    from gpufleet.health.daemon import PERIODIC, HealthAgent

    try:
        agent = HealthAgent(config)
    except (FleetSpecError, OSError, ValueError) as exc:
        raise click.ClickException(f"cannot start the health agent: {exc}") from exc
    if once:
        result = agent.cycle(PERIODIC)
        agent.backend.close()
        click.echo(render_table(result.report))
        sys.exit(EXIT_CODES[result.report.status])
    agent.serve(config_path)


URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<secret>[^@/]*)@", re.I)
SECRET_KEYS = ("password", "token", "secret")


def redact_secrets(value):
    """`value` with passwords in URLs (`redis://:PASSWORD@host`) and secret-named keys replaced by ***."""
    if isinstance(value, dict):
        return {
            k: "***" if any(s in str(k).lower() for s in SECRET_KEYS) and v else redact_secrets(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    if isinstance(value, str):
        return URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)
    return value


@health.command("status")
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default="/var/lib/gpufleet/health.json",
    show_default=True,
    help="The agent's state file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole state file.")
def status_command(state_file, as_json) -> None:
    """Show what the running health agent last decided (from its state file).

    Exit code as `health check` (0 pass, 1 warn, 3 fail, 4 unknown); 5 when there is no state yet.
    """
    from gpufleet.health.severity import HealthStatus
    from gpufleet.health.sinks.state_file import read_state

    state = read_state(state_file)
    report = state.get("report")
    if not report:
        click.echo(f"no health agent state in {state_file} yet", err=True)
        sys.exit(5)
    if as_json:
        click.echo(json.dumps(state, indent=2))
        sys.exit(EXIT_CODES[HealthStatus(report["status"])])
    agent, fence = state.get("agent") or {}, state.get("fence") or {}
    updated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(agent.get("updated") or report["time"]))
    click.echo(f"node:        {report['node']}")
    click.echo(f"status:      {report['status']} (verdict {report['verdict']})")
    click.echo(f"last check:  {updated}")
    streak = fence.get("healthy_streak", 0)
    click.echo(f"fence:       {fence.get('last_action', 'none')}; healthy cycles {streak}")
    click.echo(f"kubernetes:  {agent.get('kubernetes', '?')}")
    xids = agent.get("xid_events") or {}
    click.echo("xid events:  " + (", ".join(f"{code}x{n}" for code, n in sorted(xids.items())) or "none"))
    problems = [f for f in report["findings"] if f["severity"] != "PASS"]
    for finding in problems:
        severity, check = finding["severity"], finding["check"]
        click.echo(f"  {severity:<8} {check:<16} {finding['gpu']}  {finding['message']}")
    for item in report.get("unknown") or []:
        click.echo(f"  UNKNOWN  {item['check']:<16} {item['reason']}")
    sys.exit(EXIT_CODES[HealthStatus(report["status"])])
