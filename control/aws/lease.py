"""The per-AZ leader lease: one DynamoDB item, conditional writes, a fencing token.

One item per availability zone (partition key ``lease_key``) holds ``holder`` (instance
id), ``expires`` (wall-clock epoch seconds), ``token`` (the fencing token) and
``preferred``.  Every change is a conditional write ("Condition expressions" and
"Conditional writes" in the DynamoDB developer guide), so of two instances acting on the
same item exactly one succeeds:

* acquire an absent item: ``attribute_not_exists(lease_key)``, token 1;
* take over an expired or released item: ``token = :seen AND expires < :now - skew``,
  token + 1 (the compare-and-swap on the token also orders two standbys);
* take a live lease back (only a ``preferred`` instance, only with ``fail_back``, only from
  a holder that is not preferred): ``token = :seen AND holder = :seen_holder``, token + 1;
* renew: ``holder = :me AND token = :mine``, a new ``expires``;
* release: the same condition, ``expires = 0`` (the item and its token stay, so tokens
  only ever grow);
* fence (:meth:`Lease.still_holds`): the same condition plus ``expires > :now``, writing
  ``fenced`` -- the route writer calls it right before a route change, so a leader that
  lost the lease (and does not know yet) cannot write routes;
* request a hand-over (:func:`request_handover`, an operator's call, e.g. a live resize):
  ``holder = :from AND expires > :now``, writing ``handover_from``, ``handover_to`` and
  ``handover_until``. The holder sees it in its next renewal's answer and releases; until
  ``handover_until`` only ``handover_to`` contends, so the lease goes to the instance the
  operator named and not back to the one that left. Any acquisition removes the request.

Time.  ``expires`` is wall-clock epoch seconds because other instances compare it with
their own clocks; machine uptime (a monotonic clock) means nothing on another machine.
Clock skew is explicit: a standby takes over only ``skew_margin_s`` after the expiry.
The holder itself trusts its lease for ``duration_s`` from the moment it sent the write,
measured on its monotonic clock, so a wall-clock step on the holder cannot stretch it.

Health.  The injected :class:`HealthCheck` is sampled on every step; ``health_failures``
failures in a row make the instance ineligible (a leader releases the lease) and
``health_successes`` successes in a row make it eligible again (a fresh instance starts
ineligible).  Every change of leadership is an event: a log line, a status entry, a
counter and the :class:`~control.aws.notify.Notifier`.

Agent restarts.  The holder writes its own ``address`` (its inside IP) into the item.
A standby that finds the lease expired -- not released -- asks ``holder_alive`` whether
that address still answers (an ICMP echo the holder's kernel answers with or without its
agent): while it does, for at most ``restart_grace_s`` past the expiry, the standby waits
instead of taking over. A killed instance stops answering at once, so the failover gap
stays the lease's; a killed agent comes back within the grace, finds the lease still its
own (same holder, same token: nobody took it) and renews it (:meth:`Lease.resume`, even
expired). A dead or hung agent on a live kernel costs at most the grace, then the
standby takes over as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from control.aws.notify import EventKind, LeaseEvent, Notifier, NullNotifier
from control.aws.session import describe_error, error_code

log = logging.getLogger("spectra.aws")

HOLDER_MISSES = 3  # silent echoes in a row that end a restart grace

KEY = "lease_key"
_NAMES = {"#k": KEY, "#h": "holder", "#t": "token", "#e": "expires", "#p": "preferred"}
EVENTS_KEPT = 20


class LeaseError(Exception):
    """The lease table could not be read or written (missing table, denied, unreachable)."""


class Clock(Protocol):
    """Wall-clock epoch seconds (compared across machines) and a local monotonic clock."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The machine's clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class HealthCheck(Protocol):
    """The instance's own data-path health: ``True`` when it can forward traffic."""

    def __call__(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """One instance's view of one lease (the document's ``aws.lease`` plus who and where)."""

    table: str
    key: str  # the availability zone
    holder: str  # this instance's id
    renew_interval_s: float = 1.0
    duration_s: float = 5.0
    skew_margin_s: float = 1.0
    fail_back: bool = False
    preferred: bool = False
    health_failures: int = 3
    health_successes: int = 3
    address: str | None = None  # this instance's inside IP, written into the item
    restart_grace_s: float = 0.0  # see the module doc; 0: take over at expiry


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The lease item as read from the table."""

    holder: str | None
    token: int
    expires: float
    preferred: bool
    handover_from: str | None = None
    handover_to: str | None = None
    handover_until: float = 0.0
    address: str | None = None  # the holder's inside IP (its liveness is asked there)

    def handover_active(self, now: float) -> bool:
        """Whether a hand-over request stands (see :func:`request_handover`)."""
        return self.handover_to is not None and self.handover_until > now


def parse_record(item: dict[str, Any] | None) -> LeaseRecord | None:
    """A :class:`LeaseRecord` from a DynamoDB item (``GetItem``, ``ReturnValues``)."""
    if not item or "token" not in item:
        return None
    return LeaseRecord(
        holder=item["holder"]["S"] if "holder" in item else None,
        token=int(item["token"]["N"]),
        expires=float(item["expires"]["N"]),
        preferred=bool(item.get("preferred", {}).get("BOOL", False)),
        handover_from=item["handover_from"]["S"] if "handover_from" in item else None,
        handover_to=item["handover_to"]["S"] if "handover_to" in item else None,
        handover_until=float(item["handover_until"]["N"]) if "handover_until" in item else 0.0,
        address=item.get("address", {}).get("S") or None,
    )


def read_record(client: Any, table: str, key: str) -> LeaseRecord | None:
    """The lease item of ``key`` (a consistent read), ``None`` when nobody ever held it."""
    item = client.get_item(TableName=table, Key={KEY: {"S": key}}, ConsistentRead=True).get("Item")
    return parse_record(item)


def request_handover(
    client: Any, table: str, key: str, *, holder: str, to: str, until: float, now: float
) -> None:
    """Ask ``holder``, the live leader of ``key``, to hand the lease to ``to`` (see the
    module doc). Raises :class:`LeaseError` when ``holder`` does not hold a live lease."""
    try:
        client.update_item(
            TableName=table,
            Key={KEY: {"S": key}},
            UpdateExpression=(
                "SET handover_from = :from, handover_to = :to, handover_until = :until"
            ),
            ConditionExpression="#h = :from AND #e > :now",
            ExpressionAttributeNames={"#h": "holder", "#e": "expires"},
            ExpressionAttributeValues={
                ":from": {"S": holder},
                ":to": {"S": to},
                ":until": _num(until),
                ":now": _num(now),
            },
        )
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            raise LeaseError(
                f"lease {key}: {holder} does not hold a live lease; no hand-over requested"
            ) from exc
        raise LeaseError(f"lease table {table!r}: {describe_error(exc)}") from exc
    except BotoCoreError as exc:
        raise LeaseError(f"lease table {table!r}: {describe_error(exc)}") from exc


def create_table(client: Any, table: str) -> None:
    """Create the lease table (on-demand) -- for the lab and the tests; in AWS the
    deployment's CloudFormation stack creates it."""
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": KEY, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": KEY, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def _num(value: float) -> dict[str, str]:
    return {"N": f"{value:.3f}"}


class Lease:
    """The leader lease of ``settings.key`` for ``settings.holder`` (see the module doc).

    ``client`` is a DynamoDB client of the instance role (leader election is the
    instance's own business) with short timeouts; :meth:`step` is one renewal period,
    :meth:`run` calls it every ``renew_interval_s``."""

    def __init__(
        self,
        client: Any,
        settings: LeaseSettings,
        health: HealthCheck,
        *,
        notifier: Notifier | None = None,
        clock: Clock | None = None,
        holder_alive: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self._holder_alive = holder_alive
        self._client = client
        self._health = health
        self._notifier: Notifier = notifier or NullNotifier()
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._token: int | None = None
        self._valid_until = 0.0  # monotonic
        self._expires = 0.0  # wall clock, as written
        self._eligible = False
        self._failures = 0
        self._successes = 0
        self._health_error: str | None = None
        self._seen: LeaseRecord | None = None
        self._error: str | None = None
        self._events: deque[LeaseEvent] = deque(maxlen=EVENTS_KEPT)
        self._deferred: tuple[str, int, float] | None = None  # holder, token, since (wall)
        self._misses = 0  # the deferred holder's silent echoes in a row
        self.counters = {
            "takeovers": 0, "releases": 0, "lost": 0, "renew_errors": 0, "deferrals": 0
        }  # fmt: skip

    # -- what the route writer uses ----------------------------------------------------

    @property
    def token(self) -> int | None:
        """The fencing token while this instance leads, else ``None``."""
        with self._lock:
            if self._token is not None and self._clock.monotonic() < self._valid_until:
                return self._token
            return None

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    def resume(self) -> bool:
        """After an agent restart: when the table says this instance still holds a live
        lease, keep it (same token, eligible; the caller checked the pinned data plane)
        instead of waiting ``health_successes`` periods while it runs out. ``True`` if
        resumed; a renewal follows at once."""
        with self._lock:
            try:
                record = self._read()
            except (ClientError, BotoCoreError) as exc:
                self._error = self._describe(exc)
                return False
            now, mono = self._clock.time(), self._clock.monotonic()
            # expired is fine while nobody took it (the renewal's condition says so);
            # released (expires 0) was given up on purpose
            if record is None or record.holder != self.settings.holder or record.expires <= 0:
                log.info(
                    "lease %s: nothing to resume (held by %s, expires %s, now %.3f)",
                    self.settings.key,
                    record.holder if record else None,
                    record.expires if record else None,
                    now,
                )
                return False
            self._seen = record
            self._token, self._eligible, self._successes = record.token, True, 0
            self._valid_until = mono + max(0.0, record.expires - now)
            self._expires = record.expires
            self._renew()
            if self._token is None:
                return False
            self._emit("resumed", self.settings.holder, record.token, "agent restarted")
            return True

    def inherit(self, previous: Lease) -> None:
        """Carry the counters and events of the lease this one replaces (the agent
        rebuilt its AWS side for a new document: the same instance, the same history)."""
        with self._lock, previous._lock:
            self.counters = {k: self.counters[k] + v for k, v in previous.counters.items()}
            self._events = deque([*previous._events, *self._events], maxlen=EVENTS_KEPT)

    def contend_due_in(self) -> float | None:
        """Seconds until the lease another instance holds may be taken over (its expiry
        plus the skew margin, as last read); ``None`` while leading or before a read."""
        with self._lock:
            seen = self._seen
            if self._token is not None or seen is None or seen.holder == self.settings.holder:
                return None
            if self._deferred is not None:  # asking the holder once a period is enough
                return None
            return seen.expires + self.settings.skew_margin_s - self._clock.time()

    def still_holds(self, token: int) -> bool:
        """Whether the table still says this instance holds the lease with ``token`` and
        it has not expired: a conditional write, so the answer is the table's, not ours.
        Raises :class:`LeaseError` when the table cannot answer (write nothing then)."""
        now = self._clock.time()
        try:
            self._client.update_item(
                TableName=self.settings.table,
                Key={KEY: {"S": self.settings.key}},
                UpdateExpression="SET fenced = :now",
                ConditionExpression="#h = :me AND #t = :tok AND #e > :now",
                ExpressionAttributeNames={"#h": "holder", "#t": "token", "#e": "expires"},
                ExpressionAttributeValues={
                    ":me": {"S": self.settings.holder},
                    ":tok": {"N": str(token)},
                    ":now": _num(now),
                },
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                log.warning("fencing token %d of %s is stale", token, self.settings.key)
                return False
            raise LeaseError(self._describe(exc)) from exc
        except BotoCoreError as exc:
            raise LeaseError(self._describe(exc)) from exc
        return True

    # -- one period ----------------------------------------------------------------------

    def step(self) -> bool:
        """Sample health, then renew, release, acquire or stand by; ``True`` if leading."""
        with self._lock:
            self._sample_health()
            if self._token is not None:
                if self._clock.monotonic() >= self._valid_until:
                    # late (a slow write, a stalled process): still ours if nobody took
                    # it -- the renewal's condition is holder and token, not expiry
                    self._renew()
                    if self._token is not None and self._clock.monotonic() >= self._valid_until:
                        self._lost("the lease ran out before a renewal succeeded")
                elif not self._eligible:
                    self.release(
                        f"health check failed {self.settings.health_failures} times in a "
                        f"row: {self._health_error}"
                    )
                else:
                    self._renew()
                    asked = self._seen
                    now = self._clock.time()
                    if self._token is not None and asked and asked.handover_active(now):
                        self.release(f"hand-over to {asked.handover_to} requested")
                return self._token is not None
            if self._eligible:
                self._contend()
            return self._token is not None

    def run(self, stop: threading.Event, *, release_on_stop: bool = True) -> None:
        """Call :meth:`step` every ``renew_interval_s`` until ``stop`` is set."""
        interval = self.settings.renew_interval_s
        next_at = self._clock.monotonic()
        while not stop.is_set():
            self.step()
            next_at += interval
            wait = next_at - self._clock.monotonic()
            if wait < 0:  # fell behind: do not burst to catch up
                next_at, wait = self._clock.monotonic(), 0.0
            stop.wait(wait)
        if release_on_stop:
            self.release("stopping")

    def release(self, reason: str = "released") -> None:
        """Give the lease up now (expires = 0) so a standby takes over at once; the
        instance is ineligible until ``health_successes`` good checks in a row."""
        with self._lock:
            self._eligible, self._successes = False, 0
            token = self._token
            if token is None:
                return
            self._token = None
            try:
                self._write(
                    "SET #e = :zero",
                    "#h = :me AND #t = :tok",
                    {
                        ":me": {"S": self.settings.holder},
                        ":tok": {"N": str(token)},
                        ":zero": _num(0),
                    },
                )
            except (ClientError, BotoCoreError) as exc:  # it runs out by itself then
                log.warning("lease %s: release not written: %s", self.settings.key, exc)
            self.counters["releases"] += 1
            self._emit("released", self.settings.holder, token, reason)

    # -- internals -----------------------------------------------------------------------

    def _sample_health(self) -> None:
        try:
            healthy = bool(self._health())
            reason = getattr(self._health, "last_failure", None)  # DataPathHealth's
            self._health_error = None if healthy else (reason or "health check failed")
        except Exception as exc:  # a broken probe counts as a failed one
            healthy = False
            self._health_error = f"health check raised {type(exc).__name__}: {exc}"
        if healthy:
            self._failures, self._successes = 0, self._successes + 1
            if not self._eligible and self._successes >= self.settings.health_successes:
                self._eligible = True
                log.info("lease %s: %s is eligible", self.settings.key, self.settings.holder)
        else:
            self._successes, self._failures = 0, self._failures + 1
            if self._eligible and self._failures >= self.settings.health_failures:
                self._eligible = False
                log.warning(
                    "lease %s: %s is not eligible: %s",
                    self.settings.key,
                    self.settings.holder,
                    self._health_error,
                )

    def _describe(self, exc: BaseException) -> str:
        if error_code(exc) == "ResourceNotFoundException":
            return (
                f"lease table {self.settings.table!r} does not exist "
                f"(expected a table with partition key {KEY} (S)): {describe_error(exc)}"
            )
        return f"lease table {self.settings.table!r}: {describe_error(exc)}"

    def _write(
        self, update: str, condition: str, values: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        answer: dict[str, Any] = self._client.update_item(
            TableName=self.settings.table,
            Key={KEY: {"S": self.settings.key}},
            UpdateExpression=update,
            ConditionExpression=condition,
            ExpressionAttributeNames={
                k: v for k, v in _NAMES.items() if k in update or k in condition
            },
            ExpressionAttributeValues=values,
            **extra,
        )
        return answer

    def _read(self) -> LeaseRecord | None:
        return read_record(self._client, self.settings.table, self.settings.key)

    def _renew(self) -> None:
        token = self._token
        assert token is not None
        now, mono = self._clock.time(), self._clock.monotonic()
        expires = now + self.settings.duration_s
        try:
            answer = self._write(
                "SET #e = :exp, renewed = :now",
                "#h = :me AND #t = :tok",
                {
                    ":me": {"S": self.settings.holder},
                    ":tok": {"N": str(token)},
                    ":exp": _num(expires),
                    ":now": _num(now),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                self._lost("another instance holds the lease now")
                return
            self._renew_failed(exc)
            return
        except BotoCoreError as exc:
            self._renew_failed(exc)
            return
        self._valid_until, self._expires, self._error = (
            mono + self.settings.duration_s,
            expires,
            None,
        )
        self._seen = parse_record(answer.get("Attributes")) or self._seen

    def _renew_failed(self, exc: BaseException) -> None:
        self.counters["renew_errors"] += 1
        self._error = self._describe(exc)
        log.warning(
            "lease %s: renewal failed, still leading until expiry: %s",
            self.settings.key,
            self._error,
        )

    def _lost(self, reason: str) -> None:
        token = self._token or 0
        self._token = None
        self.counters["lost"] += 1
        self._emit("lost", self.settings.holder, token, reason)

    def _contend(self) -> None:
        s = self.settings
        try:
            record = self._read()
        except (ClientError, BotoCoreError) as exc:
            self._error = self._describe(exc)
            log.error("lease %s: %s", s.key, self._error)
            return
        self._seen, self._error = record, None
        now = self._clock.time()
        if record is None or record.expires + s.skew_margin_s >= now:
            self._deferred = None  # the holder came back (or nobody holds it)
        me = {":me": {"S": s.holder}}
        if record is not None and record.handover_active(now) and record.handover_to != s.holder:
            return  # the lease is being handed to another instance: stand back
        if record is None:
            self._acquire(None, "attribute_not_exists(#k)", {}, "acquired", "nobody held it")
        elif record.holder == s.holder:  # ours from before a restart: a new token
            values = {":seen": {"N": str(record.token)}, **me}
            self._acquire(record, "#t = :seen AND #h = :me", values, "acquired", "restarted")
        elif record.expires + s.skew_margin_s < now:
            if self._defer(record, now):
                return
            values = {":seen": {"N": str(record.token)}, ":deadline": _num(now - s.skew_margin_s)}
            why = "released" if record.expires == 0 else "expired"
            self._acquire(record, "#t = :seen AND #e < :deadline", values, "took_over", why)
        elif s.fail_back and s.preferred and not record.preferred:
            values = {":seen": {"N": str(record.token)}, ":prev": {"S": record.holder or ""}}
            self._acquire(
                record,
                "#t = :seen AND #h = :prev",
                values,
                "took_back",
                "fail_back to the preferred instance",
            )

    def _defer(self, record: LeaseRecord, now: float) -> bool:
        """Whether to leave an expired lease to its holder a while longer: its agent
        may be restarting while its kernel forwards (see the module doc). A holder not
        answering the first echo is taken over at once (a dead instance); one that
        answered is given up only after :data:`HOLDER_MISSES` silent echoes in a row
        (a loaded host may miss one)."""
        grace, ask = self.settings.restart_grace_s, self._holder_alive
        if record.expires == 0 or not grace or ask is None or record.address is None:
            return False
        key = (record.holder or "", record.token)
        deferring = self._deferred is not None and self._deferred[:2] == key
        if now < record.expires + self.settings.skew_margin_s + grace:
            if ask(record.address):
                self._misses = 0
                if not deferring:
                    self._deferred = (*key, now)
                    self.counters["deferrals"] += 1
                    log.warning(
                        "lease %s: expired, but its holder %s (%s) still answers: waiting "
                        "up to %gs for its agent before taking over",
                        self.settings.key, record.holder, record.address, grace,
                    )  # fmt: skip
                return True
            if deferring and self._misses + 1 < HOLDER_MISSES:
                self._misses += 1
                return True
        self._deferred, self._misses = None, 0
        return False

    def _acquire(
        self,
        record: LeaseRecord | None,
        condition: str,
        values: dict[str, Any],
        kind: EventKind,
        reason: str,
    ) -> None:
        s = self.settings
        token = (record.token if record else 0) + 1
        now, mono = self._clock.time(), self._clock.monotonic()
        expires = now + s.duration_s
        try:
            self._write(
                "SET #h = :me, #t = :new, #e = :exp, #p = :pref, renewed = :now, address = :addr"
                " REMOVE handover_from, handover_to, handover_until",
                condition,
                {
                    **values,
                    ":me": {"S": s.holder},
                    ":new": {"N": str(token)},
                    ":exp": _num(expires),
                    ":pref": {"BOOL": s.preferred},
                    ":now": _num(now),
                    ":addr": {"S": s.address or ""},
                },
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                self._error = self._describe(exc)
                log.error("lease %s: %s", s.key, self._error)
            return  # another instance was faster
        except BotoCoreError as exc:
            self._error = self._describe(exc)
            return
        self._token, self._valid_until, self._expires = token, mono + s.duration_s, expires
        self._deferred = None
        self.counters["takeovers"] += 1
        self._emit(kind, record.holder if record else None, token, reason)

    def note(self, kind: EventKind, token: int, reason: str) -> None:
        """Record an event of this instance's leadership that the lease did not cause
        (the takeover's outcome): the same log line, status entry and notification."""
        with self._lock:
            self._emit(kind, self.settings.holder, token, reason)

    def _emit(self, kind: EventKind, previous: str | None, token: int, reason: str) -> None:
        event = LeaseEvent(
            kind=kind,
            key=self.settings.key,
            holder=self.settings.holder,
            previous=previous,
            token=token,
            at=self._clock.time(),
            reason=reason,
        )
        self._events.append(event)
        log.warning(
            "lease %s: %s %s (previous holder %s, token %d): %s",
            event.key,
            event.holder,
            kind.replace("_", " "),
            previous or "none",
            token,
            reason,
        )
        try:
            self._notifier.notify(event)
        except Exception as exc:  # a notification hook must never break the lease
            log.error("lease %s: notifier failed: %s", event.key, exc)

    def status(self) -> dict[str, Any]:
        """For the agent's status file: role, token, who leads, health, counters, events."""
        with self._lock:
            token = self.token
            seen = self._seen
            if self._error is not None and token is None:
                state = "error"
            elif token is not None:
                state = "leader"
            else:
                state = "standby" if self._eligible else "ineligible"
            return {
                "state": state,
                "key": self.settings.key,
                "table": self.settings.table,
                "instance": self.settings.holder,
                "token": token,
                "expires": self._expires if token is not None else None,
                "leader": self.settings.holder
                if token is not None
                else (seen.holder if seen else None),
                "eligible": self._eligible,
                "preferred": self.settings.preferred,
                "fail_back": self.settings.fail_back,
                "health": {
                    "failures_in_row": self._failures,
                    "successes_in_row": self._successes,
                    "last_error": self._health_error,
                },
                "error": self._error,
                "deferred": None
                if self._deferred is None or token is not None
                else {
                    "holder": self._deferred[0],
                    "token": self._deferred[1],
                    "for_s": round(self._clock.time() - self._deferred[2], 3),
                },
                "handover": None
                if seen is None or not seen.handover_active(self._clock.time())
                else {"from": seen.handover_from, "to": seen.handover_to},
                "counters": dict(self.counters),
                "events": [e.as_dict() for e in self._events],
                "notify": self._notifier.status(),
            }
