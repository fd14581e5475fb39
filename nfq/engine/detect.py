"""Per-packet decisions of the built-in inspector (no NFQUEUE I/O here).

:meth:`Inspector.inspect` takes the raw IPv4 packet and returns a :class:`Decision`:

* ``ACCEPT`` - accept, keep inspecting the flow;
* ``DROP`` / ``REJECT`` - a drop/reject rule matched; the flow is dropped from now on;
* ``BYPASS`` - a pass rule matched, the stream depth was reached in either direction
  without a drop, or no rule can ever apply to the flow's protocol: accept with the
  bypass mark, so the kernel stops queueing the flow and the offloader may move it to
  the fast path.

When several rules match one packet, Suricata's default action order applies: pass,
drop, reject, alert. A rule alerts at most once per flow.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from nfq.engine import apps
from nfq.engine.flows import Direction, Flow, State, flow_key, new_flow, track_tcp
from nfq.engine.matcher import Ruleset, match_buffer
from nfq.engine.packet import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Packet, parse
from nfq.engine.rules import PAYLOAD, Rule

log = logging.getLogger("spectra.nfq")

PROTO_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp"}
ACTION_ORDER = {"pass": 0, "drop": 1, "reject": 2, "alert": 3}
FLOW_IDLE = {IPPROTO_TCP: 600.0, IPPROTO_UDP: 60.0}
MAX_FLOWS = 262144


class Decision(IntEnum):
    ACCEPT = 0
    DROP = 1
    BYPASS = 2
    REJECT = 3


AlertSink = Callable[[Rule, Packet, Flow, bool, float], None]


class Inspector:
    """Flow table + ruleset; swap the ruleset with :meth:`load` at any packet boundary."""

    def __init__(self, ruleset: Ruleset, *, stream_depth: int, alert: AlertSink) -> None:
        self.stream_depth = stream_depth
        self.alert = alert
        self.flows: dict[tuple[int, bytes, int, bytes, int], Flow] = {}
        self.counters: Counter[str] = Counter()
        self._threshold: dict[tuple[int, bytes], list[float]] = {}
        self._next_purge = 0.0
        self.load(ruleset)

    def load(self, ruleset: Ruleset) -> None:
        """Use ``ruleset`` from the next packet on; flows keep their state and verdicts."""
        self.ruleset = ruleset
        protos = {r.proto for r in ruleset.rules}
        self._any_ip = "ip" in protos
        self._protos = {
            IPPROTO_TCP: bool(protos & {"tcp", "http", "tls"}),
            IPPROTO_UDP: bool(protos & {"udp", "dns"}),
            IPPROTO_ICMP: "icmp" in protos,
        }
        self._threshold.clear()
        for flow in self.flows.values():
            flow.pending.clear()

    # ---- per packet ------------------------------------------------------------------

    def inspect(self, raw: bytes, now: float | None = None) -> Decision:
        p = parse(raw)
        self.counters["packets"] += 1
        if p is None:
            self.counters["unparsed"] += 1
            return Decision.ACCEPT
        if now is None:
            now = time.monotonic()
        key = flow_key(p)
        flow = self.flows.get(key)
        if flow is None:
            if now >= self._next_purge or len(self.flows) >= MAX_FLOWS:
                self._purge(now)
            flow = new_flow(p, now)
            self.flows[key] = flow
            self.counters["flows"] += 1
            if not self._any_ip and not self._protos.get(p.proto, False):
                flow.state = State.BYPASS
                self.counters["bypassed_no_rules"] += 1
        flow.last_seen = now
        if flow.state is State.DROP:
            self.counters["dropped"] += 1
            return Decision.DROP
        if flow.state is State.BYPASS:
            self.counters["bypassed_packets"] += 1
            return Decision.BYPASS
        return self._inspect_flow(flow, p, now)

    def _inspect_flow(self, flow: Flow, p: Packet, now: float) -> Decision:
        to_server = (p.src, p.sport) == flow.client
        d = flow.to_server if to_server else flow.to_client
        scanned: dict[str, set[int]] = {}
        payload: bytes | None = None
        if p.proto == IPPROTO_TCP:
            if track_tcp(flow, d, p, to_server, self.stream_depth):
                payload = bytes(d.data)
                self._scan_stream(d, payload, scanned)
                if to_server:
                    self._client_app(flow, payload, scanned)
        elif p.payload:
            payload = bytes(p.payload)
            d.seen += len(payload)
            d.hits = set()
            self._scan(PAYLOAD, payload, d.hits, scanned)
            if self.stream_depth and d.seen >= self.stream_depth:
                d.full = True
            if p.proto == IPPROTO_UDP and to_server and 53 in (p.dport, p.sport):
                flow.app = "dns"
                q = apps.dns_query(payload)
                if q is not None:
                    flow.app_fields["dns.query"] = q
                    hits: set[int] = set()
                    flow.app_hits["dns.query"] = hits
                    self._scan("dns.query", q, hits, scanned)
        matched = self._evaluate(flow, p, d, payload, to_server, scanned)
        decision = self._decide(flow, p, matched, now)
        if decision is Decision.ACCEPT and (flow.to_server.full or flow.to_client.full):
            flow.state = State.BYPASS
            self.counters["bypassed_depth"] += 1
            return Decision.BYPASS
        return decision

    # ---- scanning --------------------------------------------------------------------

    def _scan(self, buffer: str, data: bytes, hits: set[int], scanned: dict[str, set[int]]) -> None:
        db = self.ruleset.dbs.get(buffer)
        if db is None:
            return
        new: set[int] = set()
        db.scan(data, new)
        hits |= new
        scanned.setdefault(buffer, set()).update(new)

    def _scan_stream(self, d: Direction, data: bytes, scanned: dict[str, set[int]]) -> None:
        """Scan only what is new, plus an overlap so patterns across segments are found."""
        db = self.ruleset.dbs.get(PAYLOAD)
        if db is None:
            return
        start = max(0, d.scanned - db.max_len + 1)
        new: set[int] = set()
        db.scan(memoryview(data)[start:], new)
        d.scanned = len(data)
        new -= d.hits
        d.hits |= new
        scanned.setdefault(PAYLOAD, set()).update(new)

    def _client_app(self, flow: Flow, stream: bytes, scanned: dict[str, set[int]]) -> None:
        if flow.app is None:
            flow.app = apps.detect(stream[:8])
        if flow.app == "http":
            while True:
                req = apps.http_request(stream, flow.http_pos)
                if req is None:
                    return
                flow.http_pos = req.end
                flow.app_fields["http.uri"] = req.uri
                if req.host is not None:
                    flow.app_fields["http.host"] = req.host
                else:
                    flow.app_fields.pop("http.host", None)
                for name in ("http.uri", "http.host"):
                    hits: set[int] = set()
                    flow.app_hits[name] = hits
                    if name in flow.app_fields:
                        self._scan(name, flow.app_fields[name], hits, scanned)
                flow.pending.clear()
                flow.fired -= {r.sid for r in self.ruleset.rules if r.app_proto == "http"}
        elif flow.app == "tls" and not flow.sni_done:
            sni = apps.tls_sni(stream)
            if sni is None:
                return
            flow.sni_done = True
            if isinstance(sni, bytes):
                flow.app_fields["tls.sni"] = sni
                sni_hits: set[int] = set()
                flow.app_hits["tls.sni"] = sni_hits
                self._scan("tls.sni", sni, sni_hits, scanned)

    # ---- evaluation ------------------------------------------------------------------

    def _evaluate(
        self,
        flow: Flow,
        p: Packet,
        d: Direction,
        payload: bytes | None,
        to_server: bool,
        scanned: dict[str, set[int]],
    ) -> list[Rule]:
        rs = self.ruleset
        cands: set[int] = set(flow.pending)
        for buffer, new in scanned.items():
            cands |= rs.candidates(buffer, new)
        proto = PROTO_NAMES.get(p.proto, "ip")
        cands.update(rs.contentless.get(proto, ()))
        cands.update(rs.contentless.get("ip", ()))
        if flow.app:
            cands.update(rs.contentless.get(flow.app, ()))
        if not cands:
            return []
        hits: dict[str, set[int]] = {PAYLOAD: d.hits, **flow.app_hits}
        buffers: dict[str, bytes] = dict(flow.app_fields)
        if payload is not None:
            buffers[PAYLOAD] = payload
        matched = []
        src, dst = int.from_bytes(p.src, "big"), int.from_bytes(p.dst, "big")
        for idx in cands:
            rule = rs.rules[idx]
            if rule.sid in flow.fired or not rs.complete(idx, hits):
                continue
            if not self._header(rule, flow, p, proto, src, dst, to_server):
                flow.pending.discard(idx)
                continue
            if all(
                b.buffer in buffers and match_buffer(b, buffers[b.buffer]) for b in rule.buffers
            ):
                matched.append(rule)
                flow.pending.discard(idx)
            elif rule.buffers:
                flow.pending.add(idx)
        return matched

    @staticmethod
    def _header(
        rule: Rule, flow: Flow, p: Packet, proto: str, src: int, dst: int, to_server: bool
    ) -> bool:
        if rule.proto not in (proto, "ip") and rule.proto != flow.app:
            return False
        app = rule.app_proto
        if app is not None and flow.app != app:
            return False
        if rule.flow:
            f = rule.flow
            if "established" in f and not flow.established:
                return False
            if "not_established" in f and flow.established:
                return False
            if "to_server" in f and not to_server:
                return False
            if "to_client" in f and to_server:
                return False
        fwd = (
            rule.src.matches(src)
            and rule.dst.matches(dst)
            and rule.sport.matches(p.sport)
            and rule.dport.matches(p.dport)
        )
        if fwd or not rule.bidirectional:
            return fwd
        return (
            rule.src.matches(dst)
            and rule.dst.matches(src)
            and rule.sport.matches(p.dport)
            and rule.dport.matches(p.sport)
        )

    def _decide(self, flow: Flow, p: Packet, matched: list[Rule], now: float) -> Decision:
        if not matched:
            return Decision.ACCEPT
        matched.sort(key=lambda r: ACTION_ORDER[r.action])
        first = matched[0].action
        for rule in matched:
            flow.fired.add(rule.sid)
        if first == "pass":
            flow.state = State.BYPASS
            self.counters["bypassed_pass"] += 1
            return Decision.BYPASS
        blocked = first in ("drop", "reject")
        for rule in matched:
            if self._threshold_allows(rule, p, now):
                self.counters["alerts"] += 1
                self.alert(rule, p, flow, rule.action in ("drop", "reject"), time.time())
            else:
                self.counters["alerts_thresholded"] += 1
        if blocked:
            flow.state = State.DROP
            self.counters["dropped"] += 1
            return Decision.REJECT if first == "reject" else Decision.DROP
        return Decision.ACCEPT

    def _threshold_allows(self, rule: Rule, p: Packet, now: float) -> bool:
        t = rule.threshold
        if t is None:
            return True
        key = (rule.sid, p.src if t.track == "by_src" else p.dst)
        state = self._threshold.get(key)
        if state is None or now - state[0] >= t.seconds:
            state = self._threshold[key] = [now, 0.0]
        state[1] += 1
        n = int(state[1])
        if t.type == "limit":
            return n <= t.count
        if t.type == "threshold":
            return n % t.count == 0
        return n == t.count  # both

    def _purge(self, now: float) -> None:
        self._next_purge = now + 5.0
        stale = [
            k
            for k, f in self.flows.items()
            if now - f.last_seen > (5.0 if f.closing else FLOW_IDLE.get(f.proto, 30.0))
        ]
        for k in stale:
            del self.flows[k]
        while len(self.flows) >= MAX_FLOWS:
            del self.flows[next(iter(self.flows))]
        self.counters["flows_expired"] += len(stale)

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "flows_active": len(self.flows)}
