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


# --- interrupts racing the start and the end of an execution (issue 15's hung execute) ----------

def _serve(runner, *requests):
    """Queue requests, then run the job loop on this (the main) thread until it drains."""
    import queue

    replies = []
    for request in requests:
        reply = queue.Queue(maxsize=1)
        runner.jobs.put((request, reply))
        replies.append(reply)
    runner.jobs.put(None)
    runner.serve_jobs()
    # A reply that is not there now never comes: that is the hang the agent saw.
    return [reply.get(timeout=5) for reply in replies]


def test_interrupt_before_the_code_starts_answers_interrupted(tmp_path, monkeypatch):
    """The interrupt lands after the job is taken but before user code runs.

    Before the fix the SIGINT raised KeyboardInterrupt outside the execution's try block;
    the job loop swallowed it and never replied, so the agent's execute waited forever."""
    import signal

    from gpufleet.agent import runner as runner_module

    runner = Runner("t", str(tmp_path))
    original = runner_module._CappedText
    fired = []

    class InterruptOnFirstBuffer(original):
        def __init__(self, *args):
            super().__init__(*args)
            if not fired:  # the job is current, its code has not started: interrupt now
                fired.append(runner._stop_current("interrupted"))

    monkeypatch.setattr(runner_module, "_CappedText", InterruptOnFirstBuffer)
    previous = signal.getsignal(signal.SIGINT)
    try:
        first, second = _serve(runner, {"mode": "query", "code": "import time\nwhile True: time.sleep(0.01)"},
                               {"mode": "query", "code": "print('next')"})
    finally:
        signal.signal(signal.SIGINT, previous)
    assert fired == [True]
    assert (first["status"], first["exit_code"]) == ("interrupted", 130)
    assert (second["status"], second["stdout"]) == ("finished", "next\n")  # the stop did not leak


def test_interrupt_after_the_code_ended_is_ignored(tmp_path):
    """A SIGINT that arrives between executions neither kills the loop nor hits the next job."""
    import os
    import signal

    runner = Runner("t", str(tmp_path))
    previous = signal.getsignal(signal.SIGINT)
    try:
        (first,) = _serve(runner, {"mode": "query", "code": "value = 1"})
        assert signal.getsignal(signal.SIGINT) == runner._on_sigint
        os.kill(os.getpid(), signal.SIGINT)  # stray: nothing is running now
        (second,) = _serve(runner, {"mode": "query", "code": "value + 1"})
    finally:
        signal.signal(signal.SIGINT, previous)
    assert first["status"] == "finished"
    assert (second["status"], second["stdout"]) == ("finished", "2\n")


def test_batch_interrupted_before_its_command_starts_is_stopped_at_once(tmp_path, monkeypatch):
    import subprocess
    import time

    from gpufleet.agent import runner as runner_module

    runner = Runner("t", str(tmp_path))
    real_popen = subprocess.Popen

    def popen_then_interrupt(*args, **kwargs):
        # The interrupt comes while the command is being spawned (no process recorded yet).
        runner._stop_current("interrupted")
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(runner_module.subprocess, "Popen", popen_then_interrupt)
    started = time.monotonic()
    (result,) = _serve(runner, {"mode": "batch", "code": "sleep 60"})
    assert (result["status"], result["exit_code"]) == ("interrupted", 130)
    assert time.monotonic() - started < 30  # stopped, not run to its end (60 s)
