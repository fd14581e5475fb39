"""``tls.appliance``: the config API, dashboard and AI gateway behind HAProxy's HTTPS
frontend. The rendered config is checked by ``haproxy -c``, the AI gateway's paths by
its own router, the loopback-only rule by ``nft``'s parser, bad input by the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ai.config import AIConfig
from ai.server import create_app
from control.config import ConfigValidationError, parse_document
from control.haproxy import HaproxyPaths, check, render_config
from control.steps import AnyHost, RenderError, dry_run
from control.steps.haproxy import AI_GATEWAY_PATHS, HaproxyStep
from control.steps.nftables import render_nftables
from tests.certs import make_cert
from tests.unit.control.test_port_forwards import nft_check

pytestmark = pytest.mark.timeout(60)
HOST = AnyHost(("203.0.113.2",))
AI = {"providers": {"local": {"kind": "vllm", "base_url": "http://127.0.0.1:9/v1"}},
      "routes": [{"pattern": "m-*", "provider": "local", "models": ["m-1"]}]}  # fmt: skip


def doc(appliance: dict[str, Any], **sections: Any) -> Any:
    tls = {"enabled": True, "appliance": appliance}
    return parse_document(
        {"interfaces": {"inside": "in", "outside": "out"}, "tls": tls, **sections}
    )


def files(tmp_path: Path) -> dict[str, Any]:
    cert, key = make_cert(tmp_path, "gw")
    return {"certificate_file": cert, "private_key_file": key}


def haproxy_config(tmp_path: Path, parsed: Any) -> str:
    part = HaproxyStep.render(parsed, HOST)
    assert part is not None
    listeners = part.listeners
    paths = HaproxyPaths.under(tmp_path)
    paths.certs.mkdir(parents=True)
    source = parsed.tls.appliance
    paths.pem("appliance").write_text(
        Path(source.certificate_file).read_text() + Path(source.private_key_file).read_text()
    )
    text = render_config(listeners, paths)
    (tmp_path / "h.cfg").write_text(text)
    checked = check(tmp_path / "h.cfg")
    assert checked.ok, checked.output
    return text


def sections(text: str) -> dict[str, list[str]]:
    """haproxy.cfg as {"frontend appliance": [its lines], ...}."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            current = found.setdefault(line, [])
        elif line.strip():
            current.append(line.strip())
    return found


def test_the_appliance_frontend_is_what_haproxy_accepts(tmp_path: Path) -> None:
    parsed = doc({**files(tmp_path), "redirect_http_port": 80}, ai=AI)
    found = sections(haproxy_config(tmp_path, parsed))
    front = found["frontend appliance"]
    assert "bind :443 ssl crt" in " ".join(front)
    assert 'http-response set-header Strict-Transport-Security "max-age=31536000"' in front
    assert f"acl ai_path path {' '.join(AI_GATEWAY_PATHS)}" in front
    assert "use_backend appliance_ai if ai_path" in front
    assert front[-1] == "default_backend appliance"
    assert found["backend appliance"][-1] == "server s0 127.0.0.1:8080 weight 1 check"
    assert found["backend appliance_ai"][-1] == "server s0 127.0.0.1:8090 weight 1 check"
    assert "bind :80" in found["frontend appliance_http"]


def test_without_ai_routes_everything_goes_to_the_config_api(tmp_path: Path) -> None:
    parsed = doc(files(tmp_path), api={"host": "10.0.0.5", "port": 9443})
    found = sections(haproxy_config(tmp_path, parsed))
    assert "backend appliance_ai" not in found
    assert found["backend appliance"][-1] == "server s0 10.0.0.5:9443 weight 1 check"


def test_the_ai_paths_are_the_ai_gateways_routes() -> None:
    app = create_app(AIConfig.model_validate(AI), env={"SPECTRA_AI_KEY_SECRET": "k" * 32})
    routes = {r.resource.canonical for r in app.router.routes() if r.resource}
    assert routes - {"/metrics"} == set(AI_GATEWAY_PATHS)  # /metrics: the config API's


def test_plain_ports_answer_on_loopback_only(tmp_path: Path) -> None:
    text = render_nftables(doc(files(tmp_path), ai=AI), ["203.0.113.2"])
    rule = next(ln.strip() for ln in text.splitlines() if "reject" in ln)
    assert rule.startswith('iifname != "lo" tcp dport { 8080, 8090 } counter reject with tcp reset')
    nft_check(text)
    plain = render_nftables(parse_document(
        {"interfaces": {"inside": "inside", "outside": "outside"}}), ["203.0.113.2"])  # fmt: skip
    assert "reject" not in plain


@pytest.mark.parametrize(
    ("changes", "extra", "path"),
    [
        ({"port": 8080}, {}, "tls.appliance.port"),  # the config API's own port
        ({"redirect_http_port": 3128}, {"proxy": {"enabled": True}},
         "tls.appliance.redirect_http_port"),
        ({"certificate_file": None}, {}, "tls.appliance.certificate_file"),
        ({}, {"listeners": [{"name": "web", "certificate_file": "/c", "private_key_file": "/k",
              "backends": [{"address": "10.0.1.1", "port": 80}]}]},
         "tls.listeners[0].port"),  # 443 is the appliance's
        ({"certificate_arn": "arn:aws:acm:eu-west-1:123456789012:certificate/abc"}, {},
         "tls.appliance.certificate_arn"),
        ({}, {"listeners": [{"name": "appliance", "certificate_file": "/c", "private_key_file":
              "/k", "port": 8443, "backends": [{"address": "10.0.1.1", "port": 80}]}]},
         "tls.listeners[0].name"),
    ],
)  # fmt: skip
def test_bad_appliance_input_is_refused_with_the_field(
    changes: dict[str, Any], extra: dict[str, Any], path: str
) -> None:
    appliance = {"certificate_file": "/c.pem", "private_key_file": "/k.pem", **changes}
    tls = {"enabled": True, "appliance": {k: v for k, v in appliance.items() if v is not None}}
    tls.update({k: v for k, v in extra.items() if k == "listeners"})
    others = {k: v for k, v in extra.items() if k != "listeners"}
    with pytest.raises(ConfigValidationError) as err:
        parse_document({"interfaces": {"inside": "i", "outside": "o"}, "tls": tls, **others})
    assert path in [e["path"] for e in err.value.errors], err.value.errors


def test_a_bad_appliance_certificate_is_refused_at_render(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path, "gw")
    _, other = make_cert(tmp_path, "other")
    with pytest.raises(RenderError) as err:
        dry_run(doc({"certificate_file": cert, "private_key_file": other}), HOST.outside)
    assert err.value.path == "tls.appliance.certificate_file"
    assert "does not match" in err.value.message
