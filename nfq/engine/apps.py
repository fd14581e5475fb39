"""Application-layer fields the rules can match: HTTP request line and Host (RFC 9112),
TLS ClientHello server_name (RFC 8446 §4.1.2, RFC 6066 §3), DNS query name (RFC 1035
§4.1). Protocol detection is by content, not port (what Suricata does): a client stream
starting with an HTTP method is HTTP, a TLS handshake record is TLS; DNS is UDP to or
from port 53.

Every parser takes bytes and returns None while the field is incomplete or absent;
none of them raises on malformed input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HTTP_METHODS = (
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
)
MAX_HEADER = 16384


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request's header block: ``uri`` as sent, ``host`` lower-cased without port."""

    method: bytes
    uri: bytes
    host: bytes | None
    end: int  # offset just past the header block in the client stream


def detect(client_head: bytes) -> str | None:
    """The app protocol of a TCP flow from the first client bytes, or None."""
    if client_head.startswith(HTTP_METHODS):
        return "http"
    if len(client_head) >= 3 and client_head[0] == 0x16 and client_head[1] == 0x03:
        return "tls"
    return None


def http_request(stream: bytes, start: int = 0) -> HttpRequest | None:
    """The request whose header block starts at ``start``, once complete."""
    end = stream.find(b"\r\n\r\n", start, start + MAX_HEADER)
    if end < 0:
        return None
    head = stream[start:end]
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    host = None
    for header in rest.split(b"\r\n"):
        name, sep, value = header.partition(b":")
        if sep and name.strip().lower() == b"host":
            value = value.strip().lower()
            if value.startswith(b"["):
                host = value.partition(b"]")[0] + b"]"
            else:
                host = value.partition(b":")[0]
            break
    return HttpRequest(parts[0], parts[1], host, end + 4)


def tls_sni(stream: bytes) -> bytes | bool | None:
    """The ClientHello's server_name; None while incomplete, False when absent/invalid."""
    if len(stream) < 5:
        return None
    if stream[0] != 0x16:
        return False
    rec_len = struct.unpack_from("!H", stream, 3)[0]
    if len(stream) < 5 + min(rec_len, 4):
        return None
    body = stream[5 : 5 + rec_len]
    if body[:1] != b"\x01":
        return False
    hs_len = int.from_bytes(body[1:4], "big")
    if len(body) < 4 + hs_len:
        return None if len(stream) < 5 + rec_len else False
    hello = body[4 : 4 + hs_len]
    try:
        pos = 2 + 32  # version, random
        pos += 1 + hello[pos]  # session id
        pos += 2 + struct.unpack_from("!H", hello, pos)[0]  # cipher suites
        pos += 1 + hello[pos]  # compression methods
        ext_end = pos + 2 + struct.unpack_from("!H", hello, pos)[0]
        pos += 2
        while pos + 4 <= ext_end:
            etype, elen = struct.unpack_from("!HH", hello, pos)
            pos += 4
            if etype == 0:  # server_name: list length, type 0 host_name, name length
                name_len = struct.unpack_from("!H", hello, pos + 3)[0]
                if hello[pos + 2] != 0:
                    return False
                return bytes(hello[pos + 5 : pos + 5 + name_len])
            pos += elen
    except (IndexError, struct.error):
        return False
    return False


def dns_query(payload: bytes) -> bytes | None:
    """The first question's name, dotted, without the root dot (queries only)."""
    if len(payload) < 12:
        return None
    flags, qdcount = struct.unpack_from("!HH", payload, 2)
    if flags & 0x8000 or qdcount < 1:
        return None
    labels: list[bytes] = []
    pos = 12
    while pos < len(payload):
        n = payload[pos]
        if n == 0:
            return b".".join(labels)
        if n & 0xC0 or pos + 1 + n > len(payload):
            return None
        labels.append(bytes(payload[pos + 1 : pos + 1 + n]))
        pos += 1 + n
    return None
