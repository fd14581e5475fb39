"""The dashboard over HTTPS through the appliance's HAProxy (``tls.appliance``) in the
lab: Chromium reaches cs-gw-a's 443 from the management side under the certificate's
name, trusting exactly the test certificate's key (Chromium's SPKI pin list: no NSS
database here, and no blanket ``ignore_https_errors``), logs in, and loads the overview;
the page's Content-Security-Policy and HSTS headers survive HAProxy, every asset loads
over HTTPS with its own type, nothing breaks the CSP, and http:// on port 80 is
redirected to the https:// page."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Response

from control.agent import read_state
from control.api import token_entry
from control.api.app import SECURITY_HEADERS
from perf.lab import TOPOLOGY
from tests.certs import make_cert
from tests.e2e.dashboard_browser import browser, login, new_page, poll, shot
from tests.netns.helpers import agent, document, wait_for
from tests.netns.test_proxy_squid import applied, write

pytestmark = pytest.mark.timeout(240)
GW = TOPOLOGY.gateway("a")
NAME = "gw.test"
HSTS = "max-age=31536000"


def spki_pin(cert_pem: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the certificate: the form Chromium's
    ``--ignore-certificate-errors-spki-list`` takes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert_pem.read_bytes()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
def appliance(lab: Any, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """cs-gw-a's agent with HAProxy on 443 (and 80 redirecting) in front of its config
    API: (certificate, admin token)."""
    certs = Path(tempfile.mkdtemp(prefix="spectra-tls-"))
    make_cert(certs, NAME)
    token, entry = token_entry("operator", "admin")
    (tmp_path / "tokens.json").write_text(json.dumps([entry]))
    tls = {
        "enabled": True,
        "appliance": {
            "certificate_file": str(certs / f"{NAME}.crt"),
            "private_key_file": str(certs / f"{NAME}.key"),
            "redirect_http_port": 80,
        },
    }
    doc = document(interfaces={"data_plane": "kernel"}, tls=tls)
    try:
        with agent(GW.netns, doc, "--api-tokens", str(tmp_path / "tokens.json")):
            try:
                wait_for(
                    lambda: (read_state(GW.netns) or {}).get("tls", {}).get("healthy"),
                    20,
                    "haproxy healthy",
                )
                yield certs / f"{NAME}.crt", token
            finally:  # the product stops the HAProxy it started (it outlives the agent)
                applied(write(document(interfaces={"data_plane": "kernel"})))
    finally:
        shutil.rmtree(certs)


def test_dashboard_over_https_through_haproxy(appliance: tuple[Path, str]) -> None:
    cert, token = appliance
    url = f"https://{NAME}"
    flags = (
        f"--host-resolver-rules=MAP {NAME} {GW.mgmt_ip}",
        f"--ignore-certificate-errors-spki-list={spki_pin(cert)}",
    )
    with browser(*flags) as b:
        page = new_page(b)
        responses: list[Response] = []
        problems: list[str] = []
        page.on("response", lambda r: responses.append(r))
        page.on("console", lambda m: _note_error(m, problems))
        page.on("pageerror", lambda e: problems.append(str(e)))

        # plain http on 80 lands on the https page (HAProxy's redirect)
        first = page.goto(f"http://{NAME}/")
        assert first is not None and first.url == f"{url}/"
        assert first.request.redirected_from is not None
        assert first.request.redirected_from.url == f"http://{NAME}/"

        # the page's security headers pass through HAProxy unchanged, plus HSTS
        headers = first.headers
        assert first.status == 200
        for name, value in SECURITY_HEADERS.items():
            assert headers[name.lower()] == value, name
        assert headers["strict-transport-security"] == HSTS
        security = first.security_details()
        assert security is not None and security["subjectName"] == NAME

        login(page, url, token)
        assert page.inner_text("#who") == "operator (admin)"
        row = page.locator(f"tr[data-instance='{GW.netns}']")
        row.wait_for()
        assert row.locator("td").first.inner_text() == "healthy"
        chart = page.locator("#chart-pps")  # the charts refresh over https too
        poll(lambda: int(chart.get_attribute("data-points") or 0) >= 3, 30, "3 chart points")
        assert "TLS (HAProxy)" in row.locator("td").nth(4).inner_text().split(", ")
        shot(page, "overview-https")

        # every asset came over https from the appliance, with its own type
        assets = [r for r in responses if "/assets/" in r.url]
        kinds = {r.url.rsplit(".", 1)[-1]: r for r in assets}
        assert set(kinds) == {"js", "css"}, [r.url for r in assets]
        for r in assets:
            assert r.url.startswith(f"{url}/assets/") and r.status == 200, r.url
            assert r.headers["strict-transport-security"] == HSTS
        scripts = ("text/javascript", "application/javascript")
        assert kinds["js"].headers["content-type"].startswith(scripts)
        assert kinds["css"].headers["content-type"].startswith("text/css")
        api = [r for r in responses if "/v1/" in r.url]
        assert api and all(r.url.startswith(f"{url}/v1/") for r in api)
        assert {r.status for r in api} == {200}, [(r.url, r.status) for r in api]
        assert problems == []


def _note_error(message: ConsoleMessage, problems: list[str]) -> None:
    """Console errors (a CSP violation or a failed load is one)."""
    if message.type == "error":
        problems.append(f"{message.text} ({message.location.get('url')})")
