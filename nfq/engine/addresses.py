"""Address and port expressions of the rule header, with variables and negation.

Grammar (Suricata's): ``any``, an address or CIDR, a port or range (``80``, ``1024:``,
``:1023``, ``8000:8080``), ``$VAR``, ``!expr``, and ``[expr, expr, ...]`` lists, nested.
A list matches what any positive element matches (everything when it has only negative
elements) minus what any negative element matches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

Ranges = tuple[tuple[int, int], ...]


class ExprError(ValueError):
    """An address or port expression that does not parse."""


@dataclass(frozen=True, slots=True)
class Expr:
    """A compiled expression: a value matches when in ``include`` and not in ``exclude``."""

    include: Ranges | None  # None = any
    exclude: Ranges

    def matches(self, value: int) -> bool:
        for lo, hi in self.exclude:
            if lo <= value <= hi:
                return False
        if self.include is None:
            return True
        return any(lo <= value <= hi for lo, hi in self.include)


ANY = Expr(None, ())


def _split_list(text: str) -> list[str]:
    items, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ExprError(f"unbalanced ']' in {text!r}")
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if depth:
        raise ExprError(f"unbalanced '[' in {text!r}")
    items.append(cur.strip())
    return [i for i in items if i]


def _negate(e: Expr, full: tuple[int, int]) -> Expr:
    include = e.include if e.include is not None else (full,)
    if e.exclude:
        # !(A - B) = !A + B
        return Expr(_union(_complement(include, full), e.exclude), ())
    return Expr(None, include)


def _complement(ranges: Ranges, full: tuple[int, int]) -> Ranges:
    out, pos = [], full[0]
    for lo, hi in sorted(ranges):
        if lo > pos:
            out.append((pos, lo - 1))
        pos = max(pos, hi + 1)
    if pos <= full[1]:
        out.append((pos, full[1]))
    return tuple(out)


def _union(a: Ranges, b: Ranges) -> Ranges:
    return tuple(sorted({*a, *b}))


class _Parser:
    def __init__(
        self,
        variables: Mapping[str, str],
        atom: Callable[[str], tuple[int, int]],
        full: tuple[int, int],
        kind: str,
    ) -> None:
        self.variables = variables
        self.atom = atom
        self.full = full
        self.kind = kind
        self.seen: tuple[str, ...] = ()

    def parse(self, text: str) -> Expr:
        text = text.strip()
        if not text:
            raise ExprError(f"empty {self.kind}")
        if text == "any":
            return ANY
        if text.startswith("!"):
            return _negate(self.parse(text[1:]), self.full)
        if text.startswith("$"):
            name = text[1:]
            if name in self.seen:
                raise ExprError(f"variable ${name} refers to itself")
            if name not in self.variables:
                raise ExprError(f"unknown variable ${name}")
            self.seen = (*self.seen, name)
            try:
                return self.parse(self.variables[name])
            finally:
                self.seen = self.seen[:-1]
        if text.startswith("["):
            if not text.endswith("]"):
                raise ExprError(f"unbalanced list {text!r}")
            pos: list[Ranges] = []
            neg: list[Ranges] = []
            for item in _split_list(text[1:-1]):
                e = self.parse(item)
                if e.include is None and not e.exclude:
                    pos.append((self.full,))
                    continue
                if e.include is not None:
                    pos.append(e.include)
                neg.append(e.exclude)
            include = None if not pos else tuple(sorted({r for p in pos for r in p}))
            return Expr(include, tuple(sorted({r for n in neg for r in n})))
        return Expr((self.atom(text),), ())


def _ip_atom(text: str) -> tuple[int, int]:
    try:
        net = IPv4Network(text, strict=False)
    except ValueError:
        raise ExprError(f"address {text!r}: expected an IPv4 address or CIDR") from None
    return int(net.network_address), int(net.broadcast_address)


def _port_atom(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        first = int(lo) if lo else 0
        last = (int(hi) if hi else 65535) if sep else first
    except ValueError:
        raise ExprError(f"port {text!r}: expected N, A:B, A: or :B") from None
    if not 0 <= first <= last <= 65535:
        raise ExprError(f"port range {text!r} out of order or above 65535")
    return first, last


def parse_addresses(text: str, variables: Mapping[str, str]) -> Expr:
    return _Parser(variables, _ip_atom, (0, 0xFFFFFFFF), "address").parse(text)


def parse_ports(text: str, variables: Mapping[str, str]) -> Expr:
    return _Parser(variables, _port_atom, (0, 65535), "port").parse(text)
