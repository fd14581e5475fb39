"""One domain pattern for every domain list of the document: the proxy's lists and the
inspection policy's domain lists accept the same patterns, refuse the same bad ones with
the same message naming the field, and the three kinds mean the same to the inspection
engine (compiled rules run through the built-in engine) as to Squid (its ACL lines)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from control.config import ConfigValidationError, parse_document
from control.squid import _domain_acl
from nfq.domain_pattern import MESSAGE, split_pattern
from nfq.domains import compile_domain_lists
from nfq.engine import Decision
from nfq.policy import DomainList, InspectionPolicy
from nfq.suricata.validate import check_config
from tests.unit.nfq.test_engine import Conn, inspector

PATTERNS = ["exact.test", ".dom.test", "*.sub.test", "WWW.Mixed.Test"]


def doc(proxy: dict[str, Any], targets: list[str]) -> Any:
    lists = [{"targets": targets, "generated_rules_type": "DENYLIST"}]
    return parse_document({
        "interfaces": {"inside": "inside", "outside": "outside"},
        "proxy": {"enabled": True, **proxy},
        "inspection": {"enabled": True, "domain_lists": lists},
    })  # fmt: skip


def test_both_lists_accept_the_same_patterns_lower_cased() -> None:
    parsed = doc({"allowed_domains": PATTERNS, "denied_domains": PATTERNS}, PATTERNS)
    lowered = [p.lower() for p in PATTERNS]
    assert parsed.proxy.allowed_domains == lowered
    assert list(parsed.inspection.domain_lists[0].targets) == lowered
    assert [split_pattern(p) for p in lowered[:3]] == [
        ("exact", "exact.test"), ("domain", "dom.test"), ("subdomains", "sub.test")
    ]  # fmt: skip


@pytest.mark.parametrize("bad", ["foo.*.com", "*example.com", "bad_name!", "-a.test", "a..b"])
def test_a_bad_pattern_is_refused_alike_naming_each_field(bad: str) -> None:
    with pytest.raises(ConfigValidationError) as err:
        doc({"allowed_domains": [bad], "connect_domains": ["ok.test", bad]}, ["ok.test", bad])
    found = {e["path"]: e["message"] for e in err.value.errors}
    assert found == {
        "proxy.allowed_domains[0]": MESSAGE,
        "proxy.connect_domains[1]": MESSAGE,
        "inspection.domain_lists[0].targets[1]": MESSAGE,
    }


def http_verdict(rules: list[str], host: str) -> Decision:
    ins, _ = inspector(*rules)
    conn = Conn(ins)
    conn.handshake()
    return conn.pkt(True, "PA", f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())


HOSTS = {  # host -> the patterns of PATTERNS[:3] that match it
    "exact.test": {"exact.test"},
    "a.exact.test": set(),
    "dom.test": {".dom.test"},
    "a.b.dom.test": {".dom.test"},
    "sub.test": set(),
    "a.sub.test": {"*.sub.test"},
    "xsub.test": set(),
}


def engine_drops(pattern: str, host: str) -> bool:
    """The pattern's deny list, compiled, run by the built-in engine on an HTTP request."""
    listed = DomainList(targets=(pattern,), target_types=("HTTP_HOST",),
                        generated_rules_type="DENYLIST")  # fmt: skip
    return http_verdict(compile_domain_lists([listed]), host) is Decision.DROP


def squid_matches(pattern: str, host: str) -> bool:
    """The pattern's Squid ACL lines, read as Squid reads them: ``dstdomain`` an exact
    name or a ``.suffix`` (the domain too), ``dstdom_regex -i`` a case-free search."""
    found = False
    for line in _domain_acl("d", (pattern,))[0]:
        kind, value = line.split()[2], line.split()[-1]
        if kind == "dstdomain":
            found |= host == value or (
                value[:1] == "." and (host == value[1:] or host.endswith(value))
            )
        else:
            found |= re.search(value, host, re.I) is not None
    return found


@pytest.mark.parametrize(("host", "matching"), sorted(HOSTS.items()))
def test_each_kind_means_the_same_to_the_engine_and_to_squid(host: str, matching: set[str]) -> None:
    for pattern in PATTERNS[:3]:
        expected = pattern in matching
        assert engine_drops(pattern, host) is expected, (pattern, host)
        assert squid_matches(pattern, host) is expected, (pattern, host)


def test_suricata_accepts_every_kind(tmp_path: Path) -> None:
    from tests.unit.nfq.test_suricata_rules import render

    lists = (DomainList(targets=tuple(PATTERNS), generated_rules_type="DENYLIST"),)
    rules = compile_domain_lists(lists)
    assert 'pcre:"/\\.sub\\.test$/i";' in rules[2]  # subdomains only: a label before
    check_config(render(tmp_path, InspectionPolicy(domain_lists=lists)).config)
