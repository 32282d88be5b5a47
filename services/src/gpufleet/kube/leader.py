"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does.

    elector = LeaseElector(api, "kube-system", "gpufleet-scheduler", identity="host-a_1234")
    if elector.try_acquire_or_renew():
        ...   # lead until `elector.is_leader()` turns False

Rules:
- a Lease nobody holds, or whose holder has not renewed within its
  `leaseDurationSeconds`, may be taken; the write is a PUT with the Lease's
  resourceVersion, so two candidates racing for it cannot both win (one gets 409);
- the leader renews every `retry_period`; if it has not renewed successfully for
  `renew_deadline` (< lease duration) it stops leading *before* its lease can
  expire, so a standby that takes over never overlaps a leader that still acts;
- expiry is judged on this process's monotonic clock from the moment it last saw
  the Lease change, not on the holder's renewTime (clocks of two hosts differ).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from gpufleet.kube.api import KUBE_ERRORS, KubeApi

log = logging.getLogger("gpufleet.kube.leader")


def _micro_time() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(self, api: KubeApi, namespace: str, name: str, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 clock=time.monotonic) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._last_renewed: float | None = None  # when we last renewed as leader
        self.transitions = 0
        self.reachable = False  # the last round got an answer from the API

    def is_leader(self) -> bool:
        return self._last_renewed is not None and self.clock() - self._last_renewed < self.renew_deadline

    def _spec(self, lease: dict | None) -> dict:
        spec = dict((lease or {}).get("spec") or {})
        now = _micro_time()
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=int(self.lease_duration),
                    renewTime=now)
        return spec

    def try_acquire_or_renew(self) -> bool:
        """One round: take or renew the Lease if allowed. True while we lead."""
        try:
            lease = self.api.get_lease(self.namespace, self.name)
            self.reachable = True
            now = self.clock()
            if lease is None:
                self.api.create_lease(self.namespace, self.name, self._spec(None))
                return self._won(now)
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            seen = (holder, str(spec.get("renewTime")))
            if seen != self._observed:
                self._observed, self._observed_at = seen, now
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            expired = now - self._observed_at >= duration
            if holder and holder != self.identity and not expired:
                self._last_renewed = None
                return False
            lease["spec"] = self._spec(lease)
            self.api.replace_lease(lease)
            return self._won(now)
        except KUBE_ERRORS as exc:
            # 409: someone else wrote the Lease first; anything else: the API is unwell.
            log.info("lease %s/%s not acquired or renewed: %s", self.namespace, self.name, exc)
            self.reachable = getattr(exc, "status", None) is not None  # an HTTP answer, e.g. 409
            return self.is_leader()

    def _won(self, now: float) -> bool:
        if self._last_renewed is None:
            self.transitions += 1
            log.info("became leader of lease %s/%s as %s", self.namespace, self.name, self.identity)
        self._last_renewed = now
        return True

    def release(self) -> None:
        """Give the Lease up on a clean stop so a standby takes over at once."""
        if self._last_renewed is None:
            return
        self._last_renewed = None
        try:
            lease = self.api.get_lease(self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
                self.api.replace_lease(lease)
        except KUBE_ERRORS as exc:
            log.info("lease %s/%s not released: %s", self.namespace, self.name, exc)
