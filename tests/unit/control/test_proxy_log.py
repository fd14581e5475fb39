"""The proxy access log follower: complete lines only, once each, across Squid's
rotation (rename + new file) and a truncation; a follower starts at the file's end."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.logship import Shipper
from control.proxy_log import AccessLogFollower

pytestmark = pytest.mark.timeout(30)


class Recorder(Shipper):
    """A shipper that keeps what it is offered (no thread, no sink)."""

    def __init__(self) -> None:
        super().__init__([], capacity=16, name="test")
        self.got: list[str] = []

    def offer(self, line: str, ts_ms: int | None = None) -> bool:
        self.got.append(line)
        return True

    def start(self) -> None:
        return None

    def stop(self, timeout: float = 2.0) -> None:
        return None


def test_lines_are_shipped_once_across_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "proxy-access.json"
    path.write_text('{"old":1}\n')
    ship = Recorder()
    follower = AccessLogFollower(path, ship, poll=60)
    follower.start()  # the thread waits a minute: the test steps it
    try:
        with path.open("a") as f:
            f.write('{"n":1}\n{"n":')
            f.flush()
            follower.step()
            assert ship.got == ['{"n":1}']  # the existing line skipped, the partial held
            f.write("2}\n")
            f.flush()
            path.rename(tmp_path / "proxy-access.json.0")  # squid -k rotate
            f.write('{"n":3}\n')  # Squid writes on until it reopens
        path.write_text('{"n":4}\n')
        follower.step()
        assert ship.got == ['{"n":1}', '{"n":2}', '{"n":3}', '{"n":4}']
        path.write_text("{}\n")  # truncated and rewritten: shorter than what was read
        follower.step()
        assert ship.got[-1] == "{}" and follower.counters()["rotations"] == 1
        assert follower.counters()["lines"] == 5
    finally:
        follower.stop()
