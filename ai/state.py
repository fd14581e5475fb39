"""Budget and metering state that survives a restart: an embedded SQLite file.

:class:`~ai.budget.Budgets` and :class:`~ai.metering.Metering` keep their figures in
memory and decide on them there (a reservation never awaits, so it stays atomic on
the event loop); every change is also handed to this store as a delta. Deltas are
summed per key (and per key and model) on the event loop and committed together, in
one transaction, by one thread, at most every ``write_window_s``: a busy gateway pays
one thread hop per window, not per request.

Reservations are persisted too. A process that dies between reserve and reconcile
leaves them in the file, and the next start charges them in full, so a crash can
never give a key back tokens or money it may have spent; the window is the most a
hard kill (SIGKILL, power loss) can lose. A clean stop (``close``) loses nothing.

Rate-limit windows are kept the same way, as requests and tokens per key and wall-clock
second: a restart inside a minute still counts what that minute already used (rows
older than two windows are deleted as the store writes).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai.writebehind import WriteBehind

log = logging.getLogger("spectra.ai")

#: The length of a rate-limit window (requests and tokens per minute), in seconds.
RATE_WINDOW_S = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    key_id TEXT PRIMARY KEY,
    used_tokens INTEGER NOT NULL DEFAULT 0, used_cost REAL NOT NULL DEFAULT 0,
    reserved_tokens INTEGER NOT NULL DEFAULT 0, reserved_cost REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meters (
    key_id TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    estimated_requests INTEGER NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, model)
);
CREATE TABLE IF NOT EXISTS windows (
    key_id TEXT NOT NULL, second INTEGER NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, second)
);
"""
METER_FIELDS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "estimated_requests",
    "cost_usd",
)


@dataclass(slots=True)
class BudgetDelta:
    """A change of one key's budget figures (also a key's loaded totals)."""

    used_tokens: int = 0
    used_cost: float = 0.0
    reserved_tokens: int = 0
    reserved_cost: float = 0.0

    def add(self, other: BudgetDelta) -> None:
        self.used_tokens += other.used_tokens
        self.used_cost += other.used_cost
        self.reserved_tokens += other.reserved_tokens
        self.reserved_cost += other.reserved_cost


@dataclass(slots=True)
class MeterDelta:
    """A change of one (key, model) meter (also its loaded totals)."""

    values: list[float] = field(default_factory=lambda: [0] * len(METER_FIELDS))


#: One key's rate-window use in one wall-clock second: (second, requests, tokens).
WindowRow = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a previous run left: used totals (crash leftovers charged), meters, and the
    rate-window use of the last minute (per key, oldest second first)."""

    budgets: dict[str, BudgetDelta]
    meters: dict[tuple[str, str], MeterDelta]
    windows: dict[str, list[WindowRow]] = field(default_factory=dict)


class StateStore(WriteBehind):
    """The SQLite file of budgets, meters and rate windows, written behind by one thread."""

    def __init__(self, path: Path | None, write_window_s: float = 0.02) -> None:
        super().__init__("spectra-ai-state", write_window_s)
        self.path = path
        self._budgets: defaultdict[str, BudgetDelta] = defaultdict(BudgetDelta)
        self._meters: dict[tuple[str, str], MeterDelta] = {}
        self._windows: defaultdict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])

    # --- lifecycle ----------------------------------------------------------------------

    async def open(self) -> Loaded:
        loaded: Loaded = await self._run(self._open)
        return loaded

    def _open(self) -> Loaded:
        db = self._connect(self.path, busy_timeout_ms=5000)
        db.executescript(SCHEMA)
        # Reservations left by a run that did not reconcile them: charge them in full.
        db.execute(
            "UPDATE budgets SET used_tokens = used_tokens + reserved_tokens, "
            "used_cost = used_cost + reserved_cost, reserved_tokens = 0, reserved_cost = 0 "
            "WHERE reserved_tokens != 0 OR reserved_cost != 0"
        )
        budgets = {
            key: BudgetDelta(tokens, cost)
            for key, tokens, cost in db.execute(
                "SELECT key_id, used_tokens, used_cost FROM budgets"
            )
        }
        columns = ", ".join(METER_FIELDS)
        meters = {
            (row[0], row[1]): MeterDelta(list(row[2:]))
            for row in db.execute(f"SELECT key_id, model, {columns} FROM meters")
        }
        windows: dict[str, list[WindowRow]] = {}
        for key, second, requests, tokens in db.execute(
            "SELECT key_id, second, requests, tokens FROM windows WHERE second >= ? "
            "ORDER BY key_id, second",
            (int(time.time() - RATE_WINDOW_S) - 1,),
        ):
            windows.setdefault(key, []).append((second, requests, tokens))
        self._db = db
        return Loaded(budgets, meters, windows)

    # --- deltas (event loop) ------------------------------------------------------------

    def budget(self, key_id: str, delta: BudgetDelta) -> None:
        self._budgets[key_id].add(delta)
        self._arm()

    def meter(self, key_id: str, model: str, values: tuple[float, ...]) -> None:
        pending = self._meters.setdefault((key_id, model), MeterDelta())
        for i, value in enumerate(values):
            pending.values[i] += value
        self._arm()

    def window(self, key_id: str, second: int, requests: int, tokens: int) -> None:
        pending = self._windows[(key_id, second)]
        pending[0] += requests
        pending[1] += tokens
        self._arm()

    def _write(self) -> None:
        self._timer = None
        budgets, self._budgets = dict(self._budgets), defaultdict(BudgetDelta)
        meters, self._meters = self._meters, {}
        windows = [(k, s, r, t) for (k, s), (r, t) in self._windows.items()]
        self._windows.clear()
        loop = asyncio.get_running_loop()
        self._writing = loop.run_in_executor(self._pool, self._commit, budgets, meters, windows)
        self._writing.add_done_callback(lambda done: self._written(done, budgets, meters, windows))

    def _written(
        self,
        done: asyncio.Future[None],
        budgets: dict[str, BudgetDelta],
        meters: dict[tuple[str, str], MeterDelta],
        windows: list[tuple[str, int, int, int]],
    ) -> None:
        self._writing = None
        if done.cancelled() or done.exception() is not None:
            log.error("budget/metering state write failed (kept, retried): %s", done.exception())
            for key, delta in budgets.items():
                self._budgets[key].add(delta)
            for (key, model), pending in meters.items():
                self.meter(key, model, tuple(pending.values))
            for key, second, requests, tokens in windows:
                self.window(key, second, requests, tokens)
            self._arm()
        elif (self._budgets or self._meters or self._windows) and self._timer is None:
            self._write()

    # --- the writer thread --------------------------------------------------------------

    def _commit(
        self,
        budgets: dict[str, BudgetDelta],
        meters: dict[tuple[str, str], MeterDelta],
        windows: list[tuple[str, int, int, int]],
    ) -> None:
        db = self._db
        assert db is not None
        meter_set = ", ".join(f"{f} = {f} + excluded.{f}" for f in METER_FIELDS)
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO budgets VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET "
                "used_tokens = used_tokens + excluded.used_tokens, "
                "used_cost = used_cost + excluded.used_cost, "
                "reserved_tokens = reserved_tokens + excluded.reserved_tokens, "
                "reserved_cost = reserved_cost + excluded.reserved_cost",
                [
                    (k, d.used_tokens, d.used_cost, d.reserved_tokens, d.reserved_cost)
                    for k, d in budgets.items()
                ],
            )
            db.executemany(
                f"INSERT INTO meters VALUES (?, ?, {', '.join('?' * len(METER_FIELDS))}) "
                f"ON CONFLICT (key_id, model) DO UPDATE SET {meter_set}",
                [(k, m, *d.values) for (k, m), d in meters.items()],
            )
            db.executemany(
                "INSERT INTO windows VALUES (?, ?, ?, ?) ON CONFLICT (key_id, second) DO UPDATE "
                "SET requests = requests + excluded.requests, tokens = tokens + excluded.tokens",
                windows,
            )
            db.execute(
                "DELETE FROM windows WHERE second < ?", (int(time.time() - 2 * RATE_WINDOW_S),)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def read_usage(
    path: Path | None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[dict[str, Any]]]]:
    """(budget use per key, meters per key) from a gateway's state file, opened
    read-only (the config API's usage view, the agent's CloudWatch export); empty when
    there is none yet."""
    if path is None or not path.is_file():
        return {}, {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        budgets = {
            key: {"used_tokens": tokens, "used_cost_usd": cost}
            for key, tokens, cost in db.execute(
                "SELECT key_id, used_tokens, used_cost FROM budgets"
            )
        }
        meters: dict[str, list[dict[str, Any]]] = {}
        columns = ", ".join(METER_FIELDS)
        for row in db.execute(f"SELECT key_id, model, {columns} FROM meters ORDER BY 1, 2"):
            meters.setdefault(row[0], []).append(
                {"model": row[1], **dict(zip(METER_FIELDS, row[2:], strict=True))}
            )
    except sqlite3.OperationalError:  # a file the gateway has not initialised yet
        return {}, {}
    finally:
        db.close()
    return budgets, meters
