"""Every Kubernetes module: bad input refused before any request, and a hung API server is a timeout error.

The black-hole API is a loopback socket server that accepts connections and never answers (bounded:
it holds at most 64 connections and is closed when the test ends).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytestmark = [pytest.mark.ansible, pytest.mark.integration]

TAINT = {"key": "gpufleet.io/maintenance", "value": "sweep", "effect": "NoSchedule"}
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "train", "namespace": "default"},
       "spec": {"containers": [{"name": "main", "image": "busybox",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
# Each Kubernetes module with arguments that would reach the API.
MODULES = {
    "node_taint": {"name": "gpu-a", "taints": [TAINT]},
    "node_quarantine": {"name": "gpu-a", "reason": "test"},
    "node_diagnostics": {"name": "gpu-a"},
    "fleet_health_info": {},
    "workload_placement": {"workload": POD},
}


class BlackHole:
    """Accepts TCP connections on 127.0.0.1 and never reads or answers."""

    def __init__(self, limit: int = 64) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(limit)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.limit = limit
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:
                continue
            if len(self.held) < self.limit:
                self.held.append(connection)
            else:
                connection.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        for connection in self.held:
            connection.close()
        self.sock.close()


@pytest.fixture
def black_hole():
    hole = BlackHole()
    yield hole
    hole.close()


def test_every_kubernetes_module_fails_with_a_timeout_within_its_timeout(black_hole, ansible_playbook):
    timeout = 2
    tasks = [{"name": module, "ignore_errors": True,
              f"gpufleet.cluster.{module}": dict(params, host=f"http://127.0.0.1:{black_hole.port}",
                                                 api_key="unused", request_timeout=timeout)}
             for module, params in MODULES.items()]
    started = time.monotonic()
    result = ansible_playbook(tasks, env={"KUBECONFIG": "", "K8S_AUTH_KUBECONFIG": ""}, timeout=300)
    elapsed = time.monotonic() - started
    for module in MODULES:
        outcome = result.task(module)
        assert outcome.get("failed") is True, (module, outcome)
        assert outcome["timed_out"] is True, (module, outcome["msg"])
        assert f"timed out: the API server did not answer within {timeout} s" in outcome["msg"], module
        assert "Traceback" not in outcome["msg"]
    assert black_hole.held  # the modules did connect: the deadline, not a refusal, ended them
    # Without a deadline the first module would hang until the playbook's own timeout (300 s).
    assert elapsed < len(MODULES) * (timeout + 20), elapsed


BAD_TAINT_INPUT = [
    ({"name": "", "taints": [TAINT]}, "name must be a non-empty string"),
    ({"name": "Bad_Node", "taints": [TAINT]}, "a lowercase RFC 1123 subdomain"),
    ({"name": "gpu-a", "taints": [dict(TAINT, key="bad key")]}, "taint key 'bad key' is invalid: name part"),
    ({"name": "gpu-a", "taints": [dict(TAINT, key="-bad.example/x")]}, "prefix part a lowercase RFC 1123"),
    ({"name": "gpu-a", "taints": [dict(TAINT, value="v" * 64)]}, "must be no more than 63 characters"),
    ({"name": "gpu-a", "taints": [dict(TAINT, value="has space")]}, "a valid label must be an empty string"),
    ({"name": "gpu-a", "taints": [{"key": "gpufleet.io/maintenance"}]}, "needs an effect"),
]


def test_node_taint_refuses_what_kubernetes_refuses_before_any_request(kube_api, ansible_playbook):
    kube_api.add_node("gpu-a")
    kube_api.clear_requests()
    result = ansible_playbook([{"name": f"case {index}", "ignore_errors": True, "gpufleet.cluster.node_taint":
                                dict(params, kubeconfig=kube_api.kubeconfig)}
                               for index, (params, _) in enumerate(BAD_TAINT_INPUT)])
    for index, (_, words) in enumerate(BAD_TAINT_INPUT):
        outcome = result.task(f"case {index}")
        assert outcome["failed"] is True and words in outcome["msg"], (index, outcome["msg"])
        assert outcome.get("invalid") is True
    assert kube_api.requests == []


def test_node_quarantine_refuses_an_empty_name_before_any_request(kube_api, ansible_playbook):
    kube_api.clear_requests()
    result = ansible_playbook([{"name": "quarantine", "ignore_errors": True,
                                "gpufleet.cluster.node_quarantine": {"name": "",
                                                                     "kubeconfig": kube_api.kubeconfig}}])
    assert result.task("quarantine")["failed"] is True
    assert "name must be a non-empty string" in result.task("quarantine")["msg"]
    assert kube_api.requests == []
