"""The rule parser: the supported subset parses, anything else is rejected with its sid
and keyword; address/port expressions with variables and negation."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfq.engine.addresses import ExprError, parse_addresses, parse_ports
from nfq.engine.rules import RuleError, load_rules, parse_content, parse_rule

VARS = {"HOME_NET": "[10.0.0.0/8,192.168.0.0/16]", "WEB_PORTS": "[80,8000:8080]"}


def ip(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return a << 24 | b << 16 | c << 8 | d


def test_full_rule_parses() -> None:
    r = parse_rule(
        'drop http $HOME_NET any -> $EXTERNAL_NET $WEB_PORTS (msg:"bad; host"; '
        'flow:established,to_server; http.host; content:"evil|2e|example"; nocase; '
        'http.uri; content:"/a"; depth:2; pcre:"/\\/a\\d+/i"; sid:10; rev:3; '
        "classtype:policy-violation; threshold: type limit, track by_src, count 1, seconds 60;)",
        VARS,
    )
    assert (r.action, r.proto, r.sid, r.rev, r.msg) == ("drop", "http", 10, 3, "bad; host")
    assert r.flow == {"established", "to_server"} and r.app_proto == "http"
    host, uri = r.buffers
    assert host.buffer == "http.host" and host.contents[0].pattern == b"evil.example"
    assert host.contents[0].nocase and uri.contents[0].depth == 2 and uri.pcres
    assert r.src.matches(ip("10.1.2.3")) and not r.dst.matches(ip("10.1.2.3"))
    assert r.dport.matches(8001) and not r.dport.matches(443)
    assert r.threshold is not None and r.threshold.count == 1


@pytest.mark.parametrize(
    ("option", "keyword"),
    [
        ('content:"a"; fast_pattern;', "fast_pattern"),
        ('http.method; content:"GET";', "http.method"),
        ("metadata:created_at 2020;", "metadata"),
        ("byte_test:1,>,2,0;", "byte_test"),
    ],
)
def test_unsupported_keyword_is_rejected_with_sid(option: str, keyword: str) -> None:
    with pytest.raises(RuleError) as exc:
        parse_rule(f'alert tcp any any -> any any (msg:"x"; {option} sid:77;)')
    assert exc.value.sid == 77 and exc.value.keyword == keyword
    assert "rule sid 77" in str(exc.value) and f"unsupported keyword '{keyword}'" in str(exc.value)


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ("log tcp any any -> any any (sid:1;)", "unsupported action 'log'"),
        ("alert sctp any any -> any any (sid:1;)", "unsupported protocol 'sctp'"),
        ('alert tcp any any -> any any (content:!"x"; sid:1;)', "negated content"),
        ("alert tcp any any -> any any (nocase; sid:1;)", "must follow a content"),
        ('alert tcp any any -> any any (content:"abc"; depth:2; sid:1;)', "shorter than"),
        ("alert tcp any any -> any any (flow:to_server,to_client; sid:1;)", "never match"),
        ("alert tcp $NOPE any -> any any (sid:1;)", "unknown variable $NOPE"),
        ('alert tcp any any -> any any (pcre:"/a/G"; sid:1;)', "pcre flag 'G'"),
        ('alert udp any any -> any any (tls.sni; content:"a"; sid:1;)', "needs protocol tls"),
        ('alert tcp any any -> any any (msg:"no sid";)', "no numeric sid"),
    ],
)
def test_bad_rules_say_what_is_wrong(rule: str, needle: str) -> None:
    with pytest.raises(RuleError, match=None) as exc:
        parse_rule(rule)
    assert needle in str(exc.value)


def test_content_hex_and_escapes() -> None:
    assert parse_content('"a|0d 0A|b\\"c\\;d"') == b'a\r\nb"c;d'
    with pytest.raises(ValueError, match="unterminated"):
        parse_content('"a|0d"')


def test_addresses_negation_and_lists() -> None:
    e = parse_addresses("[10.0.0.0/8,!10.1.0.0/16]", {})
    assert e.matches(ip("10.2.0.1")) and not e.matches(ip("10.1.0.1"))
    assert not e.matches(ip("8.8.8.8"))
    ext = parse_addresses("!$HOME_NET", VARS)
    assert ext.matches(ip("8.8.8.8")) and not ext.matches(ip("192.168.1.1"))
    double = parse_addresses("![10.0.0.0/8,!10.1.0.0/16]", {})
    assert double.matches(ip("10.1.0.1")) and double.matches(ip("8.8.8.8"))
    assert not double.matches(ip("10.2.0.1"))
    ports = parse_ports("[1024:,!8080]", {})
    assert ports.matches(9000) and not ports.matches(8080) and not ports.matches(80)
    with pytest.raises(ExprError, match="refers to itself"):
        parse_addresses("$A", {"A": "[$A]"})


def test_load_rules_from_files_with_continuations_and_duplicate_sids(tmp_path: Path) -> None:
    f = tmp_path / "r.rules"
    f.write_text('# comment\n\nalert tcp any any -> any 80 (msg:"a"; \\\n  sid:1;)\n'
                 'alert udp any any -> any 53 (msg:"b"; sid:2;)\n')  # fmt: skip
    assert [r.sid for r in load_rules(files=[f])] == [1, 2]
    with pytest.raises(RuleError, match="duplicate sid"):
        load_rules(["alert tcp any any -> any any (sid:1;)"], [f])
    f.write_text('alert tcp any any -> any any (msg:"x"; dsize:10; sid:5;)\n')
    with pytest.raises(RuleError, match=r"rule sid 5 \(.*r.rules:1\): unsupported keyword"):
        load_rules(files=[f])
