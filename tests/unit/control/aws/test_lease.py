"""The per-AZ leader lease: two instances against one DynamoDB table on moto.

Time is an injected clock (wall + monotonic); nothing sleeps.
"""

from __future__ import annotations

from typing import Any

import pytest

from control.aws import (
    Lease,
    LeaseError,
    LeaseSettings,
    MemoryNotifier,
    SessionFactory,
    lease_timeouts,
)
from control.aws.lease import read_record, request_handover
from tests.unit.control.aws.conftest import FakeClock, SkewedClock


class Health:
    """A data-path health input the test flips."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok

    def __call__(self) -> bool:
        return self.ok


# The product gives a renewal one period (lease_timeouts(1.0)); the tests' clock is fake
# and only moto's answers are real: on a loaded CI host one can take over a second, and a
# release that timed out would look like a lease bug (seen once).
MOTO_LIMITS = lease_timeouts(5.0)


def make(
    factory: SessionFactory,
    table: str,
    holder: str,
    clock: Any,
    health: Health | None = None,
    notifier: MemoryNotifier | None = None,
    key: str = "eu-west-1a",
    **settings: Any,
) -> Lease:
    options: dict[str, Any] = {"health_failures": 2, "health_successes": 2, **settings}
    return Lease(
        factory.instance_client("dynamodb", MOTO_LIMITS),
        LeaseSettings(table=table, key=key, holder=holder, **options),
        health or Health(),
        notifier=notifier,
        clock=clock,
    )


def tick(clock: FakeClock, *leases: Lease, seconds: float = 1.0) -> None:
    for lease in leases:
        lease.step()
    clock.advance(seconds)


def warm(clock: FakeClock, *leases: Lease) -> None:
    """Enough steps for every lease to pass its health_successes."""
    for _ in range(max(lease.settings.health_successes for lease in leases)):
        tick(clock, *leases)


def test_exactly_one_leads(factory: SessionFactory, lease_table: str, clock: FakeClock) -> None:
    events = MemoryNotifier()
    a = make(factory, lease_table, "i-a", clock, notifier=events)
    b = make(factory, lease_table, "i-b", clock, notifier=events)
    assert not a.step()  # a fresh instance is not eligible before health_successes
    warm(clock, a, b)
    assert [a.is_leader, b.is_leader] == [True, False]
    assert a.token == 1 and b.token is None
    assert [(e.kind, e.holder, e.previous, e.token) for e in events.events] == [
        ("acquired", "i-a", None, 1)
    ]
    assert b.status()["state"] == "standby" and b.status()["leader"] == "i-a"
    assert a.status()["state"] == "leader" and a.status()["counters"]["takeovers"] == 1


def test_simultaneous_contenders_one_wins(
    factory: SessionFactory, lease_table: str, clock: FakeClock
) -> None:
    """Both read an absent item, both write: the condition lets exactly one through."""
    a = make(factory, lease_table, "i-a", clock, health_successes=1)
    b = make(factory, lease_table, "i-b", clock, health_successes=1)
    a._sample_health(), b._sample_health()
    a._acquire(None, "attribute_not_exists(#k)", {}, "acquired", "race")
    b._acquire(None, "attribute_not_exists(#k)", {}, "acquired", "race")
    assert [a.is_leader, b.is_leader] == [True, False]


def test_standby_takes_over_after_expiry_plus_skew_with_a_higher_token(
    factory: SessionFactory, lease_table: str, clock: FakeClock
) -> None:
    notifier = MemoryNotifier()
    a = make(factory, lease_table, "i-a", clock, duration_s=5.0, skew_margin_s=1.0)
    b = make(
        factory, lease_table, "i-b", clock, notifier=notifier, duration_s=5.0, skew_margin_s=1.0
    )
    warm(clock, a, b)
    old = a.token
    assert old is not None
    expiry = a.status()["expires"]
    # a stops renewing (hung, or cut off): b waits for expiry + the skew margin, no less
    while clock.time() <= expiry + 1.0:
        b.step()
        assert not b.is_leader
        clock.advance(0.5)
    b.step()
    assert b.is_leader and b.token == old + 1
    event = notifier.events[-1]
    assert (event.kind, event.previous, event.token, event.reason) == (
        "took_over",
        "i-a",
        2,
        "expired",
    )
    # a never learnt: its own clock says the lease ran out, so it is not leader either
    assert a.token is None
    a.step()
    assert a.status()["counters"]["lost"] == 1 and not a.is_leader


def test_stale_leader_cannot_pass_the_fence(
    factory: SessionFactory, lease_table: str, clock: FakeClock
) -> None:
    a = make(factory, lease_table, "i-a", clock)
    b = make(factory, lease_table, "i-b", clock)
    warm(clock, a, b)
    stale = a.token
    assert stale is not None and a.still_holds(stale)
    for _ in range(7):
        tick(clock, b)
    assert b.is_leader and b.token is not None
    assert not a.still_holds(stale)  # the route writer of a must not write
    assert b.still_holds(b.token)
    assert not b.still_holds(stale)


def test_clock_skew_does_not_cause_an_early_takeover(
    factory: SessionFactory, lease_table: str, clock: FakeClock
) -> None:
    """b's wall clock runs 0.9 s ahead; with a 1 s margin it still waits for a's expiry."""
    a = make(factory, lease_table, "i-a", clock, duration_s=4.0, skew_margin_s=1.0)
    b = make(
        factory, lease_table, "i-b", SkewedClock(clock, 0.9), duration_s=4.0, skew_margin_s=1.0
    )
    warm(clock, a, b)
    assert a.is_leader
    expiry = a.status()["expires"]
    while clock.time() < expiry:  # a is silent from here; b keeps trying
        b.step()
        assert not b.is_leader
        clock.advance(0.25)
    for _ in range(8):
        if b.step():
            break
        clock.advance(0.25)
    assert b.is_leader and clock.time() > expiry


def test_no_takeover_in_a_steady_run(
    factory: SessionFactory, lease_table: str, clock: FakeClock
) -> None:
    notifier = MemoryNotifier()
    a = make(factory, lease_table, "i-a", clock, notifier=notifier)
    b = make(factory, lease_table, "i-b", clock, notifier=notifier)
    warm(clock, a, b)
    for _ in range(200):
        tick(clock, a, b)
    assert a.is_leader and a.token == 1 and not b.is_leader
    assert [e.kind for e in notifier.events] == ["acquired"]
    assert b.status()["counters"] == {
        "takeovers": 0,
        "releases": 0,
        "lost": 0,
        "renew_errors": 0,
        "deferrals": 0,
    }


def test_health_hysteresis(factory: SessionFactory, lease_table: str, clock: FakeClock) -> None:
    health_a = Health()
    notifier = MemoryNotifier()
    a = make(
        factory,
        lease_table,
        "i-a",
        clock,
        health_a,
        notifier,
        health_failures=3,
        health_successes=3,
    )
    b = make(
        factory, lease_table, "i-b", clock, notifier=notifier, health_failures=3, health_successes=3
    )
    warm(clock, a, b)
    assert a.is_leader
    # failures shorter than health_failures do not move the lease
    for flaps in range(5):
        health_a.ok = False
        tick(clock, a, b)
        tick(clock, a, b)
        health_a.ok = True
        tick(clock, a, b)
        assert a.is_leader, flaps
    health_a.ok = False
    for _ in range(3):
        tick(clock, a, b)
    assert not a.is_leader
    assert a.status()["state"] == "ineligible"
    tick(clock, b)  # released (expires = 0): b takes over at once, no expiry wait
    assert b.is_leader and b.token == 2
    assert [(e.kind, e.holder) for e in notifier.events][-2:] == [
        ("released", "i-a"),
        ("took_over", "i-b"),
    ]
    assert notifier.events[-1].reason == "released"
    # a recovers: eligible after 3 successes, but it does not take the lease back
    health_a.ok = True
    for _ in range(10):
        tick(clock, a, b)
    assert a.status()["state"] == "standby" and b.is_leader


def test_fail_back_only_when_configured(
    factory: SessionFactory, lease_table: str, clock: FakeClock
) -> None:
    for fail_back, key in ((False, "eu-west-1a"), (True, "eu-west-1b")):
        table_clock = FakeClock()
        health_p = Health()
        p = make(
            factory,
            lease_table,
            "i-pref",
            table_clock,
            health_p,
            None,
            key,
            preferred=True,
            fail_back=fail_back,
        )
        o = make(factory, lease_table, "i-other", table_clock, None, None, key, fail_back=fail_back)
        warm(table_clock, p, o)
        assert p.is_leader
        health_p.ok = False
        for _ in range(3):
            tick(table_clock, p, o)
        assert o.is_leader
        health_p.ok = True
        for _ in range(5):
            tick(table_clock, p, o)
        if fail_back:
            assert p.is_leader and p.token == 3
            assert p.status()["events"][-1]["kind"] == "took_back"
            o.step()
            assert not o.is_leader and o.status()["counters"]["lost"] == 1
            for _ in range(20):  # and no flapping afterwards
                tick(table_clock, p, o)
            assert p.is_leader and p.token == 3
        else:
            assert o.is_leader and not p.is_leader


def test_renewal_errors_keep_leading_until_expiry(
    factory: SessionFactory, lease_table: str, clock: FakeClock, moto_endpoint: str
) -> None:
    from tests.fakes.awsfault import Fault, FaultProxy
    from tests.unit.control.aws.conftest import REGION, base_session

    with FaultProxy(moto_endpoint) as proxy:
        flaky = SessionFactory(REGION, proxy.url, base=base_session())
        a = make(flaky, lease_table, "i-a", clock, duration_s=5.0)
        warm(clock, a)
        assert a.is_leader
        proxy.faults.append(Fault("dynamodb", "UpdateItem", "InternalServerError", 500))
        for _ in range(4):  # acquired one second ago, valid for 5
            assert a.step()
            clock.advance(1.0)
        assert not a.step()  # one late try at expiry, failing too: lost
        status = a.status()
        assert status["counters"]["renew_errors"] == 5 and status["counters"]["lost"] == 1
        assert "InternalServerError" in status["error"]


def test_missing_table_is_named(factory: SessionFactory, clock: FakeClock) -> None:
    a = make(factory, "no-such-lease-table", "i-a", clock)
    warm(clock, a)
    status = a.status()
    assert status["state"] == "error"
    assert "lease table 'no-such-lease-table' does not exist" in status["error"]
    assert "ResourceNotFoundException" in status["error"]
    with pytest.raises(LeaseError, match="does not exist"):
        a.still_holds(1)


def test_a_broken_health_probe_counts_as_failure(
    factory: SessionFactory, lease_table: str, clock: FakeClock
) -> None:
    def probe() -> bool:
        raise OSError("probe socket gone")

    a = Lease(
        factory.instance_client("dynamodb"),
        LeaseSettings(table=lease_table, key="eu-west-1c", holder="i-a", health_successes=1),
        probe,
        clock=clock,
    )
    a.step()
    assert not a.is_leader
    assert a.status()["health"]["last_error"] == "health check raised OSError: probe socket gone"


def test_release_on_stop_hands_over(
    factory: SessionFactory, lease_table: str, clock: FakeClock
) -> None:
    import threading

    a = make(factory, lease_table, "i-a", clock)
    b = make(factory, lease_table, "i-b", clock)
    warm(clock, a, b)
    stop = threading.Event()
    stop.set()
    a.run(stop)  # stopped at once: releases
    assert not a.is_leader
    b.step()
    assert b.is_leader


def _three(factory: SessionFactory, table: str, clock: FakeClock) -> tuple[Lease, Lease, Lease]:
    a, b, c = (make(factory, table, f"i-{n}", clock) for n in "abc")
    warm(clock, a, b, c)
    assert [a.is_leader, b.is_leader, c.is_leader] == [True, False, False]
    return a, b, c


def test_a_requested_hand_over_goes_to_the_named_instance(
    factory: SessionFactory, lease_table: str, clock: FakeClock
) -> None:
    a, b, c = _three(factory, lease_table, clock)
    client = factory.instance_client("dynamodb", MOTO_LIMITS)
    request_handover(client, lease_table, "eu-west-1a", holder="i-a", to="i-c",
                     until=clock.time() + 10, now=clock.time())  # fmt: skip
    assert b.status()["handover"] is None  # b has not read the item since
    tick(clock, a)  # the renewal's answer carries the request: a releases
    assert not a.is_leader and a.status()["events"][-1]["reason"] == "hand-over to i-c requested"
    assert a.status()["handover"] == {"from": "i-a", "to": "i-c"}
    for _ in range(3):  # a released lease, but b and a stand back for c
        tick(clock, a, b)
        assert not (a.is_leader or b.is_leader)
    tick(clock, c)
    assert c.is_leader and c.status()["events"][-1]["kind"] == "took_over"
    record = read_record(client, lease_table, "eu-west-1a")
    assert record is not None and record.holder == "i-c" and record.token == 2
    assert record.handover_to is None and not record.handover_active(clock.time())


def test_a_hand_over_nobody_takes_ends_at_its_deadline(
    factory: SessionFactory, lease_table: str, clock: FakeClock
) -> None:
    a, b, _c = _three(factory, lease_table, clock)
    client = factory.instance_client("dynamodb", MOTO_LIMITS)
    request_handover(client, lease_table, "eu-west-1a", holder="i-a", to="i-c",
                     until=clock.time() + 4, now=clock.time())  # fmt: skip
    for _ in range(4):  # c never comes
        tick(clock, a, b)
    assert not (a.is_leader or b.is_leader)
    tick(clock, a, b)  # the request lapsed: the lease is free for anyone again
    assert a.is_leader or b.is_leader


def test_a_hand_over_needs_a_live_holder(
    factory: SessionFactory, lease_table: str, clock: FakeClock
) -> None:
    _three(factory, lease_table, clock)
    client = factory.instance_client("dynamodb", MOTO_LIMITS)
    with pytest.raises(LeaseError, match="i-b does not hold a live lease"):
        request_handover(client, lease_table, "eu-west-1a", holder="i-b", to="i-c",
                         until=clock.time() + 4, now=clock.time())  # fmt: skip
    record = read_record(client, lease_table, "eu-west-1a")
    assert record is not None and record.holder == "i-a" and record.handover_to is None
