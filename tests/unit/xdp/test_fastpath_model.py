"""The packet cases of tests/fixtures/packets.py against the Python reference model of
``xdp_gateway`` (no privileges): verdict, reason, deny rule and output frame, for every
case the model covers; every destination-NAT case must be covered."""

from __future__ import annotations

import pytest

from tests.fixtures import fastpath_model
from tests.fixtures.packets import (
    CASES,
    DNAT_CASES,
    EGRESS_IFINDEX,
    TEST_IFINDEX,
    PacketCase,
    layer_diff,
)


def model(case: PacketCase) -> tuple[fastpath_model.Verdict, int | None] | None:
    flows = {f.key: f.entry for f in case.flows}
    try:
        return fastpath_model.run(case.input_bytes(), TEST_IFINDEX, flows, case.deny,
                                  frozenset({EGRESS_IFINDEX}))  # fmt: skip
    except NotImplementedError:
        return None


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_agrees_with_the_model(case: PacketCase) -> None:
    result = model(case)
    if result is None:
        assert case not in DNAT_CASES, "every destination-NAT case is in the model's scope"
        return
    verdict, rule = result
    assert (verdict.action, verdict.reason) == (case.action, case.reason)
    assert verdict.frame == case.expected_bytes(), layer_diff(case.expected_bytes(), verdict.frame)
    assert rule == case.deny_rule


def test_the_model_covers_most_cases() -> None:
    covered = [case.name for case in CASES if model(case) is not None]
    assert len(covered) >= len(CASES) // 2, covered
