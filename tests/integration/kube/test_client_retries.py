"""The client's retry policy against the emulator: what the server did not process is retried."""

from __future__ import annotations

import pytest
from gpufleet.kube.api import NODES, KubeApi, api_error_message
from gpufleet.kube.client import RetryPolicy, api_client
from kubernetes.client.rest import ApiException


@pytest.fixture
def api(kube_api) -> KubeApi:
    client = api_client(kubeconfig=kube_api.kubeconfig, retry=RetryPolicy(attempts=4, base=0.01, cap=0.05))
    return KubeApi(client)


def count(kube_api, method: str) -> int:
    return sum(1 for r in kube_api.requests if r.method == method)


def test_gateway_errors_are_retried_until_the_answer(kube_api, api):
    kube_api.add_node("gpu-1")
    kube_api.fail_next("GET", r"/nodes/gpu-1$", 503, times=2)
    assert api.get_node("gpu-1")["metadata"]["name"] == "gpu-1"
    assert count(kube_api, "GET") == 3


def test_retries_are_bounded(kube_api, api):
    kube_api.add_node("gpu-1")
    kube_api.fail_next("GET", r"/nodes/gpu-1$", 503, times=10)
    with pytest.raises(ApiException) as failed:
        api.get_node("gpu-1")
    assert failed.value.status == 503 and count(kube_api, "GET") == 4


def test_a_500_on_a_write_is_not_repeated(kube_api, api):
    kube_api.fail_next("POST", r"/nodes$", 500)
    with pytest.raises(ApiException):
        api.create(NODES, {"metadata": {"name": "gpu-9"}})
    assert count(kube_api, "POST") == 1


def test_429_is_retried_only_when_the_server_says_when(kube_api, api):
    kube_api.add_node("gpu-1")
    kube_api.fail_next("PATCH", r"/nodes/gpu-1$", 429, retry_after=0)
    api.patch_node("gpu-1", {"metadata": {"labels": {"a": "b"}}})
    assert count(kube_api, "PATCH") == 2
    kube_api.clear_requests()
    kube_api.fail_next("PATCH", r"/nodes/gpu-1$", 429)  # like a PDB-refused eviction: the caller decides
    with pytest.raises(ApiException) as refused:
        api.patch_node("gpu-1", {"metadata": {"labels": {"a": "c"}}})
    assert refused.value.status == 429 and count(kube_api, "PATCH") == 1


def client_of_a_refused_port():
    """A client of a port nobody listens on, and the waits between its attempts."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = api_client(host=f"http://127.0.0.1:{port}", api_key="x",
                        retry=RetryPolicy(attempts=3, base=0.01, cap=0.02))
    slept: list[float] = []
    client.sleep = slept.append
    return client, slept


def test_a_refused_connection_is_retried_then_reported(kube_api):
    client, slept = client_of_a_refused_port()
    with pytest.raises(Exception, match="Connection refused|Max retries"):
        KubeApi(client).list_nodes()
    assert len(slept) == 2  # three attempts, two waits between them


def test_a_binding_takes_the_lean_path_with_the_same_auth_retries_and_refusals(kube_api, api):
    kube_api.add_node("gpu-1")
    kube_api.add_pod("train")
    kube_api.fail_next("POST", r"/pods/train/binding$", 503)
    api.bind_pod("default", "train", "gpu-1", annotations={"gpufleet.io/assigned-gpus": "3"})
    bindings = [r for r in kube_api.requests if r.path.endswith("/binding")]
    assert len(bindings) == 2  # the 503 was retried
    sent = bindings[-1]
    assert sent.headers["Authorization"] == "Bearer emulator-token"
    assert sent.headers["User-Agent"].startswith("gpufleet/") and sent.content_type == "application/json"
    assert sent.body["target"] == {"apiVersion": "v1", "kind": "Node", "name": "gpu-1"}
    pod = api.get_pod("default", "train")
    assert pod["spec"]["nodeName"] == "gpu-1"
    assert pod["metadata"]["annotations"]["gpufleet.io/assigned-gpus"] == "3"
    with pytest.raises(ApiException) as refused:  # bound already: the API's 409, not retried
        api.bind_pod("default", "train", "gpu-2")
    assert refused.value.status == 409 and "already assigned" in api_error_message(refused.value)
    assert len([r for r in kube_api.requests if r.path.endswith("/binding")]) == 3


def test_the_connection_pool_holds_as_many_connections_as_asked(kube_api):
    default = api_client(kubeconfig=kube_api.kubeconfig)
    sized = api_client(kubeconfig=kube_api.kubeconfig, connections=24)
    assert sized.rest_client.pool_manager.connection_pool_kw["maxsize"] == 24
    assert default.rest_client.pool_manager.connection_pool_kw["maxsize"] != 24


def test_a_binding_to_a_refused_port_is_retried_then_reported():
    client, slept = client_of_a_refused_port()
    with pytest.raises(Exception, match="refused"):
        KubeApi(client).bind_pod("default", "train", "gpu-1")
    assert len(slept) == 2  # nothing was sent: retried like any request


def test_a_binding_over_tls_checks_the_server_against_the_ca(kube_api_tls):
    kube_api_tls.add_node("gpu-1")
    kube_api_tls.add_pod("train")
    kube_api_tls.add_pod("infer")
    trusted = api_client(host=kube_api_tls.url, api_key=kube_api_tls.token, ca_cert=kube_api_tls.ca_cert)
    KubeApi(trusted).bind_pod("default", "train", "gpu-1")
    assert KubeApi(trusted).get_pod("default", "train")["spec"]["nodeName"] == "gpu-1"
    other = api_client(host=kube_api_tls.url, api_key=kube_api_tls.token, ca_cert=kube_api_tls.other_ca)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        KubeApi(other).bind_pod("default", "infer", "gpu-1")
    assert not KubeApi(trusted).get_pod("default", "infer")["spec"].get("nodeName")


def test_bindings_from_one_thread_keep_one_connection_across_requests(kube_api, api):
    kube_api.add_node("gpu-1")
    for name in ("a", "b", "c"):
        kube_api.add_pod(name)
        api.bind_pod("default", name, "gpu-1")
    assert api.api_client._kept.connection.sock is not None  # still open for the next one
    kube_api.add_pod("d")
    import socket

    api.api_client._kept.connection.sock.shutdown(socket.SHUT_RDWR)  # as if the server closed it while idle
    api.bind_pod("default", "d", "gpu-1")  # reconnects rather than failing
    assert api.get_pod("default", "d")["spec"]["nodeName"] == "gpu-1"


def test_reads_and_writes_take_the_lean_path_on_one_connection(kube_api, api):
    kube_api.add_node("gpu-1", labels={"gpufleet.io/fenced": "true", "team": "a"})
    kube_api.add_node("gpu-2")
    api.patch_node("gpu-1", {"metadata": {"labels": {"team": None, "zone": "z1"}}})  # None: removed
    assert api.get_node("gpu-1")["metadata"]["labels"].get("team") is None
    assert [n["metadata"]["name"] for n in api.list_nodes("gpufleet.io/fenced")] == ["gpu-1"]
    assert [n["metadata"]["name"] for n in api.list_nodes("zone=z1")] == ["gpu-1"]
    assert [n["metadata"]["name"] for n in api.list_nodes("!gpufleet.io/fenced")] == ["gpu-2"]
    api.patch_node_status("gpu-2", {"status": {"conditions": [{"type": "GpuHealthy", "status": "True"}]}})
    patch, status = [r for r in kube_api.requests if r.method == "PATCH"]
    assert patch.content_type == "application/merge-patch+json"
    assert status.content_type == "application/strategic-merge-patch+json" and status.path.endswith("/status")
    assert all(r.headers["Authorization"] == "Bearer emulator-token"
               and r.headers["User-Agent"].startswith("gpufleet/") for r in kube_api.requests)
    assert api.api_client._kept.connection.sock is not None  # one connection kept for the next request
    with pytest.raises(ApiException) as missing:
        api.get_node("gpu-9")
    assert missing.value.status == 404 and "not found" in api_error_message(missing.value)


def test_a_read_whose_kept_connection_is_lost_is_retried():
    """A server that drops a connection unanswered: a GET is sent again, a PATCH is not.

    The first connection is closed with the GET unanswered (retried on a new one); the second
    answers the GET, stays open, and is closed with the PATCH on it unanswered — a write the
    server may have applied, so no third connection may come (the listener waits 2 s for one)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    seen: list[str] = []

    def serve() -> None:
        with listener.accept()[0] as first:
            seen.append(first.recv(65536).decode().split(" ", 1)[0])  # closed without an answer
        with listener.accept()[0] as second:
            seen.append(second.recv(65536).decode().split(" ", 1)[0])
            body = b'{"kind": "Node", "metadata": {"name": "gpu-1"}}'
            second.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                           + str(len(body)).encode() + b"\r\n\r\n" + body)
            seen.append(second.recv(65536).decode().split(" ", 1)[0])  # on the kept connection
        listener.settimeout(2.0)
        try:
            with listener.accept()[0] as third:
                seen.append("again: " + third.recv(65536).decode().split(" ", 1)[0])
        except OSError:
            pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = api_client(host=f"http://127.0.0.1:{port}", api_key="x",
                        retry=RetryPolicy(attempts=3, base=0.01, cap=0.02))
    try:
        assert KubeApi(client).get_node("gpu-1")["metadata"]["name"] == "gpu-1"
        assert seen == ["GET", "GET"]
        with pytest.raises(Exception, match="connection lost|Max retries"):
            KubeApi(client).patch_node("gpu-1", {"metadata": {"labels": {"a": "b"}}})
        server.join(10)
        assert seen == ["GET", "GET", "PATCH"]  # a write the server may have applied is never repeated
    finally:
        listener.close()
