import pytest
from gpufleet.agent.rpc import METHODS, RpcServer, openapi_document, validate

REQUIRED_METHODS = {
    "ping", "health", "gather_hwinfo", "get_local_config", "create_kernels", "destroy_kernel",
    "restart_kernel", "execute", "interrupt_kernel", "get_logs", "list_files", "upload_file",
    "download_file", "sync_kernel_registry", "assign_port", "release_port",
}


def test_every_issue_method_is_offered_and_documented():
    assert set(METHODS) == REQUIRED_METHODS
    doc = openapi_document("0.1.0")
    assert set(doc["paths"]) == {f"/rpc/{m}" for m in REQUIRED_METHODS}
    execute = doc["paths"]["/rpc/execute"]["post"]
    assert execute["requestBody"]["content"]["application/json"]["schema"]["properties"]["mode"]["enum"] == [
        "query", "batch"]
    assert {"400", "401", "413"} <= set(execute["responses"])
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


@pytest.mark.parametrize(("method", "params", "path"), [
    ("execute", {"kernel_id": "k1"}, "$.code"),
    ("execute", {"kernel_id": "k1", "code": "1", "mode": "notebook"}, "$.mode"),
    ("execute", {"kernel_id": "../etc", "code": "1"}, "$.kernel_id"),
    ("execute", {"kernel_id": "k1", "code": 5}, "$.code"),
    ("execute", {"kernel_id": "k1", "code": "1", "timeout": -1}, "$.timeout"),
    ("create_kernels", {"kernels": [{"gpus": -1}]}, "$.kernels[0].gpus"),
    ("create_kernels", {"kernels": [{"gpus": True}]}, "$.kernels[0].gpus"),
    ("create_kernels", {"kernels": [{"cpu": 1, "bogus": 1}]}, "$.kernels[0].bogus"),
    ("create_kernels", {"kernels": []}, "$.kernels"),
    ("create_kernels", {"kernels": [{"environ": {"A": 1}}]}, "$.kernels[0].environ.A"),
    ("release_port", {"port": 70000}, "$.port"),
    ("ping", [], "$"),
])
def test_invalid_params_are_reported_with_their_path(method, params, path):
    errors = validate(params, METHODS[method][0])
    assert path in [e["path"] for e in errors]


@pytest.mark.parametrize(("method", "params"), [
    ("execute", {"kernel_id": "k1", "code": "x", "mode": "batch", "timeout": 1.5}),
    ("create_kernels", {"kernels": [{"gpus": 1, "cpu": 0.5, "mem": 1 << 30, "environ": {"A": "b"}}]}),
    ("ping", {}),
    ("upload_file", {"kernel_id": "k1", "path": "a.txt", "content_b64": "aGk="}),
])
def test_valid_params_pass(method, params):
    assert validate(params, METHODS[method][0]) == []


def test_handlers_cover_every_method():
    class FakeAgent:
        pass

    server = RpcServer(FakeAgent(), "t" * 32)
    assert set(server.handlers) == set(METHODS)
