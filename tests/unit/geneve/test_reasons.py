"""gwlb_reasons.h and geneve.GwlbReason list the same names with the same values;
geneve.h's AWS registry and geneve.aws.AWS_OPTIONS agree; MAX_OPTIONS mirrors C."""

from __future__ import annotations

import re
from pathlib import Path

from geneve.aws import AWS_OPTION_CLASS, AWS_OPTIONS
from geneve.dataplane import BPF_DIR, MAX_OPTIONS
from geneve.reasons import GWLB_REASON_COUNT, GwlbReason
from xdp.loader import INCLUDE_DIR

ENUM_MEMBER = re.compile(r"^\s*(GWLB_\w+)\s*=\s*(\d+)\s*,", re.MULTILINE)
DEFINE = re.compile(r"^#define\s+(\w+)\s+(0x[0-9A-Fa-f]+|\d+)\b", re.MULTILINE)


def _defines(path: Path) -> dict[str, int]:
    return {k: int(v, 0) for k, v in DEFINE.findall(path.read_text())}


def test_python_enum_mirrors_header_exactly() -> None:
    text = (BPF_DIR / "gwlb_reasons.h").read_text()
    start = text.index("enum gwlb_reason")
    body = text[start : text.index("};", start)]
    c = {name: int(value) for name, value in ENUM_MEMBER.findall(body)}
    python = {r.c_name: int(r) for r in GwlbReason}
    python["GWLB_STAT__MAX"] = GWLB_REASON_COUNT
    assert python == c
    assert sorted(v for k, v in c.items() if k != "GWLB_STAT__MAX") == list(range(len(c) - 1))


def test_aws_registry_matches_c() -> None:
    d = _defines(INCLUDE_DIR / "spectra" / "geneve.h")
    assert d["AWS_OPT_CLASS"] == AWS_OPTION_CLASS
    c = {
        d["AWS_OPT_ENDPOINT_ID"]: d["AWS_OPT_ENDPOINT_ID_LEN"],
        d["AWS_OPT_ATTACHMENT_ID"]: d["AWS_OPT_ATTACHMENT_ID_LEN"],
        d["AWS_OPT_FLOW_COOKIE"]: d["AWS_OPT_FLOW_COOKIE_LEN"],
    }
    assert c == {t: spec.size for t, spec in AWS_OPTIONS.items()}


def test_max_options_matches_c() -> None:
    assert _defines(BPF_DIR / "gwlb_maps.h")["GWLB_MAX_OPTS"] == MAX_OPTIONS
