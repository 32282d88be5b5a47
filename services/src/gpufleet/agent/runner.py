"""The kernel runner: a stdlib-only program started inside every kernel.

It listens on one TCP port and answers JSON lines (one request, one response):

  {"op": "ping", "token": T}
  {"op": "execute", "token": T, "mode": "query"|"batch", "code": "...", "timeout": 30, "run_id": "..."}
  {"op": "interrupt", "token": T}
  {"op": "shutdown", "token": T}

`query` runs Python in one persistent namespace (state survives between calls,
like a notebook; the value of a trailing expression is printed). `batch` runs a
shell command. Both capture stdout/stderr. Executions are serialised on the main
thread, so an interrupt or a timeout is a SIGINT aimed at the main thread
(query) or at the batch command's process group.

The runner uses the interpreter that started it (`sys.executable`) for
everything Python — never a kernelspec's relative `python`, which is what broke
the seed's Jupyter setup. This file must keep importing nothing outside the
standard library: the Kubernetes backend copies it into images that only have a
bare Python.
"""

import argparse
import ast
import contextlib
import errno
import hmac
import io
import json
import os
import queue
import signal
import socketserver
import subprocess
import sys
import threading
import time
import traceback
import uuid

MAX_OUTPUT = 1 << 20  # bytes kept per stream per execution
MAX_REQUEST = 16 << 20
EXIT_ERROR, EXIT_TIMEOUT, EXIT_INTERRUPTED = 1, 124, 130
EXIT_PORT_IN_USE = 75  # EX_TEMPFAIL: the runner's port was taken; the agent retries elsewhere


class _CappedText(io.StringIO):
    def write(self, text):
        if self.tell() < MAX_OUTPUT:
            return super().write(text[: MAX_OUTPUT - self.tell()])
        return len(text)


class Runner:
    def __init__(self, token, workdir):
        self.token = token
        self.workdir = workdir
        self.namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        self.jobs = queue.Queue()
        self.lock = threading.Lock()
        self.current = None  # (kind, run_id, Popen or None) of the running execution
        self.stop_reason = None  # "interrupted" | "timeout" for the running execution
        self.in_user_code = False  # set by the main thread only, read by its SIGINT handler
        self.main_ident = threading.get_ident()
        self.started = time.time()

    # --- main thread: executes jobs one by one ---------------------------------------------

    def serve_jobs(self):
        # SIGINT interrupts only user code (see _on_sigint); installed here, on the main thread.
        signal.signal(signal.SIGINT, self._on_sigint)
        while True:
            job = self.jobs.get()
            if job is None:
                return
            request, reply = job
            reply.put(self._execute(request))

    def _on_sigint(self, signum, frame):
        """Raise KeyboardInterrupt inside user code only; anywhere else the stop is already
        recorded in `stop_reason` and honoured where user code would start (no lost replies)."""
        if self.in_user_code:
            raise KeyboardInterrupt

    def _execute(self, request):
        mode = request.get("mode", "query")
        run_id = request.get("run_id") or uuid.uuid4().hex
        timeout = request.get("timeout")
        with self.lock:
            self.stop_reason = None
            self.current = (mode, run_id, None)
        timer = None
        if timeout:
            timer = threading.Timer(float(timeout), self._stop_current, args=("timeout",))
            timer.daemon = True
            timer.start()
        started = time.monotonic()
        try:
            if mode == "batch":
                result = self._run_batch(request.get("code", ""), run_id, timeout)
            else:
                result = self._run_query(request.get("code", ""))
        finally:
            if timer:
                timer.cancel()
            with self.lock:
                self.current = None
        result["run_id"] = run_id
        result["mode"] = mode
        result["duration"] = round(time.monotonic() - started, 6)
        return result

    def _run_query(self, code):
        out, err = _CappedText(), _CappedText()
        status, exit_code = "finished", 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    # Armed before the check: a stop that came before this line is seen by the
                    # check, one that comes after it by the SIGINT handler. Never both missed.
                    self.in_user_code = True
                    if self.stop_reason:
                        raise KeyboardInterrupt
                    tree = ast.parse(code, "<query>", "exec")
                    trailing = None
                    if tree.body and isinstance(tree.body[-1], ast.Expr):
                        trailing = ast.Expression(tree.body.pop().value)
                    exec(compile(tree, "<query>", "exec"), self.namespace)  # noqa: S102 - the kernel's purpose
                    if trailing is not None:
                        value = eval(compile(trailing, "<query>", "eval"), self.namespace)  # noqa: S307
                        if value is not None:
                            print(repr(value))
                finally:
                    self.in_user_code = False
        except KeyboardInterrupt:
            status = self.stop_reason or "interrupted"
            exit_code = EXIT_TIMEOUT if status == "timeout" else EXIT_INTERRUPTED
            err.write(f"{status}\n")
        except SystemExit as exc:
            code_value = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            status, exit_code = ("finished" if code_value == 0 else "error"), code_value
        except BaseException:  # noqa: BLE001 - user code may raise anything; report, keep serving
            status, exit_code = "error", EXIT_ERROR
            err.write(traceback.format_exc())
        return {"status": status, "exit_code": exit_code, "stdout": out.getvalue(), "stderr": err.getvalue()}

    def _run_batch(self, command, run_id, timeout):
        env = dict(os.environ)
        env["PYTHON"] = sys.executable
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "/usr/bin:/bin")
        proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=self.workdir, env=env,  # noqa: S603
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        with self.lock:
            self.current = ("batch", run_id, proc)
            stopped_early = self.stop_reason is not None
        if stopped_early:  # interrupted (or timed out) before the command existed
            _kill_group(proc)
        stdout, stderr = proc.communicate()
        status, exit_code = "finished" if proc.returncode == 0 else "error", proc.returncode
        if self.stop_reason:
            status = self.stop_reason
            exit_code = EXIT_TIMEOUT if status == "timeout" else EXIT_INTERRUPTED
        return {"status": status, "exit_code": exit_code,
                "stdout": stdout[:MAX_OUTPUT].decode(errors="replace"),
                "stderr": stderr[:MAX_OUTPUT].decode(errors="replace")}

    # --- any thread ---------------------------------------------------------------------

    def _stop_current(self, reason):
        with self.lock:
            if self.current is None:
                return False
            self.stop_reason = reason
            mode, _, proc = self.current
            if mode == "batch":
                if proc is not None:
                    _kill_group(proc)
            else:
                signal.pthread_kill(self.main_ident, signal.SIGINT)
            return True

    def terminate(self):
        current = self.current  # read without the lock: this runs in a signal handler
        if current is not None and current[2] is not None:
            _kill_group(current[2])
        sys.stdout.flush()
        os._exit(0)

    def handle(self, request):
        if not isinstance(request, dict):
            return {"error": "request must be a JSON object"}
        if not hmac.compare_digest(str(request.get("token", "")), self.token):
            return {"error": "unauthorized"}
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "python": sys.executable,
                    "uptime": time.time() - self.started}
        if op == "execute":
            if request.get("mode", "query") not in ("query", "batch"):
                return {"error": "mode must be query or batch"}
            if not isinstance(request.get("code", ""), str):
                return {"error": "code must be a string"}
            reply = queue.Queue(maxsize=1)
            self.jobs.put((request, reply))
            return reply.get()
        if op == "interrupt":
            return {"ok": True, "interrupted": self._stop_current("interrupted")}
        if op == "shutdown":
            self._stop_current("interrupted")
            self.jobs.put(None)
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}


def _kill_group(proc):
    """SIGINT the command's process group, then SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    for _ in range(20):
        if proc.poll() is not None:
            return
        time.sleep(0.025)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def make_server(runner, host, port):
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while True:
                line = self.rfile.readline(MAX_REQUEST + 1)  # bounded: never buffer an endless line
                if not line:
                    return
                if len(line) > MAX_REQUEST:
                    self.wfile.write(b'{"error": "request too large"}\n')
                    return
                try:
                    response = runner.handle(json.loads(line))
                except ValueError:
                    response = {"error": "request is not JSON"}
                self.wfile.write(json.dumps(response).encode() + b"\n")
                self.wfile.flush()

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    return Server((host, port), Handler)


def main(argv=None):
    parser = argparse.ArgumentParser(description="gpufleet kernel runner")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--workdir", default=os.getcwd())
    args = parser.parse_args(argv)
    with open(args.token_file) as fh:
        token = fh.read().strip()
    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(args.workdir)
    runner = Runner(token, args.workdir)
    try:
        server = make_server(runner, args.host, args.port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # The agent reads this exit code and starts the kernel again on another port.
        print(f"runner: port {args.port} is already in use", file=sys.stderr, flush=True)
        return EXIT_PORT_IN_USE
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # SIGTERM ends the kernel at once (exit code 0): stop a running batch command, then exit
    # without taking any lock the interrupted main thread might hold. SIGINT interrupts
    # user code only (Runner._on_sigint).
    signal.signal(signal.SIGTERM, lambda *_: runner.terminate())
    print(f"runner ready on {args.host}:{args.port} python={sys.executable}", flush=True)
    runner.serve_jobs()
    server.server_close()  # no shutdown(): it would wait for serve_forever's 0.5 s poll
    return 0


if __name__ == "__main__":
    sys.exit(main())
