"""Child of ``test_flowlog_reliable``, run inside a scratch network namespace: creates
``--flows`` UDP conntrack entries over ctnetlink (:func:`perf.flowlog.create`), starts a
:class:`control.flowlog.FlowLogger` with the given receive buffer and reliability, ends
every entry at once (``conntrack -F``), waits until the logger has written a record per
entry or made no progress for a few seconds, and prints its counters, the source ports of
the records in ``flow.jsonl``, and the logger socket's options, as one JSON object."""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from control.flowlog import (
    NETLINK_BROADCAST_ERROR,
    NETLINK_NO_ENOBUFS,
    FlowLogger,
    Known,
    destroy_socket,
)
from control.logfile import Rotation
from perf.flowlog import CT_COUNT, create
from xdp.ctevents import SOL_NETLINK

QUIET_S = 5.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--flows", type=int, required=True)
    p.add_argument("--rcvbuf", type=int, required=True)
    p.add_argument("--reliable", choices=("on", "off"), required=True)
    args = p.parse_args()
    for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
        Path(f"/proc/sys/net/netfilter/{key}").write_text("1")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flow.jsonl"
        logger = FlowLogger(Rotation(path, 1 << 30, 2), sampling=1, capacity=65536,
                            known=Known(), reliable=args.reliable == "on",
                            open_socket=lambda r: destroy_socket(args.rcvbuf, r))  # fmt: skip
        sock = logger._sock
        options = {
            "broadcast_error": sock.getsockopt(SOL_NETLINK, NETLINK_BROADCAST_ERROR),
            "no_enobufs": sock.getsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS),
        }
        logger.start()
        create(args.flows)
        subprocess.run(["conntrack", "-F"], check=True, capture_output=True)
        held_after_flush = int(CT_COUNT.read_text())
        last, changed = -1, time.monotonic()
        while logger.out.written < args.flows and time.monotonic() - changed < QUIET_S:
            if logger.out.written != last:
                last, changed = logger.out.written, time.monotonic()
            time.sleep(0.05)
        held_at_end = int(CT_COUNT.read_text())
        logger.stop()
        ports = [json.loads(line)["srcport"] for line in path.read_text().splitlines()]
    held = {"held_after_flush": held_after_flush, "held_at_end": held_at_end}
    print(json.dumps({"counters": logger.counters(), "ports": ports, "options": options, **held}))


if __name__ == "__main__":
    main()
