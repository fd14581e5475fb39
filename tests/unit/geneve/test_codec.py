"""The GENEVE codec and the AWS GWLB validation: golden bytes, errors, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geneve import (
    AWS_OPTION_CLASS,
    BadVersionError,
    GeneveHeader,
    GeneveOption,
    GwlbTlvs,
    MalformedError,
    MissingGwlbOptionError,
    TruncatedError,
    UnknownCriticalOptionError,
    decapsulate,
    encapsulate,
    validate,
)
from geneve.codec import MAX_OPTIONS_LEN, PROTO_IPV4, PROTO_IPV6

TLVS = GwlbTlvs(
    endpoint_id=0x1122334455667788, attachment_id=0x99AABBCCDDEEFF00, flow_cookie=0xDEADBEEF
)

# Annotated golden header: what GWLB puts on the wire for TLVS (40 bytes).
GOLDEN = bytes.fromhex(
    "08"  # Ver 0, Opt Len 8 words (32 bytes)
    "00"  # O=0 C=0
    "0800"  # protocol IPv4
    "000000"
    "00"  # VNI 0, reserved
    "0108"
    "01"
    "02"
    "1122334455667788"  # class 0x0108 type 1 len 2: endpoint id
    "0108"
    "02"
    "02"
    "99aabbccddeeff00"  # type 2: attachment id
    "0108"
    "03"
    "01"
    "deadbeef"  # type 3 len 1: flow cookie
)
INNER = bytes.fromhex("4500001c000100004011f97a0a00640ac633640a9c4000350008e7a9")


def test_golden_header() -> None:
    header = TLVS.header(PROTO_IPV4)
    assert header.encode() == GOLDEN
    decoded, rest = GeneveHeader.decode(GOLDEN + b"payload")
    assert decoded == header and rest == b"payload"
    assert validate(decoded) == TLVS


def test_option_accessors() -> None:
    header, _ = GeneveHeader.decode(GOLDEN)
    cookie = header.option(AWS_OPTION_CLASS, 3)
    assert cookie is not None and cookie.data == bytes.fromhex("deadbeef")
    assert not cookie.critical
    assert GeneveOption(0x0101, 0x81, b"").critical


def test_truncated_base_and_options() -> None:
    with pytest.raises(TruncatedError, match="needs 8 bytes"):
        GeneveHeader.decode(GOLDEN[:7])
    with pytest.raises(TruncatedError, match="needs 40 bytes, only 39"):
        GeneveHeader.decode(GOLDEN[:39])


def test_bad_version() -> None:
    with pytest.raises(BadVersionError, match="version 1"):
        GeneveHeader.decode(bytes([0x40 | GOLDEN[0]]) + GOLDEN[1:])


def test_option_running_past_opt_len() -> None:
    cut = bytes([0x07]) + GOLDEN[1:36]  # Opt Len 7 words, the cookie needs 8
    with pytest.raises(MalformedError, match="run past Opt Len"):
        GeneveHeader.decode(cut)


@pytest.mark.parametrize("missing", [1, 2, 3])
def test_each_gwlb_option_is_required(missing: int) -> None:
    opts = tuple(o for o in TLVS.options() if o.option_type != missing)
    with pytest.raises(MissingGwlbOptionError) as err:
        validate(GeneveHeader(PROTO_IPV4, options=opts))
    assert len(err.value.missing) == 1


def test_unknown_critical_option_is_rejected_known_noncritical_ignored() -> None:
    extra = GeneveOption(0x0101, 0x05, b"\0" * 4)
    assert validate(GeneveHeader(PROTO_IPV4, options=(extra, *TLVS.options()))) == TLVS
    critical = GeneveOption(0x0101, 0x85, b"\0" * 4)
    with pytest.raises(UnknownCriticalOptionError, match="0x0101"):
        validate(GeneveHeader(PROTO_IPV4, options=(*TLVS.options(), critical)))


def test_wrong_size_aws_option() -> None:
    bad = GeneveOption(AWS_OPTION_CLASS, 3, b"\0" * 8)
    with pytest.raises(MalformedError, match="exactly 4"):
        validate(GeneveHeader(PROTO_IPV4, options=(*TLVS.options()[:2], bad)))


def test_encap_decap_reply_swaps_outer_and_keeps_header() -> None:
    packet = encapsulate(INNER, TLVS.header(PROTO_IPV4), "172.16.1.1", "172.16.1.2", 51000)
    d = decapsulate(packet)
    assert (d.outer_src, d.outer_dst, d.sport, d.inner) == (
        "172.16.1.1",
        "172.16.1.2",
        51000,
        INNER,
    )
    back = decapsulate(d.reply())
    assert (back.outer_src, back.outer_dst, back.sport) == ("172.16.1.2", "172.16.1.1", 51000)
    assert back.header.raw == d.header.raw


def test_option_validation_of_constructor() -> None:
    with pytest.raises(MalformedError, match="multiple of 4"):
        GeneveOption(1, 1, b"abc")
    with pytest.raises(MalformedError, match="at most 252"):
        GeneveHeader(PROTO_IPV4, options=tuple(GeneveOption(1, 1, b"\0" * 124) for _ in range(3)))


options = st.builds(
    GeneveOption,
    option_class=st.integers(0, 0xFFFF),
    option_type=st.integers(0, 0xFF),
    data=st.integers(0, 31).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
    reserved=st.integers(0, 7),
)
headers = st.builds(
    GeneveHeader,
    protocol=st.sampled_from([PROTO_IPV4, PROTO_IPV6, 0x6558]),
    vni=st.integers(0, 0xFFFFFF),
    options=st.lists(options, max_size=6)
    .map(tuple)
    .filter(lambda opts: sum(o.wire_len for o in opts) <= MAX_OPTIONS_LEN),
    oam=st.booleans(),
    critical=st.booleans(),
    reserved1=st.integers(0, 0x3F),
    reserved2=st.integers(0, 0xFF),
)


@given(headers, st.binary(max_size=64))
def test_roundtrip_header(header: GeneveHeader, payload: bytes) -> None:
    decoded, rest = GeneveHeader.decode(header.encode() + payload)
    assert decoded == header
    assert decoded.raw == header.raw
    assert rest == payload


@given(st.binary(max_size=300))
def test_decode_never_crashes(buf: bytes) -> None:
    try:
        header, _ = GeneveHeader.decode(buf)
    except (TruncatedError, BadVersionError, MalformedError):
        return
    assert buf.startswith(header.raw)


@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(1, 65535),
)
def test_roundtrip_gwlb_packet(endpoint: int, attachment: int, cookie: int, sport: int) -> None:
    tlvs = GwlbTlvs(endpoint, attachment, cookie)
    d = decapsulate(encapsulate(INNER, tlvs.header(PROTO_IPV4), "192.0.2.1", "192.0.2.2", sport))
    assert d.tlvs == tlvs and d.inner == INNER and d.sport == sport
