"""The intensive diagnostics Job run on a quarantined node, and its verdict.

The Job is pinned to the node (`spec.nodeName`, so the scheduler and the
cordon do not matter), tolerates gpufleet's taints, takes every GPU of the
node and runs the health agent image with a DCGM level-4-equivalent check.
The container reports its verdict as JSON in its termination message
(`/dev/termination-log`): {"verdict": "pass"|"fail", "severity": "PASS"..
"ISOLATE", "findings": [...]}. Without a message, the Job's success or
failure is the verdict.

The recommendation follows the severity scale (PASS < MONITOR < RESET < REBOOT
< ISOLATE; docs/health.md "Severities"): PASS and MONITOR -> return to service,
RESET -> GPU reset, REBOOT -> reboot, ISOLATE -> replace.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable

from kubernetes.client.rest import ApiException

from gpufleet.kube.api import KubeApi

DEFAULT_IMAGE = "localhost/gpufleet/diagnostics:0.1.0"


def diagnostics_command(level: int) -> list[str]:
    """The health agent's one-shot check at a DCGM run level, verdict to the termination log."""
    return ["gpufleet", "health", "check", "--level", str(int(level)), "--termination-log",
            "/dev/termination-log"]


DEFAULT_COMMAND = diagnostics_command(4)  # quarantine: the DCGM level-4 equivalent
TOLERATED_TAINTS = ("gpufleet.io/quarantine", "gpufleet.io/unhealthy", "gpufleet.io/maintenance")
RECOMMENDATION = {"PASS": "return", "MONITOR": "return", "RESET": "reset", "REBOOT": "reboot",
                  "ISOLATE": "replace"}


def job_name(node: str) -> str:
    return f"gpufleet-diag-{node}"[:52].rstrip("-.")


def job_manifest(node: str, gpus: int, image: str = DEFAULT_IMAGE, command: list[str] | None = None,
                 namespace: str = "kube-system", timeout: int = 3600) -> dict:
    labels = {"app.kubernetes.io/name": "gpufleet-diagnostics", "gpufleet.io/node": node}
    container = {
        "name": "diagnostics", "image": image, "command": list(command or DEFAULT_COMMAND),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"privileged": True},  # DCGM level 4 needs the devices and profiling
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(node), "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0, "activeDeadlineSeconds": int(timeout), "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {"nodeName": node, "restartPolicy": "Never", "containers": [container],
                         "tolerations": [{"key": key, "operator": "Exists"} for key in TOLERATED_TAINTS]},
            },
        },
    }


def job_finished(job: dict) -> str | None:
    """'succeeded', 'failed' or None (still running)."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return "succeeded" if condition["type"] == "Complete" else "failed"
    if status.get("succeeded"):
        return "succeeded"
    if status.get("failed"):
        return "failed"
    return None


def termination_message(pods: list[dict]) -> str | None:
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((container.get("state") or {}).get("terminated") or {}).get("message")
            if message:
                return message
    return None


def verdict(outcome: str | None, message: str | None) -> dict:
    """The quarantine-result record from the Job's outcome and its container's termination message."""
    report: dict = {}
    if message:
        try:
            parsed = json.loads(message)
            report = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            report = {"output": message[-2000:]}
    if outcome is None:
        result = {"verdict": "unknown", "severity": "UNKNOWN", "recommendation": None,
                  "detail": "diagnostics did not finish in time"}
    else:
        severity = str(report.get("severity") or ("PASS" if outcome == "succeeded" else "REBOOT")).upper()
        result = {"verdict": report.get("verdict") or ("pass" if outcome == "succeeded" else "fail"),
                  "severity": severity, "recommendation": RECOMMENDATION.get(severity, "reboot")}
    if report.get("findings"):
        result["findings"] = report["findings"]
    if report.get("output"):
        result["output"] = report["output"]
    result["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return result


def run_diagnostics(api: KubeApi, node: str, gpus: int, image: str = DEFAULT_IMAGE,
                    command: list[str] | None = None, namespace: str = "kube-system", timeout: float = 3600,
                    poll: float = 2.0, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> dict:
    """Run the diagnostics Job on `node`, wait for it (bounded) and return the verdict record."""
    manifest = job_manifest(node, gpus, image, command, namespace, int(timeout))
    name = manifest["metadata"]["name"]
    try:  # a finished Job from an earlier run would block the name
        api.delete_job(namespace, name)
        deadline = clock() + 30
        while clock() < deadline:
            api.get_job(namespace, name)
            sleep(min(poll, 1.0))
    except ApiException as exc:
        if exc.status != 404:
            raise
    api.create_job(namespace, manifest)
    deadline = clock() + timeout
    outcome = None
    while True:
        outcome = job_finished(api.get_job(namespace, name))
        if outcome or clock() + poll > deadline:
            break
        sleep(poll)
    pods = api.list_pods_in(namespace, f"job-name={name}") if outcome else []
    result = verdict(outcome, termination_message(pods))
    result["job"] = f"{namespace}/{name}"
    return result
