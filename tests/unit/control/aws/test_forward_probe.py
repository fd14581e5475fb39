"""The forward probe's verdict (:mod:`control.aws.probe`): counted only under the lease
token it was taken with, a failure while leading held down as a standby, any target
answering is a pass. Rounds are real TCP connections on loopback (the namespace and the
forwarding path are the netns test's: ``tests/netns/test_partition.py``)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from control.aws.health import DataPathHealth
from control.aws.probe import HOLD_DOWN_S, ForwardProbe, endpoints


class Clock:
    def __init__(self) -> None:
        self.now = 5.0  # a freshly booted host: small monotonic values

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listening() -> Iterator[str]:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield f"127.0.0.1:{srv.getsockname()[1]}"


@pytest.fixture
def closed() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nobody listens once closed


def probe(*targets: str, token: list[int | None], clock: Clock) -> ForwardProbe:
    p = ForwardProbe(list(targets), timeout_s=0.5, clock=clock)
    p.counting = lambda: token[0]
    return p


def test_a_round_passes_when_any_target_answers(listening: str, closed: str) -> None:
    token: list[int | None] = [7]
    p = probe(closed, listening, token=token, clock=Clock())
    p._round(7)
    assert p.last is not None and p.last["ok"] and p.last["target"] == listening
    assert p.failure() is None and p.rounds == 1 and p.failures == 0


def test_a_failed_round_while_leading_names_every_target(closed: str) -> None:
    token: list[int | None] = [7]
    p = probe(closed, token=token, clock=Clock())
    p._round(7)
    reason = p.failure()
    assert reason is not None and reason.startswith(f"forward probe: {closed}: ")
    assert p.failures == 1
    assert p.status()["last"]["ok"] is False and p.status()["counting"] is True


def test_a_failure_under_an_earlier_token_does_not_count_for_the_next_leadership(
    closed: str,
) -> None:
    token: list[int | None] = [7]
    clock = Clock()
    p = probe(closed, token=token, clock=clock)
    p._round(7)
    token[0] = 9  # released, then led again: the old round says nothing of this one
    assert p.failure() is None


def test_after_a_counted_failure_a_standby_is_held_down(closed: str, listening: str) -> None:
    token: list[int | None] = [7]
    clock = Clock()
    p = probe(closed, token=token, clock=clock)
    p._round(7)
    token[0] = None  # the lease released: a standby now
    clock.now += HOLD_DOWN_S - 1
    held = p.failure()
    assert held is not None and "held down" in held
    clock.now += 1
    assert p.failure() is None  # eligible again
    # a pass while leading clears the leader's own verdict; the hold-down is for standbys
    p.targets = [(listening.split(":")[0], int(listening.split(":")[1]))]
    token[0] = 11
    p._round(11)
    assert p.failure() is None


def test_a_round_whose_leadership_changed_meanwhile_is_not_recorded(closed: str) -> None:
    token: list[int | None] = [7]
    p = probe(closed, token=token, clock=Clock())
    token[0] = None  # the round was started under 7; it ends after the release
    p._round(7)
    assert p.last is None and p.rounds == 0 and p.failure() is None


def test_a_probe_that_cannot_set_itself_up_is_reported_not_judged() -> None:
    """Its own fault (a probe_subnet in use, no CAP_SYS_ADMIN) must not take the lease
    from a gateway that forwards: it is in status, and the verdict stays the rounds'."""
    token: list[int | None] = [3]
    p = probe("198.51.100.10:443", token=token, clock=Clock())
    p.error = "cannot set up its namespace and spectra-probe: [Errno 17] File exists"
    assert p.failure() is None and p.status()["error"] == p.error


def test_the_data_path_health_reads_the_probes_verdict_last(closed: str, tmp_path: object) -> None:
    token: list[int | None] = [4]
    p = probe(closed, token=token, clock=Clock())
    forwarding = tmp_path / "ip_forward"  # type: ignore[operator]
    forwarding.write_text("1\n")
    health = DataPathHealth(
        "eth1", "eth0", link_up=lambda _: True, table_loaded=lambda: True,
        forwarding=forwarding, forward=p,
    )  # fmt: skip
    assert health() is True
    p._round(4)
    health._checked_at = None
    assert health() is False and (health.last_failure or "").startswith("forward probe: ")
    forwarding.write_text("0\n")  # a local failure is named first
    health._checked_at = None
    assert health() is False and health.last_failure == "IPv4 forwarding is off"


def test_the_veth_pair_takes_the_subnets_first_two_addresses() -> None:
    ours, theirs = endpoints(IPv4Network("198.18.255.252/30"))
    assert (str(ours), str(theirs)) == ("198.18.255.253/30", "198.18.255.254/30")
