"""The proxy and TLS steps' render, checked by the services' own parsers (``squid -k
parse``, ``basic_ncsa_auth``, ``haproxy -c``, ``openssl``), and the bad input they refuse
with the field named, at the model, at the render and at the config API."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from control.config import ConfigValidationError, parse_document
from control.haproxy import HaproxyPaths, check, render_config, server_states
from control.squid import ProxySettings, SquidPaths, parse, render_passwords
from control.squid import render_config as squid_config
from control.squid_tproxy import ruleset as tproxy_ruleset
from control.steps import AnyHost, RenderError, dry_run
from control.steps.haproxy import HaproxyStep
from control.steps.squid import SquidStep
from control.tls_certs import acm_export, check_pair
from tests.certs import make_cert

pytestmark = pytest.mark.timeout(60)
HOST = AnyHost(("203.0.113.2",))


def doc(**sections: Any) -> Any:
    return parse_document({"interfaces": {"inside": "inside", "outside": "outside"}, **sections})


def proxy(**changes: Any) -> dict[str, Any]:
    allowed = [".allowed.test", "www.allowed.test", "*.sub.test", "exact.test"]
    return {"enabled": True, "allowed_domains": allowed, "denied_domains": ["bad.allowed.test"],
            **changes}  # fmt: skip


def squid_conf(tmp_path: Path, settings: ProxySettings) -> tuple[str, Path]:
    paths = SquidPaths.under(tmp_path / "run", tmp_path / "log")
    text = squid_config(settings, paths)
    path = tmp_path / "squid.conf"
    path.write_text(text)
    return text, path


def directives(text: str, name: str) -> list[list[str]]:
    return [ln.split()[1:] for ln in text.splitlines() if ln.split()[:1] == [name]]


def test_proxy_config_is_what_squid_accepts(tmp_path: Path) -> None:
    settings = SquidStep.render(doc(proxy=proxy(
        cache={"enabled": True, "size_mb": 32}, connect_domains=[".allowed.test"],
        auth={"mode": "basic", "users": [{"name": "alice", "password": "pw-alice-1"}]},
        bandwidth_limits=[{"name": "lab", "kbps": 800, "networks": ["10.0.1.0/24"]}],
    )), HOST)  # fmt: skip
    assert settings is not None
    text, path = squid_conf(tmp_path, settings)
    assert parse(path).ok, parse(path).output
    assert directives(text, "http_port") == [["203.0.113.2:3128"]]
    acls = {tuple(a) for a in directives(text, "acl")}
    # www.allowed.test is covered by .allowed.test; *.sub.test is subdomains only
    assert ("allowed_domains", "dstdomain", ".allowed.test") in acls
    assert ("allowed_domains", "dstdomain", "exact.test") in acls
    assert not any("www.allowed.test" in a for a in acls)
    assert ("allowed_domains_re", "dstdom_regex", "-i", r"\.sub\.test$") in acls
    access = [" ".join(a) for a in directives(text, "http_access")]
    assert access.index("deny denied_domains") < access.index("allow allowed_domains")
    # authentication first: no delay_access may look up credentials no rule checked
    assert access[0] == "deny !authenticated" and access[-1] == "deny all"
    assert directives(text, "delay_parameters") == [["1", "100000/100000"]]
    assert directives(text, "cache_dir")[0][-3] == "32"


def test_a_proxy_password_is_hashed_and_checked_by_squids_helper(tmp_path: Path) -> None:
    pw = "correct horse"
    settings = SquidStep.render(doc(proxy=proxy(auth={"mode": "basic", "users": [
        {"name": "alice", "password": pw}]})), HOST)  # fmt: skip
    assert settings is not None
    passwd = render_passwords(settings)
    assert pw not in passwd and passwd.startswith("alice:$6$")
    assert render_passwords(settings) == passwd  # deterministic: no reload when unchanged
    (tmp_path / "passwd").write_text(passwd)
    helper = ["/usr/lib/squid/basic_ncsa_auth", str(tmp_path / "passwd")]
    out = subprocess.run(helper, input=f"alice {pw}\nalice wrong\n", capture_output=True,
                         text=True, timeout=10).stdout.splitlines()  # fmt: skip
    assert [line.split()[0] for line in out] == ["OK", "ERR"]
    # a hash given in the document is used as it is
    digest = passwd.strip().split(":", 1)[1]
    given = SquidStep.render(doc(proxy=proxy(auth={"mode": "basic", "users": [
        {"name": "alice", "password": digest}]})), HOST)  # fmt: skip
    assert given is not None and render_passwords(given) == passwd


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({"allowed_domains": ["foo.*.com"]}, "proxy.allowed_domains[0]"),
        ({"denied_domains": ["*example.com"]}, "proxy.denied_domains[0]"),
        ({"connect_domains": ["exa mple.com"]}, "proxy.connect_domains[0]"),
        ({"bandwidth_limits": [{"name": "x", "kbps": 100, "users": ["nobody"]}]},
         "proxy.bandwidth_limits[0].users[0]"),
        ({"port": 8080}, "proxy.port"),  # the config API's port
    ],
)  # fmt: skip
def test_bad_proxy_input_is_refused_with_the_field(section: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigValidationError) as err:
        doc(proxy=proxy(**section))
    assert path in [e["path"] for e in err.value.errors], err.value.errors


def tls(cert: str, key: str, **changes: Any) -> dict[str, Any]:
    listener = {"name": "web", "certificate_file": cert, "private_key_file": key,
                "backends": [{"address": "10.0.1.10", "port": 8080}], "hsts": True,
                "redirect_http_port": 80, **changes}  # fmt: skip
    return {"enabled": True, "listeners": [listener]}


def test_tls_config_is_what_haproxy_accepts(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "gw")
    part = HaproxyStep.render(doc(tls=tls(cert, key, port=8443)), HOST)
    assert part is not None
    listeners = part.listeners
    paths = HaproxyPaths.under(tmp_path)
    paths.certs.mkdir(parents=True)
    paths.pem("web").write_text(Path(cert).read_text() + Path(key).read_text())
    text = render_config(listeners, paths)
    (tmp_path / "h.cfg").write_text(text)
    assert check(tmp_path / "h.cfg").ok, check(tmp_path / "h.cfg").output
    assert "ssl-min-ver TLSv1.2" in text and "Strict-Transport-Security" in text
    redirect = next(ln for ln in text.splitlines() if "redirect" in ln)
    assert "https://%[req.hdr(host),field(1,:)]:8443%[capture.req.uri]" in redirect
    # haproxy -c refuses what it cannot load
    paths.pem("web").write_text("not a certificate\n")
    assert not check(tmp_path / "h.cfg").ok


def test_bad_certificates_are_refused_with_the_field(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "gw")
    _, other_key = make_cert(tmp_path, "other")
    old_cert, old_key = make_cert(tmp_path, "old", days=-1)
    check_pair(Path(cert).read_bytes(), Path(key).read_bytes())
    for c, k, message in ((cert, other_key, "does not match"), (old_cert, old_key, "expired"),
                          (cert, "/nonexistent.key", "cannot read")):  # fmt: skip
        with pytest.raises(RenderError) as err:
            dry_run(doc(tls=tls(c, k)), HOST.outside)
        assert err.value.path.startswith("tls.listeners[0].") and message in err.value.message


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"port": 8080}, "tls.listeners[0].port"),  # the config API
        ({"redirect_http_port": 3128}, "tls.listeners[0].redirect_http_port"),  # the proxy
        ({"mode": "tcp"}, "tls.listeners[0].hsts"),
        ({"certificate_arn": "arn:aws:acm:eu-west-1:123456789012:certificate/abc"},
         "tls.listeners[0].certificate_arn"),
    ],
)  # fmt: skip
def test_bad_tls_input_is_refused_with_the_field(changes: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigValidationError) as err:
        doc(tls=tls("/c.pem", "/k.pem", **changes), proxy={"enabled": True})
    assert path in [e["path"] for e in err.value.errors], err.value.errors


def test_server_states_from_show_stat() -> None:
    raw = ("# pxname,svname,qcur,status,check_status\nweb,FRONTEND,,OPEN,\n"
           "web,s0,0,UP,L4OK\nweb,s1,0,DOWN,L4CON\nweb,BACKEND,0,UP,\n")  # fmt: skip
    assert server_states(raw) == {"web/s0": {"status": "UP", "check": "L4OK"},
                                  "web/s1": {"status": "DOWN", "check": "L4CON"}}  # fmt: skip


def test_acm_export_against_moto(moto_endpoint: str) -> None:
    import boto3

    acm = boto3.client("acm", region_name="us-east-1", endpoint_url=moto_endpoint,
                       aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    arn = acm.request_certificate(DomainName="gw.example.com",
                                  Options={"Export": "ENABLED"})["CertificateArn"]  # fmt: skip
    cert, key = acm_export(acm, arn)
    assert b"BEGIN CERTIFICATE" in cert and b"ENCRYPTED" not in key
    check_pair(cert, key)


def test_transparent_mode_is_what_squid_accepts(tmp_path: Path) -> None:
    """One TPROXY listener on the first inside address; intercepted requests skip
    authentication and never reach a per-user pool's proxy_auth check."""
    settings = SquidStep.render(doc(proxy=proxy(
        transparent=True,
        auth={"mode": "basic", "users": [{"name": "alice", "password": "pw-alice-1"}]},
        bandwidth_limits=[{"name": "a", "kbps": 800, "users": ["alice"],
                           "networks": ["10.0.1.0/24"]}],
    )), HOST)  # fmt: skip
    assert settings is not None and settings.transparent == "203.0.113.2:3129"
    text, path = squid_conf(tmp_path, settings)
    assert parse(path).ok, parse(path).output
    assert ["203.0.113.2:3129", "tproxy", "name=transparent"] in directives(text, "http_port")
    access = [" ".join(a) for a in directives(text, "http_access")]
    assert access[0] == "deny !intercepted !authenticated"
    assert [" ".join(a) for a in directives(text, "delay_access")] == [
        "1 allow limit_a_nets",
        "1 deny intercepted",
        "1 allow limit_a_users",
        "1 deny all",
    ]
    rules = tproxy_ruleset("inside", [settings.transparent])
    assert "tproxy to 203.0.113.2:3129 accept" in rules
    assert 'iifname "inside" tcp dport 80 fib daddr type local return' in rules
    assert tproxy_ruleset("inside", []).splitlines()[-1] == "delete table ip spectra_tproxy"


def test_transparent_port_collisions_are_named() -> None:
    with pytest.raises(ConfigValidationError) as err:
        doc(proxy=proxy(transparent={"enabled": True, "port": 3128}))
    assert "proxy.transparent.port" in [e["path"] for e in err.value.errors], err.value.errors
