"""The lab's pidfiles name one process, not a pid: a recorded process that died and
whose pid was reused (by an agent, say) is not signalled by ``stop``."""

from __future__ import annotations

from pathlib import Path

from perf.lab.host import daemonize, pid_alive, stop


def test_a_reused_pid_is_not_the_recorded_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "sleeper.pid"
    pid = daemonize(["sleep", "30"], pidfile, tmp_path / "sleeper.log")
    try:
        recorded, ticks = (int(f) for f in pidfile.read_text().split())
        assert recorded == pid and pid_alive(pidfile) == pid
        pidfile.write_text(f"{pid} {ticks + 1}\n")  # same pid, another start: not ours
        assert pid_alive(pidfile) is None
        stop(pidfile, wait=0)  # signals nothing, removes the record
        assert not pidfile.exists() and Path(f"/proc/{pid}").exists()
        pidfile.write_text(f"{pid} {ticks}\n")
        assert pid_alive(pidfile) == pid
    finally:
        stop(pidfile, wait=2)
    assert pid_alive(pidfile) is None
