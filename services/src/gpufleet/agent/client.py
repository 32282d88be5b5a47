"""A small synchronous RPC client (stdlib only) used by `gpufleet agent call`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class RpcCallError(Exception):
    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status} {error.get('type', 'error')}: {error.get('message', '')}")
        self.status = status
        self.error = error


class AgentClient:
    def __init__(self, address: str, token: str, timeout: float = 120.0) -> None:
        if "://" not in address:
            address = "http://" + address
        if not address.startswith(("http://", "https://")):
            raise ValueError(f"agent address must be http(s): {address}")
        self.base = address.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, **params: Any) -> Any:
        body = json.dumps(params).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        # The scheme is checked in __init__ (http or https only).
        request = urllib.request.Request(f"{self.base}/rpc/{method}", data=body, method="POST",  # noqa: S310
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only
                return json.loads(response.read())["result"]
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read()).get("error", {})
            except ValueError:
                error = {"type": "http_error", "message": exc.reason}
            raise RpcCallError(exc.code, error) from None
