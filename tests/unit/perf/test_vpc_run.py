"""``spectra lab run``'s signal handling: the first SIGINT/SIGTERM stops the run, one
during clean-up does not cut it short, and a forked helper (pyroute2 forks one per
namespace call and ends it with SIGTERM) just exits instead of running the clean-up."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from perf.lab.host import StopOnce


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.usefixtures("handlers")
def test_first_signal_stops_a_second_is_ignored() -> None:
    stop = StopOnce()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs at the next bytecode
    assert stop.stopping
    os.kill(os.getpid(), signal.SIGINT)  # the clean-up goes on
    time.sleep(0.01)


@pytest.mark.usefixtures("handlers")
def test_a_forked_helper_exits_on_sigterm() -> None:
    StopOnce()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            time.sleep(10)
        finally:
            os._exit(0)  # reached only if the handler raised instead of exiting
    time.sleep(0.1)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM
