"""BPF_PROG_TEST_RUN for the tc program ``tc_gwlb_encap`` (XDP programs use
:func:`xdp.testrun.run`).  For SCHED_CLS the kernel builds an skb from the frame
(``skb->protocol`` from its EtherType) and returns the TC action and the frame as the
program left it, grown or not.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from xdp import libbpf

TC_ACT_OK = 0
TC_ACT_SHOT = 2
_HEADROOM = 512


@dataclass(frozen=True, slots=True)
class TcRunResult:
    """TC action, output frame and mean run time of one BPF_PROG_TEST_RUN."""

    __test__ = False

    action: int
    data_out: bytes
    duration_ns: int


def run_tc(prog_fd: int, frame: bytes, repeat: int = 1) -> TcRunResult:
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + _HEADROOM)
    opts = libbpf.BpfTestRunOpts(
        data_in=ctypes.cast(data_in, ctypes.c_void_p),
        data_out=ctypes.cast(data_out, ctypes.c_void_p),
        data_size_in=len(frame),
        data_size_out=len(data_out),
        repeat=repeat,
    )
    libbpf.prog_test_run(prog_fd, opts)
    return TcRunResult(
        action=int(opts.retval),
        data_out=data_out.raw[: opts.data_size_out],
        duration_ns=int(opts.duration),
    )
