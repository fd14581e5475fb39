"""GENEVE header and option codec (RFC 8926 section 3), the reference model of the
data plane's decap/encap and the test oracle for it.

Wire format (RFC 8926 3.4, 3.5)::

     0                   1                   2                   3
    |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
    |        Virtual Network Identifier (VNI)       |    Reserved   |
    |                    Variable-Length Options                    |

    option: | Option Class (16) | C+Type (8) | R R R Length (5) | data (Length * 4) |

:func:`GeneveHeader.decode` keeps the exact bytes it parsed (``raw``) because an AWS
Gateway Load Balancer appliance must return every packet with the byte-identical
header (https://docs.aws.amazon.com/elasticloadbalancing/latest/gateway/introduction.html).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from geneve.errors import BadVersionError, MalformedError, TruncatedError

GENEVE_PORT = 6081
BASE_LEN = 8
MAX_OPTIONS_LEN = 63 * 4  # 6-bit Opt Len in 4-byte words
MAX_HEADER_LEN = BASE_LEN + MAX_OPTIONS_LEN
OPTION_HEADER_LEN = 4
MAX_OPTION_DATA = 31 * 4  # 5-bit Length in 4-byte words
CRITICAL_TYPE_BIT = 0x80

PROTO_IPV4 = 0x0800
PROTO_IPV6 = 0x86DD
PROTO_TEB = 0x6558  # transparent Ethernet bridging


@dataclass(frozen=True, slots=True)
class GeneveOption:
    """One TLV: class, type (bit 7 = critical), data of a multiple of 4 bytes."""

    option_class: int
    option_type: int
    data: bytes
    reserved: int = 0  # the three R bits, kept for byte-exact round trips

    def __post_init__(self) -> None:
        if not 0 <= self.option_class <= 0xFFFF:
            raise MalformedError(f"option class {self.option_class}: expected 0..0xffff")
        if not 0 <= self.option_type <= 0xFF:
            raise MalformedError(f"option type {self.option_type}: expected 0..0xff")
        if len(self.data) % 4 or len(self.data) > MAX_OPTION_DATA:
            raise MalformedError(
                f"option data of {len(self.data)} bytes: expected a multiple of 4, "
                f"at most {MAX_OPTION_DATA}"
            )
        if not 0 <= self.reserved <= 7:
            raise MalformedError(f"option reserved bits {self.reserved}: expected 0..7")

    @property
    def critical(self) -> bool:
        return bool(self.option_type & CRITICAL_TYPE_BIT)

    @property
    def wire_len(self) -> int:
        return OPTION_HEADER_LEN + len(self.data)

    def encode(self) -> bytes:
        length_byte = (self.reserved << 5) | (len(self.data) // 4)
        return struct.pack("!HBB", self.option_class, self.option_type, length_byte) + self.data


def decode_options(buf: bytes, offset: int = 0) -> tuple[GeneveOption, ...]:
    """Decode the whole options area ``buf``; ``offset`` only shapes error messages."""
    out: list[GeneveOption] = []
    pos = 0
    while pos < len(buf):
        if len(buf) - pos < OPTION_HEADER_LEN:
            raise MalformedError(
                f"option header at byte {offset + pos}: {len(buf) - pos} bytes left in "
                "Opt Len, an option header needs 4"
            )
        cls, typ, length_byte = struct.unpack_from("!HBB", buf, pos)
        data_len = (length_byte & 0x1F) * 4
        end = pos + OPTION_HEADER_LEN + data_len
        if end > len(buf):
            raise MalformedError(
                f"option {cls:#06x}/{typ:#04x} at byte {offset + pos}: {data_len} data bytes "
                f"run past Opt Len ({len(buf)} bytes of options)"
            )
        out.append(GeneveOption(cls, typ, bytes(buf[pos + 4 : end]), length_byte >> 5))
        pos = end
    return tuple(out)


@dataclass(frozen=True, slots=True)
class GeneveHeader:
    """The fixed 8-byte header plus options; ``raw`` is the wire form (computed by
    :meth:`encode` when built, kept verbatim by :meth:`decode`)."""

    protocol: int
    vni: int = 0
    options: tuple[GeneveOption, ...] = ()
    oam: bool = False
    critical: bool = False
    version: int = 0
    reserved1: int = 0  # the 6 Rsvd. bits
    reserved2: int = 0  # the byte after the VNI
    raw: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.vni <= 0xFFFFFF:
            raise MalformedError(f"VNI {self.vni}: expected 0..0xffffff")
        if not 0 <= self.protocol <= 0xFFFF:
            raise MalformedError(f"protocol type {self.protocol}: expected 0..0xffff")
        if self.options_len > MAX_OPTIONS_LEN:
            raise MalformedError(
                f"options of {self.options_len} bytes: at most {MAX_OPTIONS_LEN} fit in Opt Len"
            )
        if not self.raw:
            object.__setattr__(self, "raw", self._build())

    @property
    def options_len(self) -> int:
        return sum(o.wire_len for o in self.options)

    @property
    def header_len(self) -> int:
        return BASE_LEN + self.options_len

    def _build(self) -> bytes:
        b0 = (self.version << 6) | (self.options_len // 4)
        b1 = (int(self.oam) << 7) | (int(self.critical) << 6) | (self.reserved1 & 0x3F)
        base = struct.pack("!BBH", b0, b1, self.protocol)
        base += ((self.vni << 8) | self.reserved2).to_bytes(4, "big")
        return base + b"".join(o.encode() for o in self.options)

    def encode(self) -> bytes:
        return self.raw

    def option(self, option_class: int, option_type: int) -> GeneveOption | None:
        for opt in self.options:
            if opt.option_class == option_class and opt.option_type == option_type:
                return opt
        return None

    @classmethod
    def decode(cls, buf: bytes) -> tuple[GeneveHeader, bytes]:
        """Parse a header at the start of ``buf``; returns it and the payload after it."""
        if len(buf) < BASE_LEN:
            raise TruncatedError("GENEVE base header", BASE_LEN, len(buf))
        b0, b1, proto = struct.unpack_from("!BBH", buf, 0)
        version = b0 >> 6
        if version != 0:
            raise BadVersionError(version)
        opt_len = (b0 & 0x3F) * 4
        total = BASE_LEN + opt_len
        if len(buf) < total:
            raise TruncatedError("GENEVE header with options", total, len(buf))
        word = int.from_bytes(buf[4:8], "big")
        header = cls(
            protocol=proto,
            vni=word >> 8,
            options=decode_options(bytes(buf[BASE_LEN:total]), BASE_LEN),
            oam=bool(b1 & 0x80),
            critical=bool(b1 & 0x40),
            version=version,
            reserved1=b1 & 0x3F,
            reserved2=word & 0xFF,
            raw=bytes(buf[:total]),
        )
        return header, bytes(buf[total:])
