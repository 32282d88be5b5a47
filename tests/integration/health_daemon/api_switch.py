"""A loopback TCP front for the emulated Kubernetes API that can turn into a black hole.

    switch = ApiSwitch(kube_api.url).start()      # forwards to the emulator
    switch.black_hole()                            # accepts connections and never answers
    switch.forward()                               # answers again (new connections)
    switch.stop()

In black-hole mode every connection is accepted and held without reading or
answering — what a hung API server or a dead load balancer looks like to a
client — and connections relayed before are cut, so pooled ones cannot slip
through. Test helper of the health agent's chaos tests (threads, stopped by
stop(); nothing outlives the test).
"""

from __future__ import annotations

import selectors
import socket
import threading
from urllib.parse import urlparse


class ApiSwitch:
    def __init__(self, target_url: str):
        parsed = urlparse(target_url)
        self.target = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.mode = "forward"
        self.held: list[socket.socket] = []  # black-holed connections
        self.relayed: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, name="api-switch", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def start(self) -> ApiSwitch:
        self.thread.start()
        return self

    def black_hole(self) -> None:
        with self.lock:
            self.mode = "black-hole"
            relayed, self.relayed = self.relayed, []
        for sock in relayed:
            _close(sock)

    def forward(self) -> None:
        with self.lock:
            self.mode = "forward"

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        with self.lock:
            for sock in self.held + self.relayed:
                _close(sock)
            self.held, self.relayed = [], []
        _close(self.listener)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                if self.mode == "black-hole":
                    self.held.append(client)
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            with self.lock:
                self.relayed += [client, upstream]
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        try:
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while not self.stopping.is_set():
                for key, _ in selector.select(0.2):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            _close(client)
            _close(upstream)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
