"""The VPC mirror: polls moto and makes the router and internet-gateway namespaces match.

Every ``interval`` (200 ms by default) :meth:`Mirror.step` reads the VPC from the EC2
API (four ``Describe*`` calls: instances, network interfaces, route tables, addresses;
the VPC, its subnets and its internet gateway every 25 steps), computes the wanted state
with the pure functions of :mod:`perf.lab.vpc.model`, and changes only what differs from
what the kernel has now (read back whenever the VPC changed, and every 10 steps
anyway, so a rebuilt link or a hand-made change is repaired within 2 s):

* in ``cv-vpc``, the main table: one ``/32`` per private address toward the link of the
  ENI holding it, with a permanent neighbour entry for the ENI's MAC (the VPC fabric
  knows where every address lives; nothing ARPs for it), a blackhole for the rest of
  the VPC CIDR, and the rule that sends VPC-internal destinations to it first (the
  ``local`` route); one table per route table and one ``iif <link> lookup <table>``
  rule per ENI link;
* the router's source/destination check and the internet gateway's translation are
  nftables tables (:mod:`perf.lab.vpc.render`), replaced atomically when their text
  changes (and put back if they disappear).

Run as a daemon by the lab (``python -m perf.lab.vpc.mirror``), or as an object in tests.
Each step's outcome goes to ``mirror.json`` in the run directory, which
``VpcLab.sync()`` waits on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import NetNS

from perf.lab.vpc.model import Next, Ownership, VpcState, desired, snapshot
from perf.lab.vpc.render import IGW_TABLE, ROUTER_TABLE, igw_nft, router_nft
from perf.lab.vpc.seed import client
from perf.lab.vpc.topology import (
    ENDPOINT_URL,
    IGW_NS,
    ROUTER_NS,
    RUN_DIR,
    VPC_NAME,
)

log = logging.getLogger("spectra.perf")

RTPROT_LAB = 99  # routes the mirror owns carry this protocol number
MAIN = 254
LOCAL_RULE_PRIORITY = 100
LINK_RULE_PRIORITY = 1000
FIRST_TABLE = 100
NUD_PERMANENT = 0x80
RTN_UNICAST, RTN_BLACKHOLE = 1, 6
SCOPE_LINK = 253


INTERVAL = 0.2
"""Seconds between polls: an API call reaches the namespaces within about this."""
RECHECK_EVERY = 10
"""With the VPC unchanged, the kernel is compared with it every this many steps."""
SLOW_EVERY = 25
"""The VPC, its subnets and its internet gateway are re-read every this many steps."""


def read_vpc(ec2: Any, slow: tuple[Any, ...] | None = None) -> tuple[Any, ...] | None:
    """The ``Describe*`` answers the model needs (re-using ``slow``, the answers about
    what hardly changes, when given), or None when the lab's VPC is absent."""
    if slow is None:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [VPC_NAME]}])["Vpcs"]
        if not vpcs:
            return None
        only = [{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]}]
        slow = (
            vpcs[0],
            ec2.describe_subnets(Filters=only)["Subnets"],
            ec2.describe_internet_gateways(
                Filters=[{"Name": "attachment.vpc-id", "Values": [vpcs[0]["VpcId"]]}]
            )["InternetGateways"],
        )
    vpc, subnets, igws = slow
    only = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    reservations = ec2.describe_instances(Filters=only)["Reservations"]
    return (
        vpc,
        subnets,
        [i for r in reservations for i in r["Instances"]],
        ec2.describe_network_interfaces(Filters=only)["NetworkInterfaces"],
        ec2.describe_route_tables(Filters=only)["RouteTables"],
        ec2.describe_addresses()["Addresses"],
        igws,
    )


@dataclass(frozen=True, slots=True)
class _KernelRoute:
    oif: int | None
    via: str | None
    blackhole: bool


class Mirror:
    """Polls the lab's EC2 endpoint and applies the difference to the namespaces."""

    def __init__(self, endpoint_url: str = ENDPOINT_URL, status_file: Path | None = None) -> None:
        self.ec2 = client("ec2", endpoint_url, read_timeout=5)
        self.status_file = status_file
        self.ownership = Ownership()
        self.tables: dict[str, int] = {}
        self.generation = 0
        self.state: VpcState | None = None
        self._nft: dict[str, str] = {}
        self._slow: tuple[Any, ...] | None = None
        self._applied_links: dict[str, int] = {}
        self._router: Any = None

    def close(self) -> None:
        if self._router is not None:
            self._router.close()
            self._router = None

    # -- one step -----------------------------------------------------------------------

    def step(self) -> VpcState | None:
        """Poll once and apply; returns the state applied (None when there is no VPC)."""
        started = time.time()
        error = None
        try:
            if self.generation % SLOW_EVERY == 0:
                self._slow = None
            answers = read_vpc(self.ec2, self._slow)
            if answers is None:
                self.state = None
            else:
                self._slow = (answers[0], answers[1], answers[6])
                snap = snapshot(*answers)
                self.ownership = self.ownership.advance(snap.enis)
                state = desired(snap, self.ownership.owners)
                links = self._links()
                changed = state != self.state or links != self._applied_links
                if changed or self.generation % RECHECK_EVERY == 0:
                    self.apply(state, links)
                self.state, self._applied_links = state, links
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("mirror step failed: %s", error)
        self.generation += 1
        if self.status_file is not None:
            self._write_status(started, error)
        if error is not None:
            raise MirrorError(error)
        return self.state

    def _write_status(self, started: float, error: str | None) -> None:
        assert self.status_file is not None
        data = {
            "generation": self.generation,
            "polled_at": started,
            "applied_at": time.time(),
            "error": error,
            "tables": self.tables,
        }
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.status_file)

    def _links(self) -> dict[str, int]:
        """The router's links by name (a rebuilt link has a new index)."""
        if self._router is None:
            self._router = NetNS(ROUTER_NS)
        return {
            link.get_attr("IFLA_IFNAME"): int(link["index"]) for link in self._router.get_links()
        }

    def apply(self, state: VpcState, links: Mapping[str, int]) -> None:
        """Make the router and the internet gateway hold ``state``."""
        ipr = self._router
        for rtb_id in sorted(state.tables):
            if rtb_id not in self.tables:
                self.tables[rtb_id] = max(self.tables.values(), default=FIRST_TABLE - 1) + 1
        want_main: dict[str, _KernelRoute] = {
            state.local_cidr: _KernelRoute(None, None, blackhole=True)
        }
        for ip, link in state.hosts.items():
            if link in links:
                want_main[f"{ip}/32"] = _KernelRoute(links[link], None, blackhole=False)
        want = {MAIN: want_main}
        for rtb_id, routes in state.tables.items():
            want[self.tables[rtb_id]] = _kernel_routes(routes, links)
        have: dict[int, dict[str, _KernelRoute]] = {}
        for r in ipr.get_routes(family=2, proto=RTPROT_LAB):  # every table, one dump
            dst = f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"
            have.setdefault(r.get_attr("RTA_TABLE"), {})[dst] = _KernelRoute(
                r.get_attr("RTA_OIF"), r.get_attr("RTA_GATEWAY"), r["type"] == RTN_BLACKHOLE
            )
        # A table in "have" only: its route table is gone, or an earlier mirror numbered it.
        for table in want.keys() | have.keys():
            self._sync_routes(ipr, table, want.get(table, {}), have.get(table, {}))
        self._sync_rules(ipr, state, links)
        self._sync_neighbours(ipr, state, links)
        self._nft_apply(ROUTER_NS, ROUTER_TABLE, router_nft(state.checked))
        self._nft_apply(IGW_NS, IGW_TABLE, igw_nft(state.nat))

    # -- kernel state ------------------------------------------------------------------

    def _sync_routes(
        self,
        ipr: Any,
        table: int,
        want: Mapping[str, _KernelRoute],
        have: Mapping[str, _KernelRoute],
    ) -> None:
        for dst, route in want.items():
            if have.get(dst) == route:
                continue
            spec: dict[str, Any] = {"dst": dst, "table": table, "proto": RTPROT_LAB}
            if route.blackhole:
                spec["type"] = RTN_BLACKHOLE
            else:
                spec |= {"type": RTN_UNICAST, "oif": route.oif}
                if route.via is not None:
                    spec |= {"gateway": route.via, "flags": ["onlink"]}
                else:
                    spec["scope"] = SCOPE_LINK
            log.info("table %d: %s -> %s", table, dst, route)
            ipr.route("replace", **spec)
        for dst in have.keys() - want.keys():
            log.info("table %d: remove %s", table, dst)
            ipr.route("del", dst=dst, table=table, proto=RTPROT_LAB)

    def _sync_rules(self, ipr: Any, state: VpcState, links: Mapping[str, int]) -> None:
        want: set[tuple[str | None, str | None, int, int]] = {
            (None, state.local_cidr, MAIN, LOCAL_RULE_PRIORITY)
        }
        for link, rtb_id in state.rules.items():
            if link in links:
                want.add((link, None, self.tables[rtb_id], LINK_RULE_PRIORITY))
        have = set()
        for rule in ipr.get_rules(family=2):
            prio = rule.get_attr("FRA_PRIORITY")
            if prio not in (LOCAL_RULE_PRIORITY, LINK_RULE_PRIORITY):
                continue
            dst = rule.get_attr("FRA_DST")
            have.add(
                (
                    rule.get_attr("FRA_IIFNAME"),
                    f"{dst}/{rule['dst_len']}" if dst else None,
                    rule.get_attr("FRA_TABLE"),
                    prio,
                )
            )
        for op, rules in (("add", want - have), ("del", have - want)):
            for iif, dst, table, prio in rules:
                spec: dict[str, Any] = {"table": table, "priority": prio}
                if iif is not None:
                    spec["iifname"] = iif
                if dst is not None:
                    addr, plen = dst.split("/")
                    spec |= {"dst": addr, "dst_len": int(plen)}
                log.info("rule %s %s", op, spec)
                ipr.rule(op, **spec)

    def _sync_neighbours(self, ipr: Any, state: VpcState, links: Mapping[str, int]) -> None:
        want = {
            (ip, links[link], mac) for ip, (link, mac) in state.neighbours.items() if link in links
        }
        have = set()
        for n in ipr.get_neighbours(family=2):
            if n["state"] & NUD_PERMANENT:
                have.add((n.get_attr("NDA_DST"), n["ifindex"], n.get_attr("NDA_LLADDR")))
        for ip, index, mac in want - have:
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)
        for ip, index, _mac in have - want:
            if not any(w[0] == ip and w[1] == index for w in want):
                ipr.neigh("del", dst=ip, ifindex=index)

    def _nft_apply(self, ns: str, table: str, text: str) -> None:
        if self._nft.get(ns) == text:
            if self.generation % RECHECK_EVERY:
                return
            listed = subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "list", "tables"],
                capture_output=True,
                text=True,
                check=False,
            )
            if f"table ip {table}" in listed.stdout:
                return  # unchanged; replacing it would only reset its counters
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise MirrorError(f"nft -f in {ns}: {proc.stderr.strip()}\n{text}")
        if self._nft.get(ns) != text:
            log.info("%s: nft table replaced", ns)
        self._nft[ns] = text

    # -- daemon ------------------------------------------------------------------------

    def run(self, interval: float = INTERVAL) -> None:
        stop = False

        def _stop(_sig: int, _frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not stop:
            started = time.monotonic()
            with contextlib.suppress(MirrorError):  # logged and in status.json; retried
                self.step()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
        self.close()


class MirrorError(RuntimeError):
    """One mirror step could not read the VPC or apply it."""


def _kernel_routes(routes: Mapping[str, Next], links: Mapping[str, int]) -> dict[str, _KernelRoute]:
    out = {}
    for dst, nxt in routes.items():
        if nxt.link is None or nxt.link not in links:
            out[dst] = _KernelRoute(None, None, blackhole=True)
        else:
            out[dst] = _KernelRoute(links[nxt.link], nxt.via, blackhole=False)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.lab.vpc.mirror")
    parser.add_argument("--endpoint-url", default=ENDPOINT_URL)
    parser.add_argument("--interval", type=float, default=INTERVAL)
    parser.add_argument("--status-file", type=Path, default=RUN_DIR / "mirror.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    Mirror(args.endpoint_url, args.status_file).run(args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
