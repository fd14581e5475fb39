"""Rules for Suricata, checked by the real binary (``suricata -T``, installed by
``make deps``): the rendered configuration loads, a rule Suricata refuses is reported
with its file and line, the AWS Network Firewall subset refuses what Network Firewall
refuses (with the keyword named) and accepts a Network Firewall rule group unchanged,
domain lists compile into rules both engines load, and the inspection step's render
turns each of those into an error naming the document field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from control.config import parse_document
from control.steps.base import AnyHost, RenderError
from control.steps.inspection import InspectionStep
from nfq.domains import DOMAIN_SID_BASE, compile_domain_lists
from nfq.engine.rules import load_rules
from nfq.policy import DomainList, InspectionPolicy
from nfq.suricata.config import SuricataPaths, write_config
from nfq.suricata.nfw import check_rule
from nfq.suricata.validate import SuricataConfigError, check_config, parse_failures

pytestmark = pytest.mark.timeout(120)

NFW_GROUP = (  # the kind of rules a Network Firewall stateful rule group holds
    'drop http $HOME_NET any -> $EXTERNAL_NET any (msg:"host"; flow:established,to_server; '
    'http.host; content:"denied.example"; endswith; sid:1; rev:1;)',
    'reject tls $HOME_NET any -> $EXTERNAL_NET 443 (msg:"sni"; tls.sni; content:"bad.example"; '
    "nocase; sid:2;)",
    'alert dns $HOME_NET any -> any 53 (msg:"q"; dns.query; content:"tracker"; sid:3;)',
    'pass tcp $HOME_NET any -> $EXTERNAL_NET 22 (msg:"ssh"; flow:to_server; sid:4;)',
    'alert ip any any -> any any (msg:"flowbits"; flowbits:isset,x; flowbits:noalert; sid:5;)',
)
LISTS = (
    DomainList(targets=(".Example.com", "www.test.org"), generated_rules_type="DENYLIST"),
    DomainList(
        targets=("allowed.org",), target_types=("TLS_SNI",), generated_rules_type="ALLOWLIST"
    ),
)


def render(tmp_path: Path, policy: InspectionPolicy) -> SuricataPaths:
    paths = SuricataPaths.under(tmp_path)
    write_config(policy, paths, home_net="[10.0.0.0/8]")
    return paths


def test_rendered_configuration_loads_in_suricata(tmp_path: Path) -> None:
    policy = InspectionPolicy(engine="suricata", rules=NFW_GROUP, domain_lists=LISTS)
    paths = render(tmp_path, policy)
    out = check_config(paths.config)
    assert "Configuration provided was successfully loaded" in out
    conf = yaml.safe_load(paths.config.read_text())
    assert conf["vars"]["address-groups"]["HOME_NET"] == "[10.0.0.0/8]"
    eve = conf["outputs"][0]["eve-log"]
    kinds = {next(iter(t)) if isinstance(t, dict) else t for t in eve["types"]}
    assert kinds == {"alert", "drop", "flow", "stats"}
    assert conf["unix-command"] == {"enabled": True, "filename": str(paths.socket)}
    assert conf["rule-files"] == ["spectra-domains.rules", "spectra-inline.rules"]


def test_a_rule_suricata_refuses_is_named_with_file_and_line(tmp_path: Path) -> None:
    bad = 'alert http any any -> any any (msg:"x"; http.host; nosuchkw; sid:9;)'
    paths = render(tmp_path, InspectionPolicy(rules=(NFW_GROUP[0], bad)))
    with pytest.raises(SuricataConfigError) as info:
        check_config(paths.config)
    (failure,) = info.value.failures
    assert failure.file == str(paths.rule_dir / "spectra-inline.rules") and failure.line == 3
    assert "nosuchkw" in failure.reason and failure.rule == bad


def test_parse_failures_pairs_reason_and_signature() -> None:
    out = (
        "[1 - Main] Error: detect-parse: unknown rule keyword 'zz'.\n"
        '[1 - Main] Error: detect: error parsing signature "alert ip any any -> any any '
        '(zz; sid:1;)" from file /r/a.rules at line 7\n'
    )
    (f,) = parse_failures(out)
    assert (f.file, f.line, f.reason) == ("/r/a.rules", 7, "unknown rule keyword 'zz'.")


@pytest.mark.parametrize(
    ("option", "keyword"),
    [
        ("dataset:isset,bad,type string,load bad.lst;", "dataset"),
        ("datarep:bad,>,5,type string,load r.csv;", "datarep"),
        ("iprep:src,BadHosts,>,10;", "iprep"),
        ("lua:script.lua;", "lua"),
        ("filestore;", "filestore"),
        ('filemagic:"PDF";', "filemagic"),
        ("filesize:>100;", "filesize"),
        ("threshold:type limit, track by_src, count 1, seconds 60;", "threshold"),
        ("detection_filter:track by_src, count 5, seconds 60;", "detection_filter"),
        ("geoip:src,RU;", "geoip"),
        ("tag:host,60,seconds;", "tag"),
        ("xbits:set,x,track ip_src;", "xbits"),
        ("hostbits:set,x;", "hostbits"),
        ("ip_proto:4;", "ip_proto:4"),
        ('quic.sni; content:"x";', "quic.sni"),
    ],
)
def test_nfw_refuses_with_the_keyword(option: str, keyword: str) -> None:
    refusal = check_rule(f'alert tcp any any -> any any (msg:"m"; {option} sid:1;)')
    assert refusal is not None and refusal.keyword == keyword
    assert f"'{keyword}'" in str(refusal) and "AWS Network Firewall" in str(refusal)


@pytest.mark.parametrize(("proto", "name"), [("quic", "QUIC"), ("enip", "ENIP/CIP"),
                                             ("ikev2", "IKEv2"), ("sctp", "SCTP")])  # fmt: skip
def test_nfw_refuses_protocols_and_actions(proto: str, name: str) -> None:
    refusal = check_rule(f"alert {proto} any any -> any any (sid:1;)")
    assert refusal is not None and refusal.keyword == proto and name in refusal.reason
    refusal = check_rule("rejectboth tcp any any -> any any (sid:1;)")
    assert refusal is not None and refusal.keyword == "rejectboth"


def test_nfw_rule_group_is_accepted_unchanged() -> None:
    assert [check_rule(r) for r in NFW_GROUP] == [None] * len(NFW_GROUP)


def test_domain_lists_compile_for_both_engines(tmp_path: Path) -> None:
    rules = compile_domain_lists(LISTS)
    # deny: 2 targets x 2 types; allow: 1 pass + the default drop for TLS only
    assert [r.split()[0:2] for r in rules] == [
        ["drop", "tls"], ["drop", "tls"], ["drop", "http"], ["drop", "http"],
        ["pass", "tls"], ["drop", "tls"],
    ]  # fmt: skip
    assert 'content:"example.com"; nocase; pcre:"/(^|\\.)example\\.com$/i";' in rules[0]
    assert 'pcre:"/^www\\.test\\.org$/i";' in rules[1]
    parsed = load_rules(rules)
    assert [r.sid for r in parsed][:1] == [DOMAIN_SID_BASE + 1]
    paths = render(tmp_path, InspectionPolicy(domain_lists=LISTS))
    check_config(paths.config)


def test_bad_domain_target_names_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        DomainList(targets=("ok.test", "bad_name!"), generated_rules_type="DENYLIST")
    assert [e["loc"] for e in err.value.errors()] == [("targets", 1)]
    assert "expected a DNS name" in err.value.errors()[0]["msg"]


def doc(**inspection: object) -> object:
    return parse_document(
        {
            "interfaces": {"inside": "inside", "outside": "outside"},
            "inspection": {"enabled": True, "engine": "suricata", **inspection},
        }
    )


def test_step_render_refuses_with_the_rules_position() -> None:
    host = AnyHost(("203.0.113.2",))
    part = InspectionStep.render(doc(rules=list(NFW_GROUP)), host)  # type: ignore[arg-type]
    assert part.home_net == "[10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,203.0.113.2/32]"
    nfw = 'alert tcp any any -> any any (msg:"m"; iprep:src,Bad,>,1; sid:7;)'
    with pytest.raises(RenderError) as info:
        InspectionStep.render(doc(rules=[NFW_GROUP[0], nfw]), host)  # type: ignore[arg-type]
    assert info.value.path == "inspection.rules[1]" and "'iprep'" in info.value.message
    bad = 'alert http any any -> any any (msg:"x"; http.host; nosuchkw; sid:9;)'
    with pytest.raises(RenderError) as info:
        InspectionStep.render(doc(rules=[NFW_GROUP[0], NFW_GROUP[1], bad]), host)  # type: ignore[arg-type]
    assert info.value.path == "inspection.rules[2]"
    assert "rule 3" in info.value.message and "nosuchkw" in info.value.message
    with pytest.raises(RenderError, match="no line breaks"):
        InspectionStep.render(doc(rules=[NFW_GROUP[0] + "\n" + NFW_GROUP[1]]), host)  # type: ignore[arg-type]


def test_step_render_names_a_bad_rule_file_line(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.rules", tmp_path / "bad.rules"
    good.write_text("\n".join(NFW_GROUP) + "\n")
    bad.write_text(
        "# header\n" + NFW_GROUP[0] + "\n" + "alert tcp any any -> any any (lua:x.lua; sid:8;)\n"
    )
    host = AnyHost(("203.0.113.2",))
    InspectionStep.render(doc(rule_files=[str(good)]), host)  # type: ignore[arg-type]
    with pytest.raises(RenderError) as info:
        InspectionStep.render(doc(rule_files=[str(good), str(bad)]), host)  # type: ignore[arg-type]
    assert info.value.path == "inspection.rule_files[1]"
    assert f"{bad} line 3" in info.value.message and "'lua'" in info.value.message


def test_missing_binary_is_reported(tmp_path: Path) -> None:
    paths = render(tmp_path, InspectionPolicy())
    with pytest.raises(SuricataConfigError, match="not installed"):
        check_config(paths.config, binary=str(tmp_path / "no-suricata"))
