"""``tls.appliance`` in the lab: ``cs-gw-a``'s config API, dashboard and AI gateway
reached over HTTPS on 443 from the workload (bearer token over TLS, HSTS, the AI
gateway's paths to the AI gateway), port 80 redirected to https, and the plain-HTTP
ports reset from the management link while loopback (HAProxy's way in) still answers;
the status reader of ``spectra aws resize`` reads ``/v1/status`` over HTTPS from the
management side with the certificate verified, and refuses a certificate it cannot."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.agent import read_state
from control.api import token_entry
from control.aws.gateway_status import ApiStatus, StatusUntrusted, https_trust
from perf.lab import TOPOLOGY
from tests.certs import make_cert
from tests.netns.helpers import agent, document, sh, wait_for
from tests.netns.test_proxy_squid import applied, write

GW = TOPOLOGY.gateway("a")
NAME = "gw.test"
AI = {"providers": {"local": {"kind": "vllm", "base_url": "http://127.0.0.1:9/v1"}},
      "routes": [{"pattern": "m-*", "provider": "local", "models": ["m-1"]}]}  # fmt: skip


@pytest.fixture
def certs(lab: Any) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="spectra-tls-"))
    make_cert(directory, NAME)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def curl(certs: Path, url: str, *opts: str, ns: str = GW.workload_netns) -> dict[str, Any]:
    """curl's own report (``-w %{json}``) with the body and headers it received; from
    ``ns`` (empty: this namespace, the management side)."""
    with tempfile.NamedTemporaryFile() as body, tempfile.NamedTemporaryFile() as head:
        argv = ("curl", "-s", "-o", body.name, "-D", head.name, "-m", "10", "--cacert",
                 str(certs / f"{NAME}.crt"), "--resolve", f"{NAME}:443:{GW.inside_ip}",
                 "--resolve", f"{NAME}:80:{GW.inside_ip}", *opts, "-w", "%{json}", url)  # fmt: skip
        out = sh(ns, *argv) if ns else subprocess.run(argv, capture_output=True, text=True,
                                                      timeout=30, check=False)  # fmt: skip
        result: dict[str, Any] = json.loads(out.stdout) if out.stdout else {}
        result["rc"] = out.returncode
        result["body"] = Path(body.name).read_bytes()
        result["headers"] = {
            k.strip().lower(): v.strip()
            for k, _, v in (ln.partition(":") for ln in Path(head.name).read_text().splitlines())
            if v
        }
    return result


def test_config_api_dashboard_and_ai_gateway_behind_443(
    certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPECTRA_AI_KEY_SECRET", "k" * 32)
    token, entry = token_entry("test-admin", "admin")
    (tmp_path / "tokens.json").write_text(json.dumps([entry]))
    appliance = {
        "certificate_file": str(certs / f"{NAME}.crt"),
        "private_key_file": str(certs / f"{NAME}.key"),
        "redirect_http_port": 80,
    }
    doc = document(interfaces={"data_plane": "kernel"}, ai=AI,
                   tls={"enabled": True, "appliance": appliance})  # fmt: skip
    with agent(GW.netns, doc, "--api-tokens", str(tmp_path / "tokens.json")):
        try:
            run_checks(certs, token)
        finally:  # the product stops the HAProxy it started (it outlives the agent)
            applied(write(document(interfaces={"data_plane": "kernel"})))


def run_checks(certs: Path, token: str) -> None:
    st = wait_for(lambda: (read_state(GW.netns) or {}).get("tls", {}).get("healthy") and
                  read_state(GW.netns), 15, "haproxy healthy, both backends up")  # fmt: skip
    assert set(st["tls"]["servers"]) == {"appliance/s0", "appliance_ai/s0"}
    bearer = ("-H", f"Authorization: Bearer {token}")

    # the config API over HTTPS: the token works, no token is refused
    config = curl(certs, f"https://{NAME}/v1/config", *bearer)
    assert config["rc"] == 0 and config["http_code"] == 200, config
    assert config["scheme"].upper() == "HTTPS"
    assert json.loads(config["body"])["document"]["tls"]["appliance"]["port"] == 443
    assert curl(certs, f"https://{NAME}/v1/config")["http_code"] == 401

    # the dashboard with HSTS
    board = curl(certs, f"https://{NAME}/dashboard")
    assert board["http_code"] == 200 and b"<html" in board["body"].lower()
    assert board["headers"]["strict-transport-security"] == "max-age=31536000"

    # the AI gateway's paths reach the AI gateway (its request id; its own 401)
    models = curl(certs, f"https://{NAME}/v1/models")
    assert models["http_code"] == 401 and "x-request-id" in models["headers"], models

    # plain HTTP on 80 is redirected, keeping the path
    moved = curl(certs, f"http://{NAME}/v1/status?x=1")
    assert moved["http_code"] == 301
    assert moved["redirect_url"] == f"https://{NAME}/v1/status?x=1"

    # the plain ports: reset from the management link and the inside, open on loopback
    for ns, address in (("", GW.mgmt_ip), (GW.workload_netns, GW.inside_ip)):
        for port in (8080, 8090):
            plain = curl(certs, f"http://{address}:{port}/healthz", ns=ns)
            assert plain["rc"] == 7 and plain["http_code"] == 0, (address, port, plain)
    local = curl(certs, "http://127.0.0.1:8080/healthz", ns=GW.netns)
    assert local["rc"] == 0 and local["http_code"] == 200, local
    check_resize_status_reader(certs, token)


def check_resize_status_reader(certs: Path, token: str) -> None:
    """What ``spectra aws resize`` reads from the management side: plain HTTP on the
    API port gets nothing, HTTPS on 443 verified by the document's certificate (the name
    it holds given) gets the agent's status, another trust is refused before the token
    goes out."""

    def mgmt(_instance_id: str) -> str:
        return GW.mgmt_ip

    plain = ApiStatus(mgmt, token, port=8080, timeout_s=3.0)
    assert plain.status(GW.mgmt_ip) is None and plain.last_error, plain.last_error
    trust = https_trust(str(certs / f"{NAME}.crt"), "the document's certificate", NAME)
    answer = ApiStatus(mgmt, token, port=443, https=trust).status(GW.mgmt_ip)
    assert isinstance(answer, dict) and answer["instances"], answer
    wrong = https_trust(None, "the system trust store", NAME)
    with pytest.raises(StatusUntrusted, match="against the system trust store"):
        ApiStatus(mgmt, token, port=443, https=wrong).status(GW.mgmt_ip)
