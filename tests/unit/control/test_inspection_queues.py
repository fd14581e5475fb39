"""The queue-collision check of the inspection step: a queue bound by another process
is refused with its number before anything changes; the queues the running engine
binds itself are not a collision (a change of queues, or of engine, rebinds them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.steps import inspection_engines
from control.steps.base import ConvergeError
from control.steps.inspection_engines import bound_queues, check_queues_free
from nfq.policy import InspectionPolicy, QueueRange

# /proc/net/netfilter/nfnetlink_queue: queue, portid, total, mode, range, dropped, ...
PROC = "    0   4242     0 2 65531     0     0        7  1\n    3   4343     0 2 65531     0     0        0  1\n"  # noqa: E501


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "nfnetlink_queue"
    path.write_text(PROC)
    monkeypatch.setattr(inspection_engines, "NFQUEUE_PROC", path)
    return path


def test_bound_queues_reads_the_first_column(proc: Path) -> None:
    assert bound_queues() == {0, 3}
    proc.unlink()
    assert bound_queues() == set()


def test_a_queue_bound_by_another_process_is_refused_with_its_number(proc: Path) -> None:
    policy = InspectionPolicy(queues=QueueRange(first=2, last=4))
    with pytest.raises(ConvergeError, match=r"inspection\.queues: queue 3 is already bound"):
        check_queues_free(policy)
    check_queues_free(policy, ours=frozenset({3}))  # our engine's own queue
    with pytest.raises(ConvergeError, match="queue 0 "):
        check_queues_free(InspectionPolicy(queues=QueueRange(first=0, last=3)), frozenset({3}))
    check_queues_free(InspectionPolicy(queues=QueueRange(first=1, last=2)))
