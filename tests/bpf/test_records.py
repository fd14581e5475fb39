"""Validation of the data-plane records (no privileges)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from xdp import BuildOptions, DenyRule, FlowEntry, FlowKey
from xdp.records import RecordError

pytestmark = pytest.mark.unit


def test_deny_rule_defaults_match_everything() -> None:
    rule = DenyRule()
    assert (rule.src, rule.dst, rule.proto, rule.ports) == (
        IPv4Network("0.0.0.0/0"),
        IPv4Network("0.0.0.0/0"),
        None,
        None,
    )


@pytest.mark.parametrize(
    ("kwargs", "field", "accepted"),
    [
        ({"src": "10.0.0.0/8"}, "src=", "IPv4Network"),
        ({"proto": 300}, "proto=300", "0..255"),
        ({"proto": 6, "ports": (80, 79)}, "ports=(80, 79)", "low <= high"),
        ({"proto": 6, "ports": (1, 70000)}, "ports=(1, 70000)", "65535"),
        ({"proto": 1, "ports": (1, 2)}, "ports=(1, 2) with proto=1", "TCP"),
    ],
)
def test_deny_rule_errors_name_field_and_accepted_values(
    kwargs: dict[str, object], field: str, accepted: str
) -> None:
    with pytest.raises(RecordError) as err:
        DenyRule(**kwargs)  # type: ignore[arg-type]
    assert field in str(err.value)
    assert accepted in str(err.value)


def test_port_rule_without_proto_covers_tcp_and_udp() -> None:
    assert DenyRule(ports=(22, 22)).port_protocols == (6, 17)
    assert DenyRule(proto=17, ports=(53, 53)).port_protocols == (17,)


def test_icmp_echo_key_puts_id_in_sport_and_zero_dport() -> None:
    key = FlowKey.icmp_echo(3, IPv4Address("10.0.0.2"), IPv4Address("1.1.1.1"), 0x1234)
    assert (key.sport, key.dport, key.proto) == (0x1234, 0, 1)
    with pytest.raises(RecordError, match="dport=5"):
        FlowKey(3, IPv4Address("10.0.0.2"), IPv4Address("1.1.1.1"), 1, 5, 1)


def test_flow_entry_rejects_bad_mac() -> None:
    with pytest.raises(RecordError, match="src_mac='02-00'"):
        FlowEntry(
            IPv4Address("1.1.1.1"), IPv4Address("2.2.2.2"), 1, 2, 3, "02-00", "02:00:00:00:00:01"
        )


def test_build_options_become_define_flags() -> None:
    flags = BuildOptions(flow_table_size=1000).cflags()
    assert "-DFLOW_TABLE_SIZE=1000" in flags
    assert "-DMAX_DENY_RULES=4096" in flags
    for bad in (65, 4160, 0):
        with pytest.raises(ValueError, match=f"max_deny_rules={bad}: expected"):
            BuildOptions(max_deny_rules=bad)
