"""AWS event-stream binary framing (application/vnd.amazon.eventstream).

Reference: https://docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html
("Event stream encoding") and botocore's ``eventstream.py``. A message is::

    total_length u32 BE | headers_length u32 BE | prelude_crc u32 (CRC32 of the 8 bytes)
    headers (name_len u8, name, type u8, value) ... | payload | message_crc u32 (CRC32 of
    everything before it)

Only string headers (type 7) are produced; the decoder skips the other value types.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

PRELUDE = struct.Struct(">III")
MAX_MESSAGE = 16 * 1024 * 1024
HEADER_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}  # fixed-size value types


class EventStreamError(Exception):
    """A frame is malformed: bad length, bad CRC, or an unknown header type."""


@dataclass(frozen=True, slots=True)
class Message:
    headers: dict[str, str]
    payload: bytes


def encode(headers: dict[str, str], payload: bytes) -> bytes:
    raw = b"".join(
        struct.pack(">B", len(n := name.encode()))
        + n
        + struct.pack(">BH", 7, len(v := value.encode()))
        + v
        for name, value in headers.items()
    )
    total = PRELUDE.size + len(raw) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw + payload
    return head + struct.pack(">I", zlib.crc32(head))


def _headers(raw: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(raw):
        name_len = raw[pos]
        name = raw[pos + 1 : pos + 1 + name_len].decode()
        pos += 1 + name_len
        kind = raw[pos]
        pos += 1
        if kind in (6, 7):
            (length,) = struct.unpack_from(">H", raw, pos)
            value = raw[pos + 2 : pos + 2 + length]
            pos += 2 + length
            if kind == 7:
                out[name] = value.decode()
        elif kind in HEADER_SIZES:
            pos += HEADER_SIZES[kind]
        else:
            raise EventStreamError(f"unknown header value type {kind} in header {name!r}")
    return out


class Decoder:
    """Incremental decoder: feed bytes, get complete messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of a message not yet complete (non-zero at the end: a cut-off frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= PRELUDE.size:
            total, headers_len, prelude_crc = PRELUDE.unpack_from(self._buf)
            if zlib.crc32(bytes(self._buf[:8])) != prelude_crc:
                raise EventStreamError("event-stream prelude CRC mismatch")
            if not PRELUDE.size + 4 <= total <= MAX_MESSAGE:
                raise EventStreamError(f"event-stream message length {total} out of range")
            if len(self._buf) < total:
                break
            frame = bytes(self._buf[:total])
            del self._buf[:total]
            (crc,) = struct.unpack_from(">I", frame, total - 4)
            if zlib.crc32(frame[:-4]) != crc:
                raise EventStreamError("event-stream message CRC mismatch")
            start = PRELUDE.size
            out.append(
                Message(
                    _headers(frame[start : start + headers_len]), frame[start + headers_len : -4]
                )
            )
        return out
