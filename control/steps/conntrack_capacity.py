"""Conntrack capacity: the table size derived from instance memory, and the kernel's
conntrack counters read back for ``spectra status`` and ``/metrics``.

A NAT gateway holds one conntrack entry per translated connection (AWS NAT Gateway:
55,000 simultaneous connections per destination per address, up to 8 addresses).  The
kernel sizes its table for a general-purpose host (``nf_conntrack_max`` = buckets =
MemTotal / 16 KiB / 8, at most 262,144); a gateway budgets 8 KiB of memory per entry
instead (an entry is ~320 bytes plus an 8-byte bucket: full, the table uses ~4 % of
memory), clamped to [65,536, 4,194,304].  The hash gets one bucket per entry (the
kernel's own ratio since Linux 5.x), so a full table averages one entry per chain.

Counters (kernel ``Documentation/networking/nf_conntrack-sysctl.rst`` and
``/proc/net/stat/nf_conntrack``, one row per CPU, summed here): ``insert_failed``
counts new connections whose tuple clashed at confirmation (for source NAT: no free
port left for that destination), ``drop`` packets dropped for it, ``early_drop``
entries evicted to make room in a full table, ``insert`` entries confirmed (new
connections: the CloudWatch export's ConnectionEstablishedCount).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ENTRY_BUDGET_BYTES = 8192
MIN_ENTRIES = 65536
MAX_ENTRIES = 4194304
SUMMED = ("insert", "insert_failed", "drop", "early_drop", "clashres", "search_restart")
MAX_KEY = "net/netfilter/nf_conntrack_max"
BUCKETS_KEY = "net/netfilter/nf_conntrack_buckets"


def conntrack_size(mem_total_bytes: int) -> int:
    """``nf_conntrack_max`` for an instance with ``mem_total_bytes`` of memory."""
    return max(MIN_ENTRIES, min(MAX_ENTRIES, mem_total_bytes // ENTRY_BUDGET_BYTES))


def mem_total_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == "MemTotal":
            return int(rest.split()[0]) * 1024  # the kernel writes kB (KiB)
    raise ValueError(f"{meminfo}: no MemTotal line")


@dataclass(frozen=True, slots=True)
class ConntrackSizing:
    """A document's ``nat.conntrack``: ``None`` is "auto" (from memory)."""

    max: int | None = None
    buckets: int | None = None

    def resolve(self, mem_bytes: int) -> tuple[int, int]:
        """``(nf_conntrack_max, buckets)`` on an instance with ``mem_bytes``."""
        size = self.max if self.max is not None else conntrack_size(mem_bytes)
        return size, self.buckets if self.buckets is not None else size


def parse_stat(text: str) -> dict[str, int]:
    """Sum the per-CPU rows of ``/proc/net/stat/nf_conntrack`` (hex, one header line)."""
    lines = text.split("\n")
    names = lines[0].split()
    totals = dict.fromkeys(SUMMED, 0)
    for row in lines[1:]:
        values = row.split()
        if not values:
            continue
        if len(values) != len(names):
            raise ValueError(f"nf_conntrack stat row has {len(values)} fields, header {len(names)}")
        for name, value in zip(names, values, strict=True):
            if name in totals:
                totals[name] += int(value, 16)
    return totals


def read_counters(proc: Path = Path("/proc")) -> dict[str, int]:
    """This network namespace's conntrack size, fill and summed counters."""

    def sysctl(key: str) -> int:
        return int((proc / "sys" / key).read_text())

    counters = {
        "count": sysctl("net/netfilter/nf_conntrack_count"),
        "max": sysctl(MAX_KEY),
        "buckets": sysctl(BUCKETS_KEY),
    }
    counters.update(parse_stat((proc / "net/stat/nf_conntrack").read_text()))
    return counters
