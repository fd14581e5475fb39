"""reasons.h and xdp.reasons.Reason must list the same names with the same values."""

from __future__ import annotations

import re

import pytest

from xdp.loader import BPF_DIR
from xdp.reasons import REASON_COUNT, Reason

pytestmark = pytest.mark.unit

ENUM_MEMBER = re.compile(r"^\s*(STAT_\w+)\s*=\s*(\d+)\s*,", re.MULTILINE)


@pytest.fixture(scope="module")
def c_reasons() -> dict[str, int]:
    text = (BPF_DIR / "reasons.h").read_text()
    body = text[text.index("enum stat_reason") : text.index("};", text.index("enum stat_reason"))]
    return {name: int(value) for name, value in ENUM_MEMBER.findall(body)}


def test_python_enum_mirrors_header_exactly(c_reasons: dict[str, int]) -> None:
    python = {reason.c_name: int(reason) for reason in Reason}
    python["STAT__MAX"] = REASON_COUNT
    assert python == c_reasons


def test_reasons_are_dense_from_zero(c_reasons: dict[str, int]) -> None:
    values = sorted(v for name, v in c_reasons.items() if name != "STAT__MAX")
    assert values == list(range(c_reasons["STAT__MAX"]))
