"""BPF_PROG_TEST_RUN for XDP programs: run a frame through a loaded program, no NIC.

For XDP the kernel returns the program's verdict as ``retval`` and the (possibly
rewritten) frame as ``data_out``; XDP_REDIRECT is reported, not performed.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from xdp import libbpf
from xdp.reasons import XdpAction

_HEADROOM = 256  # data_out room beyond the input, for programs that grow the frame


class XdpMd(ctypes.Structure):
    """``struct xdp_md`` as ctx_in (only ingress_ifindex / rx_queue_index are honoured)."""

    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


@dataclass(frozen=True, slots=True)
class TestRunResult:
    """Verdict, output frame and mean run time of one BPF_PROG_TEST_RUN."""

    __test__ = False  # not a pytest class

    action: XdpAction
    data_out: bytes
    duration_ns: int


def run(
    prog_fd: int,
    packet: bytes,
    repeat: int = 1,
    *,
    ingress_ifindex: int | None = None,
) -> TestRunResult:
    """Run ``packet`` through ``prog_fd``.

    Without ``ingress_ifindex`` the kernel uses the loopback device of the caller's
    netns (ifindex 1).  Frames shorter than 14 bytes are rejected (EINVAL).

    ``repeat`` > 1 re-runs the program on the *same* buffer: iteration 2 sees
    iteration 1's output (a translated frame, TTL already decremented), so only
    non-rewriting paths can be timed that way.  (The kernel's live-frames mode, which
    resets the frame every iteration, is not offered: some kernels refuse it with
    EPERM even for a bare XDP_DROP, and nothing here needs it.)
    """
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + _HEADROOM)
    opts = libbpf.BpfTestRunOpts(
        data_in=ctypes.cast(data_in, ctypes.c_void_p),
        data_out=ctypes.cast(data_out, ctypes.c_void_p),
        data_size_in=len(packet),
        data_size_out=len(data_out),
        repeat=repeat,
    )
    ctx = XdpMd(data_end=len(packet), ingress_ifindex=ingress_ifindex or 0)
    if ingress_ifindex is not None:
        opts.ctx_in = ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    libbpf.prog_test_run(prog_fd, opts)
    return TestRunResult(
        action=XdpAction(opts.retval),
        data_out=data_out.raw[: opts.data_size_out],
        duration_ns=int(opts.duration),
    )
