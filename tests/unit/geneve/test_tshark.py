"""Golden bytes checked against Wireshark's GENEVE dissector (tshark): what our codec
writes is what the reference dissector reads, field by field."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from geneve import GeneveOption, GwlbTlvs, encapsulate
from geneve.codec import PROTO_IPV4, GeneveHeader

INNER = bytes.fromhex("4500001c000100004011f97a0a00640ac633640a9c4000350008e7a9")


def _dissect(tmp_path: Path, ip_packet: bytes) -> dict[str, Any]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed (run `make deps`)")
    pcap = tmp_path / "g.pcap"
    frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800) / ip_packet
    wrpcap(str(pcap), [frame])
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "json", "-V"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    layers: dict[str, Any] = json.loads(out)[0]["_source"]["layers"]
    return layers


def _fields(tmp_path: Path, *names: str) -> list[list[str]]:
    argv = [
        "tshark",
        "-r",
        str(tmp_path / "g.pcap"),
        "-o",
        "ip.check_checksum:TRUE",
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=;",
        "-E",
        "separator=|",
    ]
    for name in names:
        argv += ["-e", name]
    line = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return [col.split(";") for col in line.strip().split("|")]


def test_gwlb_header_as_tshark_reads_it(tmp_path: Path) -> None:
    tlvs = GwlbTlvs(0x1122334455667788, 0x99AABBCCDDEEFF00, 0xDEADBEEF)
    packet = encapsulate(
        INNER, tlvs.header(PROTO_IPV4, vni=0x123456), "172.16.1.1", "172.16.1.2", 51000
    )
    layers = _dissect(tmp_path, packet)
    g = layers["geneve"]
    assert g["geneve.version"] == "0"
    assert int(g["geneve.option.length"]) == 32
    assert g["geneve.proto_type"] == "0x0800"
    assert int(g["geneve.vni"], 16) == 0x123456
    # Every option, in order (the JSON view keeps only the last of repeated keys).
    fields = _fields(
        tmp_path,
        "geneve.option.class",
        "geneve.option.type",
        "geneve.option.length",
        "geneve.option.unknown.data",
    )
    assert fields == [
        ["0x0108", "0x0108", "0x0108"],
        ["0x01", "0x02", "0x03"],
        ["32", "12", "12", "8"],  # Opt Len of the header (bytes), then each option's
        ["1122334455667788", "99aabbccddeeff00", "deadbeef"],
    ]
    assert "_ws.malformed" not in json.dumps(layers)
    outer = _fields(tmp_path, "udp.dstport", "ip.src", "ip.checksum", "ip.checksum.status")
    assert [col[0] for col in outer] == [
        "6081",
        "172.16.1.1",
        "0x{:04x}".format(int.from_bytes(packet[10:12], "big")),
        "1",  # 1 = verified good
    ]


def test_critical_bit_and_oam_as_tshark_reads_them(tmp_path: Path) -> None:
    header = GeneveHeader(
        PROTO_IPV4, oam=True, critical=True, options=(GeneveOption(0x0101, 0x81, b"\0" * 4),)
    )
    layers = _dissect(tmp_path, encapsulate(INNER, header, "10.1.1.1", "10.1.1.2", 1000))
    flags = layers["geneve"]["geneve.flags_tree"]
    assert (flags["geneve.flags.oam"], flags["geneve.flags.critical"]) == ("1", "1")
    assert _fields(tmp_path, "geneve.option.type.critical") == [["1"]]
    assert "_ws.malformed" not in json.dumps(layers)
