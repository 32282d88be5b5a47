import sys

from gpufleet.agent.runner import Runner


def test_query_namespace_persists_and_trailing_expression_prints(tmp_path):
    runner = Runner("t", str(tmp_path))
    assert runner._execute({"mode": "query", "code": "x = 20"})["exit_code"] == 0
    result = runner._execute({"mode": "query", "code": "y = x + 1\ny * 2"})
    assert result["status"] == "finished" and result["stdout"] == "42\n"


def test_query_errors_and_exit_are_reported_not_fatal(tmp_path):
    runner = Runner("t", str(tmp_path))
    error = runner._execute({"mode": "query", "code": "1/0"})
    assert error["status"] == "error" and error["exit_code"] == 1 and "ZeroDivisionError" in error["stderr"]
    exited = runner._execute({"mode": "query", "code": "import sys; sys.exit(3)"})
    assert exited["exit_code"] == 3 and exited["status"] == "error"
    assert runner._execute({"mode": "query", "code": "print('alive')"})["stdout"] == "alive\n"


def test_batch_uses_the_runners_interpreter(tmp_path):
    runner = Runner("t", str(tmp_path))
    result = runner._execute({"mode": "batch", "code": 'echo out; echo err >&2; "$PYTHON" -c "import sys; '
                                                       'print(sys.executable)"; exit 4'})
    assert result["stdout"].splitlines() == ["out", sys.executable]
    assert result["stderr"] == "err\n" and result["exit_code"] == 4 and result["status"] == "error"


def test_wrong_token_and_bad_requests_refused(tmp_path):
    runner = Runner("right", str(tmp_path))
    assert runner.handle({"op": "ping", "token": "wrong"}) == {"error": "unauthorized"}
    assert "error" in runner.handle({"op": "execute", "token": "right", "mode": "x", "code": ""})
    assert "error" in runner.handle(["not", "a", "dict"])
    assert runner.handle({"op": "ping", "token": "right"})["python"] == sys.executable


def test_server_answers_json_lines_and_bounds_request_size(tmp_path, monkeypatch):
    import json
    import socket
    import threading

    from gpufleet.agent import runner as runner_module

    monkeypatch.setattr(runner_module, "MAX_REQUEST", 1000)
    server = runner_module.make_server(Runner("tok", str(tmp_path)), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(server.server_address, timeout=5) as sock:
            stream = sock.makefile("rwb")
            stream.write(b'{"op": "ping", "token": "tok"}\n{not json}\n')
            stream.flush()
            assert json.loads(stream.readline())["ok"] is True
            assert json.loads(stream.readline()) == {"error": "request is not JSON"}
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(b"x" * 5000 + b"\n")
            assert json.loads(sock.makefile("rb").readline()) == {"error": "request too large"}
    finally:
        server.shutdown()
        server.server_close()
