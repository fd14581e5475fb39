"""Queue flags that the ``netfilterqueue`` binding does not expose, sent as an
``NFQNL_MSG_CONFIG`` message on the queue's own netlink socket (nfnetlink_queue,
``include/uapi/linux/netfilter/nfnetlink_queue.h``).

``NFQA_CFG_F_FAIL_OPEN``: when the queue is full (or the socket buffer overflows) the
kernel accepts the packet instead of dropping it - the overload half of fail-open (the
"no consumer" half is ``--queue-bypass`` in the rule).
"""

from __future__ import annotations

import os
import struct

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NLM_F_REQUEST = 0x1
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1 << 0


def config_message(queue: int, flags: int, mask: int, seq: int = 0) -> bytes:
    # nlattr header is host order, the payload network order (be32)
    attrs = struct.pack("=HH", 8, NFQA_CFG_MASK) + struct.pack("!I", mask)
    attrs += struct.pack("=HH", 8, NFQA_CFG_FLAGS) + struct.pack("!I", flags)
    body = struct.pack("=BB", 0, 0) + struct.pack("!H", queue) + attrs
    header = struct.pack(
        "=IHHII",
        16 + len(body),
        (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG,
        NLM_F_REQUEST,
        seq,
        0,
    )
    return header + body


def set_fail_open(fd: int, queue: int, on: bool = True) -> None:
    """Turn NFQA_CFG_F_FAIL_OPEN on/off for ``queue`` bound on netlink socket ``fd``."""
    flag = NFQA_CFG_F_FAIL_OPEN
    os.write(fd, config_message(queue, flag if on else 0, flag))
