"""A full disk under a record log (flow, firewall): records that cannot be written are
counted, never half-written, and writing resumes once space returns. Root-only (it
mounts a small tmpfs), so it lives in a privileged tier."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.logfile import RecordLog, Rotation

pytestmark = pytest.mark.timeout(60)
PAD = "x" * 200  # a ~230-byte line


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def drained(out: RecordLog, offered: int) -> dict[str, int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        c = out.counters()
        if c["written"] + c["dropped"] >= offered:
            return c
        time.sleep(0.05)
    raise AssertionError(f"records not accounted for: {out.counters()}")


def test_a_full_disk_is_counted_and_writing_resumes(small_disk: Path) -> None:
    path = small_disk / "flow.jsonl"
    out = RecordLog(Rotation(path, 1 << 30, 1), capacity=100_000, name="disk-full")
    out.start()
    try:
        for i in range(2000):  # ~460 KB offered to a 64 KiB disk, in batches of 20
            out.offer({"n": i, "pad": PAD})
            if i % 20 == 19:
                drained(out, i + 1)
        c = drained(out, 2000)
        assert c["write_errors"] >= 1 and c["dropped"] > 0 and c["written"] > 0
        assert c["written"] + c["dropped"] == 2000
        lines = path.read_bytes().split(b"\n")
        assert lines[-1] == b"", "no partial line left behind"
        kept = [json.loads(line) for line in lines[:-1]]
        assert len(kept) == c["written"]

        path.unlink()  # space comes back
        for i in range(2000, 2010):
            out.offer({"n": i, "pad": PAD})
        after = drained(out, 2010)
        assert after["written"] == c["written"] + 10
        assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == list(
            range(2000, 2010)
        )
    finally:
        out.stop()
