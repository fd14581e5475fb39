"""Reading a gateway's agent state by instance id: from its config API (``/v1/status``
over HTTP on loopback, with the bearer token; over HTTPS with the certificate verified,
as behind ``tls.appliance``) and from the state files on this host."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from control.aws.gateway_status import ApiStatus, LocalStatus, StatusUntrusted, https_trust
from tests.certs import make_cert, make_signed

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

STATES = {
    "cv-gw-a1": {"aws": {"instance_id": "i-1", "role": "leader"}},
    "cv-gw-a2": {"aws": {"instance_id": "i-2", "role": "standby"}},
    "other": {"converged": True},
}


@contextmanager
def serve(
    states: dict[str, Any], certificate: tuple[str, str] | None = None
) -> Iterator[tuple[int, list[str | None]]]:
    """A config API on loopback answering ``/v1/status`` with ``states``: plain HTTP, or
    HTTPS with ``certificate`` (its PEM, its key's) as HAProxy serves it. Yields the
    port and the Authorization header of each request."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"desired_version": 3, "instances": states}).encode()
            status = 200 if self.path == "/v1/status" else 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certificate)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.handle_error = lambda request, address: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api() -> Iterator[tuple[int, list[str | None]]]:
    with serve(STATES) as answer:
        yield answer


def test_the_api_is_asked_at_the_instance_address_with_the_token(
    api: tuple[int, list[str | None]],
) -> None:
    port, seen = api
    asked: list[str] = []

    def address(instance_id: str) -> str:
        asked.append(instance_id)
        return "127.0.0.1"

    status = ApiStatus(address, "spk_test", port=port)
    state = status.state("i-2")
    assert state is not None and state["aws"]["role"] == "standby"
    assert status.state("i-9") is None  # answers, but about other instances
    assert asked == ["i-2", "i-9"] and seen == ["Bearer spk_test"] * 2


def test_an_api_that_does_not_answer_is_no_state() -> None:
    status = ApiStatus(lambda _id: "127.0.0.1", None, port=1, timeout_s=0.5)
    assert status.state("i-1") is None
    assert (status.last_error or "").startswith("http://127.0.0.1:1/v1/status: ")
    assert ApiStatus(lambda _id: None, None).state("i-1") is None  # no address yet


def test_the_state_files_here_by_instance_id(tmp_path: Path) -> None:
    for name, state in STATES.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "status.json").write_text(json.dumps(state))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "status.json").write_text('{"aws": ')  # being rewritten
    status = LocalStatus(tmp_path)
    assert status.state("i-1") == STATES["cv-gw-a1"]
    assert status.state("i-3") is None


def loopback(_instance_id: str) -> str:
    return "127.0.0.1"


def test_https_with_the_appliance_certificate_as_the_trust(tmp_path: Path) -> None:
    cert = make_cert(tmp_path, "gw.spectra.test", ips=("127.0.0.1",))
    with serve(STATES, cert) as (port, seen):
        trust = https_trust(cert[0], "tls.appliance.certificate_file")
        status = ApiStatus(loopback, "spk_test", port=port, https=trust)
        state = status.state("i-1")
        assert state is not None and state["aws"]["role"] == "leader"
        assert seen == ["Bearer spk_test"] and status.last_error is None
        # the same port asked in plain HTTP gets nothing, and says why
        plain = ApiStatus(loopback, "spk_test", port=port, timeout_s=1.0)
        assert plain.state("i-1") is None
        assert plain.last_error and plain.last_error.startswith(f"http://127.0.0.1:{port}/")


def test_a_ca_bundle_verifies_the_certificate_it_signed(tmp_path: Path) -> None:
    ca, *leaf = make_signed(tmp_path, "gw.spectra.test", ips=("127.0.0.1",))
    with serve(STATES, (leaf[0], leaf[1])) as (port, _):
        status = ApiStatus(loopback, None, port=port, https=https_trust(ca, "--ca-bundle"))
        state = status.state("i-2")
        assert state is not None and state["aws"]["role"] == "standby"


def test_the_name_is_checked_and_can_be_given(tmp_path: Path) -> None:
    cert = make_cert(tmp_path, "gw.spectra.test")  # no address in the certificate
    with serve(STATES, cert) as (port, _):
        by_address = ApiStatus(loopback, None, port=port, https=https_trust(cert[0], "doc"))
        with pytest.raises(StatusUntrusted) as refused:
            by_address.state("i-1")
        message = str(refused.value)
        assert f"https://127.0.0.1:{port}/v1/status" in message
        assert "for '127.0.0.1' against doc" in message and "--tls-server-name" in message
        named = https_trust(cert[0], "doc", server_name="gw.spectra.test")
        state = ApiStatus(loopback, None, port=port, https=named).state("i-1")
        assert state is not None and state["aws"]["instance_id"] == "i-1"


@pytest.mark.parametrize("trusted", ["another certificate", "the system trust store"])
def test_a_certificate_that_does_not_verify_is_never_read(tmp_path: Path, trusted: str) -> None:
    cert = make_cert(tmp_path, "gw.spectra.test", ips=("127.0.0.1",))
    other = make_cert(tmp_path, "other.spectra.test", ips=("127.0.0.1",))
    cafile = other[0] if trusted == "another certificate" else None
    with serve(STATES, cert) as (port, seen):
        status = ApiStatus(loopback, "spk_test", port=port, https=https_trust(cafile, trusted))
        with pytest.raises(StatusUntrusted, match=f"against {trusted} .*--ca-bundle"):
            status.state("i-1")
        assert seen == []  # the token never went out


def test_a_bundle_without_a_certificate_names_its_source(tmp_path: Path) -> None:
    (tmp_path / "bundle.pem").write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"^--ca-bundle x: no PEM certificate could be read"):
        https_trust(str(tmp_path / "bundle.pem"), "--ca-bundle x")
