"""The NFQUEUE loop of the built-in engine: one process per queue number (the kernel's
``--queue-balance`` hash is symmetric over the address pair, so both directions of a
flow reach the same process and its flow table).

Verdicts (see :mod:`nfq.marks`): ``ACCEPT`` -> ``NF_ACCEPT``; ``DROP`` -> ``NF_DROP``;
``REJECT`` -> a RST / ICMP unreachable to the client, then ``NF_DROP``; ``BYPASS`` ->
``NF_REPEAT`` with packet mark |= BYPASS|REPEAT, so the packet re-enters the product's
chain, which saves BYPASS into the conntrack mark (``CONNMARK``): later packets are no
longer queued and the XDP offloader may take the flow.

Signals: SIGHUP reloads the rules (parsed and compiled in a background thread, swapped
in between two packets, so nothing is held back while compiling; a bad rule set keeps
the old one and is logged); SIGUSR1 reopens eve.json (log rotation); SIGTERM/SIGINT stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfq.engine.detect import Decision, Inspector
from nfq.engine.eve import EveWriter
from nfq.engine.matcher import Ruleset
from nfq.engine.nfqconf import set_fail_open
from nfq.engine.packet import parse
from nfq.engine.reject import Rejecter
from nfq.engine.rules import RuleError, load_rules
from nfq.marks import SKB_MARK_BYPASS, SKB_MARK_REPEAT

log = logging.getLogger("spectra.nfq")
BYPASS_MARK = SKB_MARK_BYPASS | SKB_MARK_REPEAT


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything one engine process needs."""

    queues: tuple[int, ...] = (0,)
    rules: tuple[str, ...] = ()
    rule_files: tuple[Path, ...] = ()
    variables: dict[str, str] = field(default_factory=dict)
    stream_depth: int = 1_048_576
    eve: Path | None = None
    stats: Path | None = None
    fail_open: bool = True
    copy_range: int = 65535
    max_len: int = 16384
    sock_len: int = 8 << 20


def build_ruleset(cfg: EngineConfig) -> Ruleset:
    """Parse and compile; raises :class:`RuleError` for the first bad rule."""
    return Ruleset.build(load_rules(cfg.rules, cfg.rule_files, cfg.variables))


class QueueWorker:
    """Binds one queue and gives every packet a verdict from an :class:`Inspector`."""

    def __init__(self, cfg: EngineConfig, queue: int, ruleset: Ruleset) -> None:
        self.cfg = cfg
        self.queue = queue
        self.eve = EveWriter(cfg.eve)
        self.inspector = Inspector(ruleset, stream_depth=cfg.stream_depth, alert=self.eve.alert)
        self.rejecter = Rejecter()
        self.stop = threading.Event()
        self._reload_requested = False
        self._pending: Ruleset | None = None
        self._reloads = 0
        self._reload_error: str | None = None
        self._started = time.time()

    def handle(self, pkt: Any) -> None:
        """The NFQUEUE callback: the hot path."""
        d = self.inspector.inspect(pkt.get_payload())
        if d is Decision.ACCEPT:
            pkt.accept()
        elif d is Decision.BYPASS:
            pkt.set_mark(pkt.get_mark() | BYPASS_MARK)
            pkt.repeat()
        elif d is Decision.DROP:
            pkt.drop()
        else:
            p = parse(pkt.get_payload())
            if p is not None:
                try:
                    self.rejecter.send(p)
                except OSError as exc:
                    log.error("reject could not be sent: %s", exc)
            pkt.drop()

    def request_reload(self, *_: object) -> None:
        self._reload_requested = True

    def _reload_thread(self) -> None:
        try:
            self._pending = build_ruleset(self.cfg)
        except (RuleError, OSError) as exc:
            self._reload_error = str(exc)
            log.error("queue %d: reload rejected, keeping the loaded rules: %s", self.queue, exc)

    def _maybe_reload(self, thread: threading.Thread | None) -> threading.Thread | None:
        if self._reload_requested and thread is None:
            self._reload_requested = False
            self._reload_error = None
            thread = threading.Thread(target=self._reload_thread, daemon=True)
            thread.start()
        if thread is not None and not thread.is_alive():
            if self._pending is not None:
                self.inspector.load(self._pending)
                self._pending = None
                self._reloads += 1
                log.info(
                    "queue %d: rules reloaded (%d rules)",
                    self.queue,
                    len(self.inspector.ruleset.rules),
                )
            thread = None
        return thread

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "queue": self.queue,
            "started": self._started,
            "rules": len(self.inspector.ruleset.rules),
            "reloads": self._reloads,
            "reload_error": self._reload_error,
            "counters": self.inspector.stats(),
        }

    def _write_status(self) -> None:
        if self.cfg.stats is None:
            return
        path = self.cfg.stats.with_name(f"{self.cfg.stats.stem}.q{self.queue}.json")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status()))
        tmp.replace(path)

    def serve(self, ready: Callable[[], None] | None = None) -> None:
        from netfilterqueue import NetfilterQueue

        nfq = NetfilterQueue()
        nfq.bind(
            self.queue,
            self.handle,
            max_len=self.cfg.max_len,
            range=self.cfg.copy_range,
            sock_len=self.cfg.sock_len,
        )
        fd = nfq.get_fd()
        if self.cfg.fail_open:
            set_fail_open(fd, self.queue)
        log.info(
            "queue %d bound (copy range %d, fail-open %s)",
            self.queue,
            self.cfg.copy_range,
            self.cfg.fail_open,
        )
        self._write_status()
        if ready is not None:
            ready()
        thread: threading.Thread | None = None
        next_status = 0.0
        try:
            while not self.stop.is_set():
                with contextlib.suppress(InterruptedError):
                    readable, _, _ = select.select([fd], [], [], 0.2)
                if readable:
                    nfq.run(block=False)
                thread = self._maybe_reload(thread)
                now = time.monotonic()
                if now >= next_status:
                    self._write_status()
                    next_status = now + 1.0
        finally:
            self._write_status()
            nfq.unbind()
            self.eve.close()
            self.rejecter.close()


def _worker_main(cfg: EngineConfig, queue: int) -> None:
    worker = QueueWorker(cfg, queue, build_ruleset(cfg))
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    signal.signal(signal.SIGHUP, worker.request_reload)
    signal.signal(signal.SIGUSR1, lambda *_: worker.eve.reopen())
    worker.serve()


def serve(cfg: EngineConfig) -> int:
    """Run the engine on every queue of ``cfg`` until SIGTERM; 0 on a clean stop.

    The rules are checked once up front, so a bad rule set fails the start with its
    message instead of starting workers that die."""
    build_ruleset(cfg)
    if len(cfg.queues) == 1:
        _worker_main(cfg, cfg.queues[0])
        return 0
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker_main, args=(cfg, q), name=f"nfq-q{q}") for q in cfg.queues]
    for p in procs:
        p.start()
    stopping = False

    def forward(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = stopping or signum in (signal.SIGTERM, signal.SIGINT)
        for p in procs:
            if p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, forward)
    rc = 0
    while any(p.is_alive() for p in procs):
        for p in procs:
            p.join(timeout=0.2)
            if not p.is_alive() and p.exitcode and not stopping:
                log.error("worker %s exited with %s; stopping the engine", p.name, p.exitcode)
                rc = 1
                forward(signal.SIGTERM, None)
    return rc
