"""``pass`` rules are rendered with Suricata's ``bypass`` keyword (inline, domain-list
and file rules), so a passed flow leaves the queue; file copies keep their line numbers
and an error in one names the source file and its line; Suricata loads the result."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.steps.base import AnyHost, RenderError
from control.steps.inspection import InspectionStep
from nfq.domains import compile_domain_lists
from nfq.policy import DomainList, InspectionPolicy
from nfq.suricata.config import (
    FILE_RULES,
    INLINE_RULES,
    SuricataPaths,
    pass_bypasses,
    render_rule_file,
    write_config,
)
from nfq.suricata.validate import check_config
from tests.unit.nfq.test_suricata_rules import doc

PASS = 'pass tcp any any -> any 22 (msg:"ssh"; sid:4;)'


@pytest.mark.parametrize(
    ("rule", "rendered"),
    [
        (PASS, 'pass tcp any any -> any 22 (msg:"ssh"; sid:4; bypass;)'),
        (
            'pass ip any any -> any any (msg:"a)b"; sid:5)',
            'pass ip any any -> any any (msg:"a)b"; sid:5; bypass;)',
        ),
        (
            "pass tcp any any -> any 80 (sid:6; bypass;)",
            "pass tcp any any -> any 80 (sid:6; bypass;)",
        ),
        (
            'drop tcp any any -> any 22 (msg:"pass"; sid:7;)',
            'drop tcp any any -> any 22 (msg:"pass"; sid:7;)',
        ),
        (
            'alert tcp any any -> any 22 (msg:"x"; sid:8;)',
            'alert tcp any any -> any 22 (msg:"x"; sid:8;)',
        ),
    ],
)
def test_pass_rules_get_the_bypass_keyword(rule: str, rendered: str) -> None:
    assert pass_bypasses(rule) == rendered


def test_rule_file_keeps_its_lines() -> None:
    text = (
        "# pass tcp any any -> any any (sid:1;)\n"
        "\n"
        "pass tcp any any -> any 443 \\\n"
        '    (msg:"tls"; sid:2;)\n'
        'drop tcp any any -> any 23 (msg:"telnet"; sid:3;)\n'
        f"  {PASS}\n"
    )
    out = render_rule_file(text).splitlines()
    assert len(out) == 6
    assert out[0] == "# pass tcp any any -> any any (sid:1;)" and out[1] == ""
    assert out[2] == "pass tcp any any -> any 443 \\"
    assert out[3] == '    (msg:"tls"; sid:2; bypass;)'
    assert out[4] == 'drop tcp any any -> any 23 (msg:"telnet"; sid:3;)'
    assert out[5] == '  pass tcp any any -> any 22 (msg:"ssh"; sid:4; bypass;)'


def test_rendered_rules_carry_bypass_and_load_in_suricata(tmp_path: Path) -> None:
    source = tmp_path / "group.rules"
    source.write_text(f"# a rule group\n{PASS.replace('sid:4', 'sid:40')}\n")
    allow = DomainList(targets=("ok.example",), generated_rules_type="ALLOWLIST")
    policy = InspectionPolicy(
        engine="suricata", rules=(PASS,), rule_files=(source,), domain_lists=(allow,)
    )
    paths = SuricataPaths.under(tmp_path / "s")
    write_config(policy, paths, home_net="[10.0.0.0/8]")
    inline = (paths.rule_dir / INLINE_RULES).read_text().splitlines()
    assert inline[1] == pass_bypasses(PASS) and inline[1].endswith("bypass;)")
    copied = (paths.rule_dir / FILE_RULES.format(0)).read_text().splitlines()
    assert copied[0] == "# a rule group" and copied[1].endswith("sid:40; bypass;)")
    domains = (paths.rule_dir / "spectra-domains.rules").read_text()
    passes = [r for r in compile_domain_lists((allow,)) if r.startswith("pass")]
    assert passes and all(pass_bypasses(r) in domains for r in passes)
    assert "bypass;" in pass_bypasses(passes[0])
    assert "successfully loaded" in check_config(paths.config)


def test_suricata_error_in_a_rule_file_names_the_source_and_line(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.rules", tmp_path / "bad.rules"
    good.write_text(f"{PASS}\n")
    bad.write_text(f"# header\n{PASS.replace('sid:4', 'sid:9')}\n"
                   'alert tcp any any -> any any (msg:"x"; nosuchkw; sid:10;)\n')  # fmt: skip
    with pytest.raises(RenderError) as info:
        InspectionStep.render(doc(rule_files=[str(good), str(bad)]), AnyHost(("203.0.113.2",)))  # type: ignore[arg-type]
    assert info.value.path == "inspection.rule_files[1]"
    assert f"{bad} line 3" in info.value.message and "nosuchkw" in info.value.message
