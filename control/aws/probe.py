"""The forward probe: a packet through the gateway's own forwarding path, every interval.

The local health checks (links, forwarding, the ruleset present) say nothing of a
forward chain that drops everything or a NAT rule that no longer translates. This probe
sends what a workload sends: a TCP connection from a private namespace of its own,
through the forward chain, the egress policy and source NAT, out of the outside
interface to ``aws.health.forward_probes`` and back through the reverse translation.

- **Where it comes from**: a thread of the agent unshares a network namespace of its
  own (nothing named, nothing left behind: the namespace, and with it the veth pair,
  goes when the thread or the process ends) and links it to the gateway by a veth pair:
  :data:`PROBE_IF` on the gateway's side with the first address of
  ``aws.health.probe_subnet`` (a /30), ``probe0`` inside with the second and a default
  route through the gateway. The ruleset treats :data:`PROBE_IF` as an inside interface
  (:mod:`control.steps.nftables`), so the probe is judged, logged and translated as a
  workload's flow; the XDP offloader leaves it in the kernel (its client is not behind
  the inside interface: ``not_forwarded``).
- **When it counts**: only on the AZ's leader, :data:`SETTLE_S` after its takeover
  completed -- the flow is translated to the NAT address, which a standby does not hold
  (its replies go to the leader), and AWS applies a moved address, Elastic IP
  association and route within seconds. A failure while counting makes the instance
  ineligible (the lease's hysteresis decides when that releases it); after such a
  failure the instance stays ineligible for :data:`HOLD_DOWN_S` even as a standby, so
  two gateways that both cannot forward do not hand the lease back and forth every few
  seconds.
- **What passes**: any of the targets accepting a TCP connection within ``timeout_s``
  (several targets: the outage of one internet service is not a gateway failure). A
  probe that cannot set itself up says so in status (``error``) and judges nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

log = logging.getLogger("spectra.control")

PROBE_IF = "spectra-probe"  # the gateway's end of the probe's veth pair
PEER_IF = "probe0"  # the probe namespace's end
HOLD_DOWN_S = 30.0
SETTLE_S = 3.0  # after a takeover, before rounds count: AWS applies the moves in seconds
CLONE_NEWNET = 0x40000000
DEFAULT_SUBNET = IPv4Network("198.18.255.252/30")  # RFC 2544 benchmarking space


def endpoints(subnet: IPv4Network) -> tuple[IPv4Interface, IPv4Interface]:
    """(the gateway's address, the probe's address) in ``subnet``, both with its prefix."""
    first, second = list(subnet.hosts())[:2]
    return (
        IPv4Interface(f"{first}/{subnet.prefixlen}"),
        IPv4Interface(f"{second}/{subnet.prefixlen}"),
    )


class ForwardProbe:
    """TCP connections through the forwarding path from a namespace of its own, one
    round every ``interval_s`` while :attr:`counts` says the result matters."""

    def __init__(
        self,
        targets: Sequence[str],
        subnet: IPv4Network = DEFAULT_SUBNET,
        timeout_s: float = 1.0,
        interval_s: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.targets = [(h, int(p)) for h, _, p in (t.rpartition(":") for t in targets)]
        self.subnet, self.timeout_s, self.interval_s = subnet, timeout_s, interval_s
        # the lease token under which a round counts (None: not leading with the NAT
        # address in place); set by the HA side
        self.counting: Callable[[], int | None] = lambda: None
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.error: str | None = None  # the namespace could not be set up
        self.last: dict[str, Any] | None = None  # the last counted round
        self._failed_at: float | None = None  # the last counted round that failed
        self.rounds = self.failures = 0

    # -- what the health check reads ---------------------------------------------------

    def failure(self) -> str | None:
        """Why this instance must not lead, or None. While counting: the last round
        under the current lease token failed. Otherwise: a counted round failed less
        than :data:`HOLD_DOWN_S` ago. A probe that could not set itself up (``error``,
        in status and the log) judges nothing: its own fault is no data-path fault."""
        with self._lock:
            token = self.counting()
            if token is not None:
                last = self.last
                if last is not None and last["token"] == token and not last["ok"]:
                    return f"forward probe: {last['error']}"
                return None
            if self._failed_at is not None and self._clock() - self._failed_at < HOLD_DOWN_S:
                left = HOLD_DOWN_S - (self._clock() - self._failed_at)
                return f"forward probe failed while leading; held down {left:.0f} s more"
            return None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "targets": [f"{h}:{p}" for h, p in self.targets],
                "interface": PROBE_IF,
                "subnet": str(self.subnet),
                "counting": self.counting() is not None,
                "last": self.last,
                "rounds": self.rounds,
                "failures": self.failures,
                "error": self.error,
            }

    # -- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="spectra-forward-probe", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop after the round in flight (not waited for beyond a second: the thread is
        a daemon, and a successor replaces its interface by name)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        from pyroute2 import IPRoute

        try:
            gateway = IPRoute()  # opened before the unshare: the gateway's namespace
        except OSError as exc:
            self.error = f"netlink: {exc}"
            return
        try:
            self._enter(gateway)
        except OSError as exc:
            self.error = f"cannot set up its namespace and {PROBE_IF}: {exc}"
            log.error("forward probe: %s", self.error)
            gateway.close()
            return
        try:
            while not self._stop.is_set():
                started = self._clock()
                token = self.counting()
                if token is not None:
                    self._round(token)
                self._stop.wait(max(0.0, self.interval_s - (self._clock() - started)))
        finally:  # the namespace, and with it the veth pair, goes with this thread
            gateway.close()

    def _enter(self, gateway: Any) -> None:
        """This thread into a namespace of its own, linked to the gateway's by the veth
        pair, with its addresses and route."""
        from pyroute2 import IPRoute

        for stale in gateway.link_lookup(ifname=PROBE_IF):  # a half-done earlier set-up
            gateway.link("del", index=stale)
        ours, theirs = endpoints(self.subnet)
        gw_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"unshare(CLONE_NEWNET): {os.strerror(errno)}")
            with IPRoute() as probe:
                probe.link(
                    "add",
                    ifname=PEER_IF,
                    kind="veth",
                    peer={"ifname": PROBE_IF, "net_ns_fd": gw_ns},
                )
                (peer,) = probe.link_lookup(ifname=PEER_IF)
                (lo,) = probe.link_lookup(ifname="lo")
                probe.addr(
                    "add", index=peer, address=str(theirs.ip), prefixlen=theirs.network.prefixlen
                )
                probe.link("set", index=lo, state="up")
                probe.link("set", index=peer, state="up")
                (end,) = gateway.link_lookup(ifname=PROBE_IF)
                gateway.addr(
                    "add", index=end, address=str(ours.ip), prefixlen=ours.network.prefixlen
                )
                gateway.link("set", index=end, state="up")
                probe.route("add", dst="0.0.0.0/0", gateway=str(ours.ip))
        finally:
            os.close(gw_ns)
        log.info("forward probe: %s %s <-> %s in its namespace", PROBE_IF, ours, theirs)

    def _round(self, token: int) -> None:
        """One connection attempt per target until one succeeds (sockets made by this
        thread live in the probe's namespace)."""
        errors = []
        started = time.monotonic()
        ok_target = None
        for host, port in self.targets:
            if self._stop.is_set():
                return
            try:
                with socket.create_connection((host, port), timeout=self.timeout_s):
                    ok_target = f"{host}:{port}"
                    break
            except OSError as exc:
                errors.append(f"{host}:{port}: {exc}")
        result = {
            "ok": ok_target is not None,
            "target": ok_target,
            "error": None if ok_target else "; ".join(errors),
            "ms": round((time.monotonic() - started) * 1000, 1),
            "at": time.time(),
            "token": token,
        }
        with self._lock:
            if self.counting() != token:  # leadership changed during the round
                return
            self.rounds += 1
            self.last = result
            if not result["ok"]:
                self.failures += 1
                self._failed_at = self._clock()
                log.warning("forward probe failed: %s", result["error"])
