"""Cross-AZ fallback: the leader of one AZ routes another AZ that has no healthy gateway.

Off by default (``aws.cross_az_fallback``). Every lease period, the leader of AZ *X*
reads the lease item of each other configured AZ *Y*. *Y* is **orphaned** when its lease
has been expired (or released) for ``after_s`` plus the skew margin -- its leader is gone
and no standby took it. The leader of *X* then:

1. claims the per-AZ fallback item ``fallback#Y`` in the lease table with one
   ``TransactWriteItems`` ("Transactions" in the DynamoDB developer guide): a condition
   check that *X*'s own lease is still held with its token (the fence), a condition check
   that *Y*'s lease token is the one read as orphaned (nobody took *Y* since), and the
   conditional write of the fallback item (absent, expired or already ours) -- so two
   AZs never adopt the same orphan;
2. routes *Y*'s private subnets (the subnets associated with *Y*'s route tables) back
   through its own inside interface, via the VPC router of its inside subnet (its first
   host address): replies to *Y*'s workloads must leave where their flows came in, not
   by the default route out of the outside interface;
3. points *Y*'s private route tables at its own inside ENI (``ReplaceRoute``, the same
   code and checks as its own takeover), the claim renewed right before every write.

The claim is renewed every period while *Y* stays orphaned. As soon as *Y*'s lease is
live again, *X* releases the claim (``expires = 0``), removes the return routes of step 2
and writes nothing more: *Y*'s new
leader moves its routes back with its normal takeover. A leader that loses its own lease
drops its claims (they also run out by themselves after ``duration_s``). An AZ whose
lease item was never written (nothing ever ran there) is never adopted.

Residual race: *Y*'s new leader may acquire its lease between *X*'s last claim and
*X*'s ``ReplaceRoute`` (one EC2 call); *Y*'s takeover writes its routes a second or more
after its acquisition, so it lands after *X*'s write in practice, but nothing orders them.

Cost and blast radius (why it is off by default): *Y*'s internet traffic crosses AZs
twice (workload -> *X*'s gateway and back), billed as cross-AZ data transfer at $0.01/GB
in each direction, and one gateway carries two AZs, so its failure or saturation takes
both down. Enabling it logs :data:`COST_WARNING` and shows it in status.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from control.aws.lease import EVENTS_KEPT, KEY, Clock, SystemClock
from control.aws.notify import EventKind, LeaseEvent, Notifier, NullNotifier
from control.aws.session import describe_error, error_code
from control.aws.takeover import Fenced, TakeoverFailed, point_routes

log = logging.getLogger("spectra.aws")

COST_WARNING = (
    "aws.cross_az_fallback is enabled: while an AZ has no healthy gateway, its internet "
    "traffic crosses to another AZ's gateway, billed as cross-AZ data transfer ($0.01/GB "
    "in each direction), and that one gateway carries both AZs (its failure or "
    "saturation takes both down)"
)


def fallback_key(az: str) -> str:
    """The lease-table key of ``az``'s fallback claim."""
    return f"fallback#{az}"


@dataclass(frozen=True, slots=True)
class FallbackSettings:
    """This leader's view of the fallback (the document's ``aws`` section)."""

    table: str
    az: str  # this instance's AZ (its own lease key)
    holder: str  # this instance's id
    inside_eni: str
    inside_ifname: str
    inside_router: str  # the VPC router of the inside subnet (its first host address)
    after_s: float
    duration_s: float  # of a claim, as the lease's
    skew_margin_s: float


@dataclass(frozen=True, slots=True)
class OtherZone:
    """An AZ this leader may adopt: its name and private route tables."""

    az: str
    route_table_ids: tuple[str, ...]


class RouteOps(Protocol):
    """Kernel routes of this instance (pyroute2 in the product, a fake in tests)."""

    def add(self, cidr: str, via: str, ifname: str) -> None: ...

    def remove(self, cidr: str, via: str, ifname: str) -> None: ...


class KernelRoutes:
    """:class:`RouteOps` on this network namespace, with pyroute2."""

    def add(self, cidr: str, via: str, ifname: str) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.route("replace", dst=cidr, gateway=via, oif=index)

    def remove(self, cidr: str, via: str, ifname: str) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return
            try:
                ipr.route("del", dst=cidr, gateway=via, oif=found[0])
            except NetlinkError as exc:
                if exc.code != 3:  # ESRCH: not there, nothing to do
                    raise


class Refused(Exception):
    """The claim's transaction was refused; the message says which condition failed."""


class CrossAzFallback:
    """Adopts orphaned AZs' routes while this instance leads its own AZ (module doc)."""

    def __init__(
        self,
        client: Any,
        settings: FallbackSettings,
        zones: tuple[OtherZone, ...],
        operational_ec2: Callable[[], Any],
        *,
        notifier: Notifier | None = None,
        clock: Clock | None = None,
        routes: RouteOps | None = None,
    ) -> None:
        self.settings = settings
        self._routes: RouteOps = routes or KernelRoutes()
        self._cidrs: dict[str, tuple[str, ...]] = {}  # az -> its private subnets
        self.zones = zones
        self._client = client
        self._ec2 = operational_ec2
        self._notifier: Notifier = notifier or NullNotifier()
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, Any]] = {}  # az -> since, token, routes
        self._errors: dict[str, str] = {}
        self._events: deque[LeaseEvent] = deque(maxlen=EVENTS_KEPT)
        self.counters = {"adopted": 0, "returned": 0, "errors": 0}
        log.warning("%s", COST_WARNING)

    # -- one period -----------------------------------------------------------------

    def step(self, token: int) -> None:
        """Look at every other AZ once, as the leader of this AZ with ``token``."""
        for zone in self.zones:
            try:
                self._zone(zone, token)
                self._errors.pop(zone.az, None)
            except (ClientError, BotoCoreError) as exc:
                self._error(zone, describe_error(exc))
            except TakeoverFailed as exc:
                self._error(zone, str(exc))

    def release_all(self, reason: str) -> None:
        """This instance no longer leads its AZ: give every claim up now."""
        for az in list(self._held):
            self._give_back(az, reason)

    def _zone(self, zone: OtherZone, token: int) -> None:
        record = self._read(zone.az)
        now = self._clock.time()
        since = _orphaned_since(record)
        expired = None if since is None else now - since - self.settings.skew_margin_s
        if expired is None or expired < self.settings.after_s:
            if zone.az in self._held:  # someone held its lease since: it has a leader
                self._give_back(zone.az, f"{zone.az}'s own lease was held again")
            return
        seen = int(record["token"]["N"]) if record else 0

        def claim(before: str) -> None:
            try:
                self._claim(zone.az, token, seen, new=zone.az not in self._held)
            except Refused as exc:
                raise Fenced(f"{exc} (before {before})") from exc

        try:
            claim("the claim")
        except Fenced as exc:
            if zone.az in self._held:
                self._drop(zone.az)
                self._emit("fallback_returned", zone.az, token, f"claim lost: {exc}")
            log.info("fallback of %s not taken: %s", zone.az, exc)
            return
        if zone.az not in self._held:
            cidrs = self._subnets(zone)
            for cidr in cidrs:  # the way back first, then the way in
                self._routes.add(cidr, self.settings.inside_router, self.settings.inside_ifname)
            self._held[zone.az] = {"since": now, "token": token, "subnets": list(cidrs)}
            self._emit(
                "fallback_took",
                zone.az,
                token,
                f"its lease expired {expired:.1f}s ago (after_s {self.settings.after_s:g})",
            )
        if not zone.route_table_ids:
            self._held[zone.az]["routes"] = "none configured"
            return
        try:
            outcome = point_routes(
                self._ec2(),
                zone.route_table_ids,
                self.settings.inside_eni,
                claim,
                f"aws.zones.{zone.az}.route_tables",
            )
        except Fenced as exc:
            self._drop(zone.az)
            self._emit("fallback_returned", zone.az, token, f"claim lost: {exc}")
            return
        self._held[zone.az]["routes"] = outcome

    def _subnets(self, zone: OtherZone) -> tuple[str, ...]:
        """The CIDRs of the subnets associated with ``zone``'s route tables (cached)."""
        if zone.az not in self._cidrs and zone.route_table_ids:
            ec2 = self._ec2()
            tables = ec2.describe_route_tables(RouteTableIds=list(zone.route_table_ids))
            ids = [
                a["SubnetId"]
                for t in tables["RouteTables"]
                for a in t.get("Associations", [])
                if a.get("SubnetId")
            ]
            found = ec2.describe_subnets(SubnetIds=ids)["Subnets"] if ids else []
            self._cidrs[zone.az] = tuple(sorted(s["CidrBlock"] for s in found))
        return self._cidrs.get(zone.az, ())

    def _drop(self, az: str) -> dict[str, Any] | None:
        """Forget the claim on ``az`` and remove its return routes."""
        held = self._held.pop(az, None)
        for cidr in held["subnets"] if held else ():
            try:
                self._routes.remove(cidr, self.settings.inside_router, self.settings.inside_ifname)
            except Exception as exc:  # reported; a stale route only costs a detour
                log.error("fallback of %s: route to %s not removed: %s", az, cidr, exc)
        return held

    def _give_back(self, az: str, reason: str) -> None:
        held = self._drop(az)
        if held is None:
            return
        now = self._clock.time()
        try:
            self._client.update_item(
                TableName=self.settings.table,
                Key={KEY: {"S": fallback_key(az)}},
                UpdateExpression="SET #e = :zero",
                ConditionExpression="#h = :me",
                ExpressionAttributeNames={"#e": "expires", "#h": "holder"},
                ExpressionAttributeValues={
                    ":zero": {"N": "0"},
                    ":me": {"S": self.settings.holder},
                },
            )
        except (ClientError, BotoCoreError) as exc:  # it runs out by itself then
            log.warning("fallback of %s: release not written: %s", az, describe_error(exc))
        self._emit(
            "fallback_returned",
            az,
            int(held["token"]),
            f"{reason} (held {now - held['since']:.1f}s)",
        )

    # -- the lease table ------------------------------------------------------------

    def _read(self, az: str) -> dict[str, Any] | None:
        item: dict[str, Any] | None = self._client.get_item(
            TableName=self.settings.table, Key={KEY: {"S": az}}, ConsistentRead=True
        ).get("Item")
        return item

    def _claim(self, az: str, token: int, seen: int, *, new: bool) -> None:
        """The transaction of the module doc, step 1; raises :class:`Refused`."""
        s, now = self.settings, self._clock.time()
        table = s.table
        items: list[dict[str, Any]] = [
            {
                "ConditionCheck": {  # the fence: this instance still leads its own AZ
                    "TableName": table,
                    "Key": {KEY: {"S": s.az}},
                    "ConditionExpression": "#h = :me AND #t = :tok AND #e > :now",
                    "ExpressionAttributeNames": {"#h": "holder", "#t": "token", "#e": "expires"},
                    "ExpressionAttributeValues": {
                        ":me": {"S": s.holder},
                        ":tok": {"N": str(token)},
                        ":now": _num(now),
                    },
                }
            },
            {
                "ConditionCheck": {  # nobody took the orphan's lease since it was read
                    "TableName": table,
                    "Key": {KEY: {"S": az}},
                    "ConditionExpression": "#t = :seen AND #e < :deadline",
                    "ExpressionAttributeNames": {"#t": "token", "#e": "expires"},
                    "ExpressionAttributeValues": {
                        ":seen": {"N": str(seen)},
                        ":deadline": _num(now - s.skew_margin_s),
                    },
                }
            },
            {
                "Update": {  # the claim: absent, run out, or ours already
                    "TableName": table,
                    "Key": {KEY: {"S": fallback_key(az)}},
                    "UpdateExpression": "SET #h = :me, holder_az = :az, lease_token = :tok, "
                    "#e = :exp" + (", since = :now" if new else ""),
                    "ConditionExpression": "attribute_not_exists(#k) OR #h = :me OR #e < :now",
                    "ExpressionAttributeNames": {"#k": KEY, "#h": "holder", "#e": "expires"},
                    "ExpressionAttributeValues": {
                        ":me": {"S": s.holder},
                        ":az": {"S": s.az},
                        ":tok": {"N": str(token)},
                        ":exp": _num(now + s.duration_s),
                        ":now": _num(now),
                    },
                }
            },
        ]
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            raise Refused(_refusal(exc, az)) from exc

    # -- reporting ------------------------------------------------------------------

    def _error(self, zone: OtherZone, error: str) -> None:
        self.counters["errors"] += 1
        self._errors[zone.az] = error
        log.error("fallback of %s: %s", zone.az, error)

    def _emit(self, kind: EventKind, az: str, token: int, reason: str) -> None:
        event = LeaseEvent(
            kind=kind,
            key=fallback_key(az),
            holder=self.settings.holder,
            previous=None,
            token=token,
            at=self._clock.time(),
            reason=reason,
        )
        with self._lock:
            self._events.append(event)
            self.counters["adopted" if kind == "fallback_took" else "returned"] += 1
        log.warning(
            "cross-AZ fallback: %s (leader of %s) %s the routes of %s: %s",
            self.settings.holder,
            self.settings.az,
            "took" if kind == "fallback_took" else "returned",
            az,
            reason,
        )
        try:
            self._notifier.notify(event)
        except Exception as exc:  # a notification hook must never break the fallback
            log.error("fallback of %s: notifier failed: %s", az, exc)

    def status(self) -> dict[str, Any]:
        with self._lock:
            events = [e.as_dict() for e in self._events]
        return {
            "enabled": True,
            "warning": COST_WARNING,
            "after_s": self.settings.after_s,
            "zones": [z.az for z in self.zones],
            "adopted": {az: dict(h) for az, h in dict(self._held).items()},
            "errors": dict(self._errors),
            "counters": dict(self.counters),
            "events": events,
        }


def _orphaned_since(record: dict[str, Any] | None) -> float | None:
    """When the lease item stopped being live: its expiry, or for a released lease
    (``expires = 0``) its last renewal; ``None`` when nothing ever held it."""
    if record is None:
        return None
    expires = float(record["expires"]["N"])
    if expires > 0:
        return expires
    return float(record.get("renewed", {}).get("N", 0.0))


def _refusal(exc: ClientError, az: str) -> str:
    reasons = exc.response.get("CancellationReasons") or []
    failed = [i for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"]
    what = {
        0: "this instance no longer holds its own lease",
        1: f"{az}'s lease was taken since it was read",
        2: f"another AZ's leader holds the fallback of {az}",
    }
    if not failed:
        return f"the claim on {az} was refused: {describe_error(exc)}"
    return "; ".join(what.get(i, f"condition {i}") for i in failed)


def _num(value: float) -> dict[str, str]:
    return {"N": f"{value:.3f}"}
