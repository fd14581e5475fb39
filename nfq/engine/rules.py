"""Parser for the documented subset of the Suricata rule language.

Supported (anything else is rejected at load with the rule's sid and the keyword):

* actions ``alert``, ``drop``, ``pass``, ``reject``;
* protocols ``ip``, ``tcp``, ``udp``, ``icmp`` and the app protocols ``http``, ``tls``,
  ``dns`` (the flow's detected protocol must match);
* addresses and ports with ``any``, lists ``[...]``, negation ``!``, variables ``$X``;
* direction ``->`` and ``<>``;
* ``msg``, ``sid``, ``rev``, ``classtype``;
* ``flow``: ``established``, ``not_established``, ``stateless``, ``to_server`` /
  ``from_client``, ``to_client`` / ``from_server``;
* ``content`` (``"text|41 42|"``) with ``nocase``, ``depth``, ``offset``, ``distance``,
  ``within``; ``pcre:"/re/flags"`` with flags ``i s m x``;
* sticky buffers ``http.host``, ``http.uri``, ``tls.sni``, ``dns.query`` (content/pcre
  after them match that field; before any, the payload: the reassembled stream for TCP,
  the packet for UDP/ICMP);
* ``threshold: type limit|threshold|both, track by_src|by_dst, count N, seconds S``
  (gates alert output; a drop still drops).

Semantics follow Suricata's documentation; the differences are listed in
``nfq/engine/README.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nfq.engine.addresses import Expr, ExprError, parse_addresses, parse_ports

Action = Literal["alert", "drop", "pass", "reject"]
ACTIONS = ("alert", "drop", "pass", "reject")
PROTOCOLS = ("ip", "tcp", "udp", "icmp", "http", "tls", "dns")
APP_PROTOCOLS = {"http": "tcp", "tls": "tcp", "dns": "udp"}
BUFFERS = ("http.host", "http.uri", "tls.sni", "dns.query")
PAYLOAD = "payload"
BUFFER_PROTO = {"http.host": "http", "http.uri": "http", "tls.sni": "tls", "dns.query": "dns"}
CONTENT_MODIFIERS = ("nocase", "depth", "offset", "distance", "within")
SUPPORTED = (
    "msg",
    "sid",
    "rev",
    "classtype",
    "flow",
    "content",
    *CONTENT_MODIFIERS,
    "pcre",
    *BUFFERS,
    "threshold",
)
FLOW_OPTIONS = {
    "established": "established",
    "not_established": "not_established",
    "stateless": "stateless",
    "to_server": "to_server",
    "from_client": "to_server",
    "to_client": "to_client",
    "from_server": "to_client",
}
PCRE_FLAGS = {"i": re.IGNORECASE, "s": re.DOTALL, "m": re.MULTILINE, "x": re.VERBOSE}
DEFAULT_VARS = {"HOME_NET": "[10.0.0.0/8,172.16.0.0/12,192.168.0.0/16]"}


class RuleError(ValueError):
    """A rule that does not parse or uses something outside the supported subset."""

    def __init__(
        self,
        message: str,
        *,
        sid: int | None = None,
        keyword: str | None = None,
        source: str | None = None,
    ) -> None:
        where = f"rule sid {sid}" if sid is not None else "rule without sid"
        if source:
            where += f" ({source})"
        super().__init__(f"{where}: {message}")
        self.sid = sid
        self.keyword = keyword


@dataclass(frozen=True, slots=True)
class Content:
    """One ``content`` with its modifiers (None = not given)."""

    pattern: bytes
    nocase: bool = False
    offset: int | None = None
    depth: int | None = None
    distance: int | None = None
    within: int | None = None

    @property
    def relative(self) -> bool:
        return self.distance is not None or self.within is not None


@dataclass(frozen=True, slots=True)
class Pcre:
    source: str
    regex: re.Pattern[bytes]


@dataclass(frozen=True, slots=True)
class BufferMatch:
    """The content and pcre conditions of one buffer, in rule order."""

    buffer: str
    contents: tuple[Content, ...]
    pcres: tuple[Pcre, ...]


@dataclass(frozen=True, slots=True)
class Threshold:
    type: Literal["limit", "threshold", "both"]
    track: Literal["by_src", "by_dst"]
    count: int
    seconds: int


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed rule."""

    action: Action
    proto: str
    src: Expr
    sport: Expr
    bidirectional: bool
    dst: Expr
    dport: Expr
    sid: int
    rev: int
    msg: str
    classtype: str | None
    flow: frozenset[str]
    buffers: tuple[BufferMatch, ...]
    threshold: Threshold | None
    text: str

    @property
    def app_proto(self) -> str | None:
        if self.proto in APP_PROTOCOLS:
            return self.proto
        for b in self.buffers:
            if b.buffer in BUFFER_PROTO:
                return BUFFER_PROTO[b.buffer]
        return None


_HEADER = re.compile(r"^\s*(\S+)\s+(\S+)\s+(.+?)\s+(->|<>)\s+(.+?)\s*\((.*)\)\s*$", re.S)


def split_options(body: str) -> list[tuple[str, str | None]]:
    """``name:value;`` pairs; ``;`` and ``"`` inside quotes or after ``\\`` do not split."""
    out: list[tuple[str, str | None]] = []
    cur, quoted, escaped = "", False, False
    for ch in body:
        if escaped:
            cur += ch
            escaped = False
            continue
        if ch == "\\":
            cur += ch
            escaped = True
            continue
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            if cur.strip():
                name, sep, value = cur.strip().partition(":")
                out.append((name.strip(), value.strip() if sep else None))
            cur = ""
            continue
        cur += ch
    if cur.strip():
        raise ValueError(f"option {cur.strip()!r} is not terminated by ';'")
    return out


def _split_header(header: str) -> tuple[str, str]:
    """Split ``addr port`` where addr may be a bracketed list containing spaces."""
    depth = 0
    for i, ch in enumerate(header):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch.isspace() and depth == 0:
            return header[:i].strip(), header[i:].strip()
    raise ValueError(f"expected 'address port', got {header!r}")


def _unquote(value: str) -> str:
    if len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
        raise ValueError(f"expected a quoted string, got {value!r}")
    return value[1:-1]


def parse_content(value: str) -> bytes:
    """``"abc|0d 0a|\\"x"`` -> bytes (``|hex|`` sections, ``\\`` escapes ``" ; \\ :``)."""
    text = _unquote(value)
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "|":
            end = text.find("|", i + 1)
            if end < 0:
                raise ValueError(f"unterminated |hex| section in {value}")
            try:
                out += bytes.fromhex(text[i + 1 : end])
            except ValueError:
                raise ValueError(f"bad hex in {value}: {text[i + 1 : end]!r}") from None
            i = end + 1
            continue
        if ch == "\\" and i + 1 < len(text):
            i += 1
            ch = text[i]
        elif ch in '";':
            raise ValueError(f"unescaped {ch!r} in content {value} (use \\{ch})")
        out += ch.encode("utf-8")
        i += 1
    if not out:
        raise ValueError("empty content")
    return bytes(out)


def _int(value: str | None, name: str, lo: int = 0) -> int:
    try:
        n = int(value or "")
    except ValueError:
        raise ValueError(f"{name} needs an integer, got {value!r}") from None
    if n < lo:
        raise ValueError(f"{name} must be >= {lo}, got {n}")
    return n


def _pcre(value: str) -> Pcre:
    text = _unquote(value)
    if not text.startswith("/") or text.rfind("/") == 0:
        raise ValueError(f'pcre {value}: expected "/regex/flags"')
    end = text.rfind("/")
    pattern, flags = text[1:end], text[end + 1 :]
    bits = 0
    for f in flags:
        if f not in PCRE_FLAGS:
            raise ValueError(f"pcre flag {f!r} unsupported (supported: {''.join(PCRE_FLAGS)})")
        bits |= PCRE_FLAGS[f]
    try:
        regex = re.compile(pattern.encode("utf-8"), bits)
    except re.error as exc:
        raise ValueError(f"pcre {value}: {exc}") from None
    return Pcre(text, regex)


def _threshold(value: str | None) -> Threshold:
    fields: dict[str, str] = {}
    for part in (value or "").split(","):
        key, _, val = part.strip().partition(" ")
        fields[key] = val.strip()
    missing = {"type", "track", "count", "seconds"} - fields.keys()
    if missing or len(fields) != 4:
        raise ValueError(f"threshold needs exactly type, track, count, seconds; got {value!r}")
    if fields["type"] not in ("limit", "threshold", "both"):
        raise ValueError(f"threshold type {fields['type']!r}: limit, threshold or both")
    if fields["track"] not in ("by_src", "by_dst"):
        raise ValueError(f"threshold track {fields['track']!r}: by_src or by_dst")
    return Threshold(
        fields["type"],  # type: ignore[arg-type]
        fields["track"],  # type: ignore[arg-type]
        _int(fields["count"], "threshold count", 1),
        _int(fields["seconds"], "threshold seconds", 1),
    )


class _Builder:
    """Accumulates options in order: sticky buffers and content modifiers are positional."""

    def __init__(self) -> None:
        self.buffer = PAYLOAD
        self.order: list[str] = []
        self.contents: dict[str, list[Content]] = {}
        self.pcres: dict[str, list[Pcre]] = {}
        self.last: Content | None = None

    def set_buffer(self, name: str) -> None:
        self.buffer = name
        self.last = None

    def _touch(self) -> None:
        if self.buffer not in self.order:
            self.order.append(self.buffer)

    def content(self, value: str) -> None:
        if value.startswith("!"):
            raise ValueError('negated content (content:!"...") is not supported')
        self._touch()
        self.last = Content(parse_content(value))
        self.contents.setdefault(self.buffer, []).append(self.last)

    def modify(self, name: str, value: str | None) -> None:
        if self.last is None:
            raise ValueError(f"{name} must follow a content")
        c = self.last
        if name == "nocase":
            if value is not None:
                raise ValueError("nocase takes no value")
            new = Content(c.pattern, True, c.offset, c.depth, c.distance, c.within)
        else:
            n = _int(value, name, -65535 if name == "distance" else 0)
            if name in ("offset", "depth") and c.relative:
                raise ValueError(f"{name} cannot be mixed with distance/within on one content")
            if name in ("distance", "within") and (c.offset is not None or c.depth is not None):
                raise ValueError(f"{name} cannot be mixed with offset/depth on one content")
            if name in ("depth", "within") and n < len(c.pattern):
                raise ValueError(f"{name} {n} is shorter than the content ({len(c.pattern)} B)")
            kw = {
                "offset": c.offset,
                "depth": c.depth,
                "distance": c.distance,
                "within": c.within,
                name: n,
            }
            new = Content(c.pattern, c.nocase, **kw)
        lst = self.contents[self.buffer]
        lst[-1] = new
        self.last = new

    def pcre(self, value: str) -> None:
        self._touch()
        self.pcres.setdefault(self.buffer, []).append(_pcre(value))

    def build(self) -> tuple[BufferMatch, ...]:
        return tuple(
            BufferMatch(b, tuple(self.contents.get(b, ())), tuple(self.pcres.get(b, ())))
            for b in self.order
        )


def _find_sid(options: Iterable[tuple[str, str | None]]) -> int | None:
    for name, value in options:
        if name == "sid" and value and value.isdigit():
            return int(value)
    return None


def parse_rule(
    text: str, variables: Mapping[str, str] | None = None, source: str | None = None
) -> Rule:
    """Parse one rule; raises :class:`RuleError` naming the sid and the offending keyword."""
    variables = {**DEFAULT_VARS, **(variables or {})}
    variables.setdefault("EXTERNAL_NET", "!$HOME_NET")
    m = _HEADER.match(text)
    if not m:
        raise RuleError("expected 'action proto src sport -> dst dport (options;)'", source=source)
    action, proto, src_part, direction, dst_part, body = m.groups()
    try:
        options = split_options(body)
    except ValueError as exc:
        raise RuleError(str(exc), source=source) from None
    sid = _find_sid(options)
    if sid is None:
        raise RuleError("no numeric sid", keyword="sid", source=source)

    def fail(message: str, keyword: str | None = None) -> RuleError:
        return RuleError(message, sid=sid, keyword=keyword, source=source)

    if action not in ACTIONS:
        raise fail(f"unsupported action {action!r} (supported: {', '.join(ACTIONS)})", action)
    if proto not in PROTOCOLS:
        raise fail(f"unsupported protocol {proto!r} (supported: {', '.join(PROTOCOLS)})", proto)
    try:
        src_a, src_p = _split_header(src_part)
        dst_a, dst_p = _split_header(dst_part)
        src, sport = parse_addresses(src_a, variables), parse_ports(src_p, variables)
        dst, dport = parse_addresses(dst_a, variables), parse_ports(dst_p, variables)
    except (ExprError, ValueError) as exc:
        raise fail(f"header: {exc}") from None

    fields: dict[str, str] = {}
    flow: set[str] = set()
    threshold: Threshold | None = None
    builder = _Builder()
    for name, value in options:
        if name not in SUPPORTED:
            raise fail(
                f"unsupported keyword {name!r} (the built-in engine supports: "
                f"{', '.join(SUPPORTED)})",
                name,
            )
        try:
            if name in ("msg", "classtype", "sid", "rev"):
                if name in fields:
                    raise ValueError(f"{name} given twice")
                if value is None:
                    raise ValueError(f"{name} needs a value")
                fields[name] = _unquote(value) if name == "msg" else value
            elif name == "flow":
                for opt in (value or "").split(","):
                    opt = opt.strip()
                    if opt not in FLOW_OPTIONS:
                        supported = ", ".join(FLOW_OPTIONS)
                        raise ValueError(
                            f"flow option {opt!r} unsupported (supported: {supported})"
                        )
                    flow.add(FLOW_OPTIONS[opt])
            elif name == "content":
                builder.content(value or "")
            elif name in CONTENT_MODIFIERS:
                builder.modify(name, value)
            elif name == "pcre":
                builder.pcre(value or "")
            elif name in BUFFERS:
                if value is not None:
                    raise ValueError(f"sticky buffer {name} takes no value")
                builder.set_buffer(name)
            elif name == "threshold":
                if threshold is not None:
                    raise ValueError("threshold given twice")
                threshold = _threshold(value)
        except ValueError as exc:
            raise fail(f"{name}: {exc}", name) from None
    if {"to_server", "to_client"} <= flow:
        raise fail("flow: to_server and to_client together never match", "flow")
    buffers = builder.build()
    for b in buffers:
        need = BUFFER_PROTO.get(b.buffer)
        if need and proto not in (need, APP_PROTOCOLS[need], "ip"):
            raise fail(f"{b.buffer} needs protocol {need} or {APP_PROTOCOLS[need]}", b.buffer)
    try:
        rev = _int(fields.get("rev", "1"), "rev")
    except ValueError as exc:
        raise fail(str(exc), "rev") from None
    return Rule(
        action=action,  # type: ignore[arg-type]
        proto=proto,
        src=src,
        sport=sport,
        bidirectional=direction == "<>",
        dst=dst,
        dport=dport,
        sid=sid,
        rev=rev,
        msg=fields.get("msg", ""),
        classtype=fields.get("classtype"),
        flow=frozenset(flow),
        buffers=buffers,
        threshold=threshold,
        text=text.strip(),
    )


def iter_rule_lines(text: str) -> Iterable[tuple[int, str]]:
    """(line number, rule) for each rule, joining ``\\``-continued lines; skips comments."""
    pending, start = "", 0
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""
    if pending:
        yield start, pending


def load_rules(
    texts: Iterable[str] = (),
    files: Iterable[Path] = (),
    variables: Mapping[str, str] | None = None,
) -> list[Rule]:
    """Parse inline rules and rule files; the first bad rule raises :class:`RuleError`;
    duplicate sids are an error too."""
    rules: list[Rule] = []
    for i, text in enumerate(texts):
        rules.append(parse_rule(text, variables, source=f"inline rule {i + 1}"))
    for path in files:
        for line, text in iter_rule_lines(Path(path).read_text()):
            rules.append(parse_rule(text, variables, source=f"{path}:{line}"))
    seen: dict[int, Rule] = {}
    for r in rules:
        if r.sid in seen:
            raise RuleError("duplicate sid", sid=r.sid, keyword="sid")
        seen[r.sid] = r
    return rules
