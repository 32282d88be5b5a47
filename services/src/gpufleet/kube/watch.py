"""Watches: the state of a set of objects kept current with one long request instead of polling.

    watch = Watch(api, PODS, namespace="gpufleet-kernels", label_selector="app=gpufleet-kernel")
    for event in watch:                 # blocks; ends after watch.stop() (from any thread)
        handle(event.type, event.object)

What it does, as client-go's reflector does:

- first a LIST (one request), whose items come out as ADDED events, then a
  WATCH from the list's resourceVersion — unless `resource_version` is given,
  then the watch starts there and no list is made;
- `allowWatchBookmarks`: BOOKMARK events move the resourceVersion forward
  without an object (not passed on), so a reconnect resumes where it was;
- every watch request has a deadline: the server ends it after
  `timeout_seconds`, and the client gives up on a silent connection after
  `timeout_seconds + request_timeout`; then the watch reconnects from the last
  resourceVersion;
- a resourceVersion the server no longer has (HTTP 410, or an ERROR event with
  code 410 "too old resource version") means events were missed: it LISTs
  again and emits the difference to what it had seen (ADDED / MODIFIED /
  DELETED), so a consumer's view never silently diverges;
- a failed request (connection refused, 5xx, a read timeout) is retried with
  capped backoff and jitter; `max_failures` in a row ends the watch with the
  last error.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import urllib3
from kubernetes.client.rest import ApiException

from gpufleet.kube.api import KubeApi, Resource

log = logging.getLogger("gpufleet.kube.watch")

HTTP_GONE = 410


@dataclass
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED
    object: dict

    @property
    def name(self) -> str:
        return self.object["metadata"]["name"]


class Expired(Exception):
    """The watch's resourceVersion is older than the server keeps (410): list again."""


def object_key(obj: dict) -> tuple[str | None, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace"), meta.get("name", "")


class Watch:
    """An iterator of WatchEvents for one resource (see module doc). Not reusable after stop()."""

    def __init__(self, api: KubeApi, resource: Resource, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None,
                 resource_version: str | None = None, timeout_seconds: int = 60,
                 max_failures: int | None = None, backoff_cap: float = 5.0,
                 on_sync: Callable[[], None] | None = None) -> None:
        self.api = api
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resource_version = resource_version
        self.timeout_seconds = int(timeout_seconds)
        self.max_failures = max_failures
        self.backoff_cap = backoff_cap
        self.on_sync = on_sync  # called after each LIST's events were yielded: the view is complete
        self.known: dict[tuple[str | None, str], dict] = {}  # what the consumer has been told exists
        self.lists = 0  # LIST requests made (the first, and one per 410)
        self.watches = 0  # WATCH requests made
        self.bookmarks = 0
        self._stopped = threading.Event()
        self._response = None
        self._lock = threading.Lock()

    # ---- control

    def stop(self) -> None:
        """End the iteration (safe from another thread; an open request is closed)."""
        self._stopped.set()
        with self._lock:
            response = self._response
        if response is not None:
            try:
                response.shutdown() if hasattr(response, "shutdown") else response.close()
            except Exception as exc:  # noqa: BLE001 — a dead connection may refuse; we are stopping anyway
                log.debug("closing the watch: %s", exc)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    # ---- iteration

    def __iter__(self) -> Iterator[WatchEvent]:
        failures = 0
        need_list = self.resource_version is None
        while not self._stopped.is_set():
            try:
                if need_list:
                    yield from self._relist()
                    need_list = False
                for event in self._watch_once():
                    failures = 0
                    yield event
                failures = 0  # the server ended the watch (timeoutSeconds): reconnect
            except Expired as exc:
                log.info("watch %s: %s; listing again", self.resource.plural, exc)
                need_list = True
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self._stopped.is_set():
                    break
                if isinstance(exc, ApiException) and exc.status == HTTP_GONE:
                    need_list = True
                    continue
                failures += 1
                if self.max_failures is not None and failures >= self.max_failures:
                    raise
                delay = random.uniform(0, min(self.backoff_cap, 0.2 * 2 ** failures))
                log.warning("watch %s failed (%s); retrying in %.1f s", self.resource.plural, exc, delay)
                self._stopped.wait(delay)

    def _relist(self) -> Iterator[WatchEvent]:
        items, version = self.api.list(self.resource, self.namespace, self.label_selector,
                                       self.field_selector)
        self.lists += 1
        fresh = {object_key(obj): obj for obj in items}
        events = []
        for key, obj in fresh.items():
            old = self.known.get(key)
            if old is None:
                events.append(WatchEvent("ADDED", obj))
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                events.append(WatchEvent("MODIFIED", obj))
        events.extend(WatchEvent("DELETED", obj) for key, obj in self.known.items() if key not in fresh)
        self.known = fresh
        self.resource_version = version
        yield from events
        if self.on_sync is not None:
            self.on_sync()

    def _watch_once(self) -> Iterator[WatchEvent]:
        query = {"watch": "true", "allowWatchBookmarks": "true", "resourceVersion": self.resource_version,
                 "timeoutSeconds": self.timeout_seconds, "labelSelector": self.label_selector,
                 "fieldSelector": self.field_selector}
        deadline = (self.api.request_timeout, self.timeout_seconds + self.api.request_timeout)
        response = self.api.send("GET", self.resource.path(self.namespace), query, timeout=deadline)
        self.watches += 1
        with self._lock:
            self._response = response
        try:
            if self._stopped.is_set():
                return
            buffer = b""
            for chunk in response.stream(8192, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    event = self._event(line)
                    if event is not None:
                        yield event
                    if self._stopped.is_set():
                        return
        finally:
            with self._lock:
                self._response = None
            response.release_conn()

    def _event(self, line: bytes) -> WatchEvent | None:
        if not line.strip():
            return None
        raw = json.loads(line)
        kind, obj = raw.get("type"), raw.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == HTTP_GONE:
                raise Expired(obj.get("message") or "resource version expired")
            raise ApiException(status=obj.get("code") or 500,
                               reason=f"{obj.get('reason')}: {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = version
        if kind == "BOOKMARK":
            self.bookmarks += 1
            return None
        key = object_key(obj)
        if kind == "DELETED":
            self.known.pop(key, None)
        else:
            self.known[key] = obj
        return WatchEvent(kind, obj)


def wait_for(api: KubeApi, resource: Resource, name: str, namespace: str | None, condition,
             timeout: float) -> dict:
    """Watch one object until `condition(obj)` is true; returns it. Raises TimeoutError or LookupError.

    One LIST (by name) and one WATCH; no polling. `condition` may raise to abort
    (e.g. a pod that failed will never be ready).
    """
    watch = Watch(api, resource, namespace, field_selector=f"metadata.name={name}",
                  timeout_seconds=max(1, int(timeout) + 1))
    timer = threading.Timer(timeout, watch.stop)
    timer.daemon = True
    timer.start()
    started = time.monotonic()
    try:
        for event in watch:
            if event.type == "DELETED":
                raise LookupError(f"{resource.kind.lower()} {name} was deleted")
            if condition(event.object):
                return event.object
    finally:
        timer.cancel()
        watch.stop()
    raise TimeoutError(f"{resource.kind.lower()} {name}: condition not met within "
                       f"{time.monotonic() - started:.0f} s")
