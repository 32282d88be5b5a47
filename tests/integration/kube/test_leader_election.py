"""LeaseElector against the emulator's Lease (resourceVersion conflicts), with a fake clock."""

from __future__ import annotations

import pytest
from gpufleet.kube.api import KubeApi
from gpufleet.kube.leader import LeaseElector

pytestmark = [pytest.mark.integration]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def electors(kube_api, clock):
    api = KubeApi(kube_api.api_client)
    make = lambda who: LeaseElector(api, "kube-system", "test-lease", who, lease_duration=15,  # noqa: E731
                                    renew_deadline=10, retry_period=2, clock=clock)
    return make("a"), make("b")


def test_one_leader_until_it_stops_renewing(kube_api):
    clock = Clock()
    a, b = electors(kube_api, clock)
    assert a.try_acquire_or_renew() and a.is_leader()
    assert not b.try_acquire_or_renew()
    clock.now += 14  # a has not renewed, but its lease has not run out for b yet
    assert not b.try_acquire_or_renew()
    # a's own view ends earlier (renew deadline 10 s < lease 15 s): never two leaders at once.
    assert not a.is_leader()
    clock.now += 1.5
    assert b.try_acquire_or_renew() and b.is_leader()
    lease = kube_api.get_object("leases", "test-lease", "kube-system")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew()


def test_renewing_keeps_the_lease(kube_api):
    clock = Clock()
    a, b = electors(kube_api, clock)
    assert a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    for _ in range(10):
        clock.now += 2
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()


def test_a_stale_write_loses_the_race(kube_api):
    """Two candidates read the same expired Lease; the PUT with the older resourceVersion gets 409."""
    clock = Clock()
    a, b = electors(kube_api, clock)
    assert a.try_acquire_or_renew()
    api = KubeApi(kube_api.api_client)
    stale = api.get_lease("kube-system", "test-lease")
    clock.now += 2
    assert a.try_acquire_or_renew()  # a renews: the resourceVersion moves on
    stale["spec"]["holderIdentity"] = "b"
    with pytest.raises(Exception) as raised:
        api.replace_lease(stale)
    assert getattr(raised.value, "status", None) == 409


def test_release_lets_a_standby_lead_at_once(kube_api):
    clock = Clock()
    a, b = electors(kube_api, clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert not a.is_leader()
    assert b.try_acquire_or_renew()


def test_bad_timings_are_refused():
    with pytest.raises(ValueError):
        LeaseElector(None, "ns", "n", "me", lease_duration=10, renew_deadline=10, retry_period=2)
