"""The compiled ruleset: one Hyperscan database per buffer holding every ``content`` of
every rule for that buffer (literal mode, caseless where ``nocase``), so one scan finds
all patterns present; only rules whose every content was seen become candidates, and
only candidates are verified in full (positions, relative modifiers, pcre, header).
Rules without any content (header-only or pcre-only) are always candidates of the
buffers they use, indexed by protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hyperscan

from nfq.engine.rules import PAYLOAD, BufferMatch, Content, Rule

_FLAGS = hyperscan.HS_FLAG_SINGLEMATCH


@dataclass(slots=True)
class BufferDb:
    """Hyperscan database of one buffer and which rules need each pattern id."""

    name: str
    db: Any
    scratch: Any
    users: list[list[int]]  # pattern id -> rule indices
    max_len: int

    def scan(self, data: bytes | memoryview, hits: set[int]) -> None:
        """Add the ids of every pattern in ``data`` to ``hits``."""
        self.db.scan(bytes(data), match_event_handler=_collect, context=hits, scratch=self.scratch)


def _collect(pid: int, _start: int, _end: int, _flags: int, hits: set[int]) -> None:
    hits.add(pid)


@dataclass(slots=True)
class Ruleset:
    """Rules plus the Hyperscan databases built from them; immutable once built."""

    rules: tuple[Rule, ...]
    dbs: dict[str, BufferDb] = field(default_factory=dict)
    needs: list[dict[str, frozenset[int]]] = field(default_factory=list)
    # rules with no content in any buffer: candidates by protocol
    contentless: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, rules: Iterable[Rule]) -> Ruleset:
        rs = cls(tuple(rules))
        patterns: dict[str, dict[tuple[bytes, bool], int]] = {}
        users: dict[str, list[list[int]]] = {}
        contentless: dict[str, list[int]] = {}
        for idx, rule in enumerate(rs.rules):
            need: dict[str, frozenset[int]] = {}
            for b in rule.buffers:
                ids = set()
                table = patterns.setdefault(b.buffer, {})
                for c in b.contents:
                    key = (c.pattern.lower() if c.nocase else c.pattern, c.nocase)
                    pid = table.setdefault(key, len(table))
                    lst = users.setdefault(b.buffer, [])
                    if pid == len(lst):
                        lst.append([])
                    if idx not in lst[pid]:
                        lst[pid].append(idx)
                    ids.add(pid)
                need[b.buffer] = frozenset(ids)
            rs.needs.append(need)
            if not any(b.contents for b in rule.buffers):
                contentless.setdefault(rule.proto, []).append(idx)
        for name, table in patterns.items():
            if not table:
                continue
            exprs = [p for p, _ in table]
            flags = [_FLAGS | (hyperscan.HS_FLAG_CASELESS if nc else 0) for _, nc in table]
            db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            db.compile(
                expressions=exprs,
                ids=list(range(len(exprs))),
                elements=len(exprs),
                flags=flags,
                literal=True,
            )
            rs.dbs[name] = BufferDb(
                name, db, hyperscan.Scratch(db), users[name], max(len(p) for p in exprs)
            )
        rs.contentless = {k: tuple(v) for k, v in contentless.items()}
        return rs

    def candidates(self, buffer: str, new_hits: Iterable[int]) -> set[int]:
        """Rules that use ``buffer`` and have a pattern among ``new_hits``."""
        db = self.dbs.get(buffer)
        out: set[int] = set()
        if db is None:
            return out
        for pid in new_hits:
            out.update(db.users[pid])
        return out

    def complete(self, idx: int, hits: dict[str, set[int]]) -> bool:
        """Every content of rule ``idx`` was seen in its buffer."""
        for name, ids in self.needs[idx].items():
            if ids and not ids <= hits.get(name, set()):
                return False
        return True


def match_contents(data: bytes, lowered: bytes, contents: Sequence[Content]) -> bool:
    """Suricata content semantics: offset/depth absolute, distance/within relative to the
    previous match's end, trying later occurrences when a later content fails."""

    def at(i: int, prev_end: int) -> bool:
        c = contents[i]
        hay = lowered if c.nocase else data
        pat = c.pattern.lower() if c.nocase else c.pattern
        if c.relative:
            dist = c.distance or 0
            start = max(prev_end + dist, 0)
            end = prev_end + dist + c.within if c.within is not None else len(hay)
        else:
            start = c.offset or 0
            end = start + c.depth if c.depth is not None else len(hay)
        pos = hay.find(pat, start, end)
        while pos >= 0:
            if i + 1 == len(contents) or at(i + 1, pos + len(pat)):
                return True
            pos = hay.find(pat, pos + 1, end)
        return False

    return not contents or at(0, 0)


def match_buffer(bm: BufferMatch, data: bytes) -> bool:
    lowered = data.lower() if any(c.nocase for c in bm.contents) else data
    if not match_contents(data, lowered, bm.contents):
        return False
    return all(p.regex.search(data) is not None for p in bm.pcres)


__all__ = ["PAYLOAD", "BufferDb", "Ruleset", "match_buffer", "match_contents"]
