"""A userspace GWLB appliance in Python, TUN-style: the baseline of the ``geneve``
suite (the shape of AWS's gwlbtun sample, https://github.com/aws-samples/aws-gateway-load-balancer-tunnel-handler).

One process: a UDP socket on port 6081 receives GWLB traffic; each datagram is checked
like the product checks it (version 0, Opt Len within the datagram, the three class
0x0108 options present, no unknown critical option), its byte-exact GENEVE header is
remembered per inner flow (the header a reply would carry), and the inner packet is
written to a TUN device, from where the kernel forwards (and masquerades) it.  Replies
are not handled: the benchmark measures the GWLB -> internet direction only.

``python -m perf.gwlbtun --tun NAME --bind ADDR``; prints ``ready`` once the TUN device
exists, runs until SIGTERM, then prints its counters as JSON.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
AWS_CLASS = 0x0108
AWS_TYPES = frozenset((1, 2, 3))
CRITICAL = 0x80
SO_RCVBUFFORCE = 33


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def check(datagram: bytes) -> int:
    """Length of the GENEVE header of a valid GWLB datagram, or 0."""
    if len(datagram) < 8 or datagram[0] >> 6:
        return 0
    hdr_len = 8 + (datagram[0] & 0x3F) * 4
    if len(datagram) <= hdr_len:
        return 0
    seen = set()
    off = 8
    while off < hdr_len:
        cls, typ, length = struct.unpack_from("!HBB", datagram, off)
        if cls == AWS_CLASS and typ in AWS_TYPES:
            seen.add(typ)
        elif typ & CRITICAL:
            return 0
        off += 4 + (length & 0x1F) * 4
    return hdr_len if off == hdr_len and seen == AWS_TYPES else 0


def flow_key(inner: bytes) -> bytes:
    """Addresses, protocol and ports of an inner IPv4 packet (enough for the baseline)."""
    ihl = (inner[0] & 0x0F) * 4
    return inner[9:10] + inner[12:20] + inner[ihl : ihl + 4]


def serve(tun_name: str, bind: str) -> dict[str, int]:
    tun = open_tun(tun_name)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Beyond net.core.rmem_max (root): bursts must not overflow the socket while the
    # handler shares its CPU with the NAPI thread.
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    sock.bind((bind, 6081))
    headers: dict[bytes, bytes] = {}
    counts = {"received": 0, "forwarded": 0, "dropped": 0}
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True
        sock.close()

    signal.signal(signal.SIGTERM, _stop)
    print("ready", flush=True)
    while not stop:
        try:
            datagram = sock.recv(65535)
        except OSError:
            break
        counts["received"] += 1
        hdr_len = check(datagram)
        if not hdr_len:
            counts["dropped"] += 1
            continue
        inner = datagram[hdr_len:]
        headers[flow_key(inner)] = datagram[:hdr_len]
        os.write(tun, inner)
        counts["forwarded"] += 1
    os.close(tun)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.gwlbtun", description=__doc__.split("\n")[0])
    p.add_argument("--tun", required=True)
    p.add_argument("--bind", required=True)
    args = p.parse_args(argv)
    print(json.dumps(serve(args.tun, args.bind)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
