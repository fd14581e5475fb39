"""The product's XDP programs (``xdp.Dataplane``) as the benchmark uses them: compiled
once per process, attached inside the gateway's and the sink's namespaces (interface
indexes and devmap entries are per namespace), never pinned (nothing outlives a run).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perf.target import Host, PerfError

if TYPE_CHECKING:
    from xdp import Dataplane

log = logging.getLogger("spectra.perf")

INSTANCE = "perf"


@contextlib.contextmanager
def inside(host: Host) -> Iterator[None]:
    """Run this process's netlink/socket calls in ``host``'s namespace meanwhile."""
    if not host.local:
        raise PerfError(f"XDP programs can only be attached here, not on {host}")
    if host.netns is None:
        yield
        return
    from pyroute2 import netns

    netns.pushns(host.netns)
    try:
        yield
    finally:
        netns.popns()


class Programs:
    """One compiled, unpinned data-plane instance and the interfaces it is attached to."""

    def __init__(self) -> None:
        self._dp: Dataplane | None = None
        self.error: str | None = None
        self._attached: list[tuple[Host, str]] = []
        # Programs found on a device before we replaced them (the lab's XDP_PASS
        # peers): (mode flags, fd holding it), put back on detach.
        self._found: dict[tuple[Host, str], tuple[int, int]] = {}
        # xdp_redirect_only: ((host, egress, macs) it was built for, bcc object, fd)
        self._redirect: tuple[tuple[Host, str, tuple[str, str]], Any, int] | None = None

    def dataplane(self) -> Dataplane:
        """Compile on first use; raise PerfError (kept in ``error``) when unavailable."""
        if self._dp is not None:
            return self._dp
        if self.error is not None:
            raise PerfError(self.error)
        try:
            from xdp import Dataplane, loader

            objects = loader.compile_programs()
            self._dp = Dataplane(INSTANCE, Path("/nonexistent/perf-unpinned"), objects)
        except Exception as exc:  # any failure makes the XDP paths "unavailable"
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise PerfError(self.error) from exc
        return self._dp

    def attach(self, host: Host, dev: str, program: str) -> str:
        """Attach ``program`` natively to ``dev`` in ``host``; ``xdp_gateway`` also
        registers ``dev`` as an egress port.  Returns the mode in use."""
        from xdp import loader

        dp = self.dataplane()
        with self._attaching(host, dev):
            if program == "xdp_gateway":
                return dp.attach(dev, mode="native")
            return loader.attach(dev, dp.program_fd(program), "native")

    def attach_redirect_only(
        self, host: Host, dev: str, egress: str, macs: tuple[str, str]
    ) -> None:
        """Attach ``xdp_redirect_only`` (perf/redirect_only.bpf.c) to ``dev``: every
        frame out of ``egress`` with ``macs`` (source, destination), nothing else.
        Compiled once per egress and MAC pair, not once per run."""
        from xdp import loader

        with self._attaching(host, dev):
            wanted = (host, egress, macs)
            if self._redirect is None or self._redirect[0] != wanted:
                self._drop_redirect()
                self._redirect = (wanted, *_redirect_only(loader.ifindex_of(egress), macs))
            loader.attach(dev, self._redirect[2], "native")

    @contextlib.contextmanager
    def _attaching(self, host: Host, dev: str) -> Iterator[None]:
        """Inside ``host``, with the program ``dev`` had kept to put back on detach."""
        with inside(host):
            if (host, dev) not in self._found:
                self._found[(host, dev)] = _current_program(dev)
            yield
        self._attached.append((host, dev))

    def _drop_redirect(self) -> None:
        if self._redirect is not None:
            self._redirect[1].cleanup()
            self._redirect = None

    def set_tx_port(self, host: Host, dev: str) -> int:
        from xdp import loader

        with inside(host):
            ifindex = loader.ifindex_of(dev)
            self.dataplane().set_tx_port(ifindex)
        return ifindex

    def ifindex(self, host: Host, dev: str) -> int:
        from xdp import loader

        with inside(host):
            return loader.ifindex_of(dev)

    def add_udp_or_tcp_flow(
        self,
        proto: int,
        ifindex: int,
        src: tuple[str, int],
        dst: tuple[str, int],
        new_src: tuple[str, int],
        new_dst: tuple[str, int],
        egress_ifindex: int,
        macs: tuple[str, str],
    ) -> None:
        from xdp import FlowEntry, FlowKey

        key = FlowKey(ifindex, IPv4Address(src[0]), IPv4Address(dst[0]), src[1], dst[1], proto)
        entry = FlowEntry(
            IPv4Address(new_src[0]),
            IPv4Address(new_dst[0]),
            new_src[1],
            new_dst[1],
            egress_ifindex,
            macs[0].lower(),
            macs[1].lower(),
        )
        self.dataplane().add_flow(key, entry)

    def flow_packets(self) -> int:
        """Fast-path packets over every installed flow."""
        return sum(entry.packets for _, entry in self.dataplane().flows())

    def clear_flows(self) -> None:
        dp = self.dataplane()
        for key, _ in dp.flows():
            dp.delete_flow(key)

    def detach(self, host: Host, dev: str) -> None:
        from xdp import loader

        with inside(host):
            loader.detach(dev)
            flags, held_fd = self._found.pop((host, dev), (0, 0))
            if held_fd:
                _restore_program(dev, flags, held_fd)
        with contextlib.suppress(ValueError):
            self._attached.remove((host, dev))

    def detach_all(self) -> None:
        for host, dev in list(reversed(self._attached)):
            with contextlib.suppress(Exception):
                self.detach(host, dev)
        self._attached.clear()

    def close(self) -> None:
        self.detach_all()
        if self._dp is not None:
            self._dp.close()
            self._dp = None
        self._drop_redirect()


REDIRECT_ONLY_SOURCE = Path(__file__).with_name("redirect_only.bpf.c")


def _redirect_only(egress_ifindex: int, macs: tuple[str, str]) -> tuple[Any, int]:
    """Compile ``xdp_redirect_only`` for one egress port and MAC pair (in this netns:
    the devmap resolves the ifindex when it is written)."""
    from bcc import BPF

    def c_bytes(mac: str) -> str:
        return ",".join(f"0x{b}" for b in mac.split(":"))

    cflags = [f"-DSRC_MAC={c_bytes(macs[0])}", f"-DDST_MAC={c_bytes(macs[1])}"]
    bpf = BPF(src_file=str(REDIRECT_ONLY_SOURCE).encode(), cflags=cflags)
    bpf["redirect_port"][ctypes.c_int(0)] = ctypes.c_int(egress_ifindex)
    return bpf, bpf.load_func(b"xdp_redirect_only", BPF.XDP).fd


def _current_program(dev: str) -> tuple[int, int]:
    """(mode flags, an fd holding it) of the XDP program on ``dev`` in this netns, or
    (0, 0).  The fd keeps the program alive after we replace it (an ``ip link``
    attachment is its only reference)."""
    from xdp import libbpf, loader

    ifindex = loader.ifindex_of(dev)
    for flags in (libbpf.XDP_FLAGS_DRV_MODE, libbpf.XDP_FLAGS_SKB_MODE):
        prog_id = libbpf.xdp_query_id(ifindex, flags)
        if prog_id:
            lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
            fd = int(lib.bpf_prog_get_fd_by_id(ctypes.c_uint32(prog_id)))
            if fd < 0:
                raise PerfError(f"cannot hold XDP program id {prog_id} found on {dev}")
            return flags, fd
    return 0, 0


def _restore_program(dev: str, flags: int, fd: int) -> None:
    """Put the program found on ``dev`` back and release our hold on it."""
    from xdp import libbpf, loader

    try:
        libbpf.xdp_attach(loader.ifindex_of(dev), fd, flags)
    finally:
        os.close(fd)
