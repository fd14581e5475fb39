"""Reading a gateway's agent state by instance id: from its config API (``/v1/status``
over HTTP on loopback, with the bearer token) and from the state files on this host."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from control.aws.gateway_status import ApiStatus, LocalStatus

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

STATES = {
    "cv-gw-a1": {"aws": {"instance_id": "i-1", "role": "leader"}},
    "cv-gw-a2": {"aws": {"instance_id": "i-2", "role": "standby"}},
    "other": {"converged": True},
}


@pytest.fixture
def api() -> Iterator[tuple[int, list[str | None]]]:
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"desired_version": 3, "instances": STATES}).encode()
            status = 200 if self.path == "/v1/status" else 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


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
