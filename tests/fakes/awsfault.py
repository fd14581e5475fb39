"""An HTTP proxy in front of a moto server that injects AWS error answers.

moto accepts every AssumeRole (it enforces neither trust policies nor external IDs) and
never throttles, so the tests that need a refusal or throttling put this proxy between
the boto3 client and moto: a :class:`Fault` matching a request's service (from the SigV4
credential scope) and action (``X-Amz-Target`` for the JSON protocols, ``Action=`` of
the form body for the query protocols) is answered with the error in that protocol's
shape, ``times`` times (``None``: always); every other request goes to moto unchanged.
A ``judge`` (service, action, form fields) may answer with a :class:`Fault` computed from
the request (tests/fakes/ststrust.py plays STS's trust-policy evaluation with it).
"""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SCOPE_RE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")


@dataclass
class Fault:
    """Answer ``service``'s ``action`` with ``code`` (HTTP ``status``) ``times`` times."""

    service: str
    action: str
    code: str
    status: int = 400
    message: str = "injected by the test's fault proxy"
    times: int | None = None


Judge = Callable[[str, str, dict[str, list[str]]], "Fault | None"]


def _request_id(headers: Any, body: bytes) -> tuple[str, str, bool]:
    auth = headers.get("Authorization", "")
    match = _SCOPE_RE.search(auth)
    service = match.group(1) if match else ""
    target = headers.get("X-Amz-Target")
    if target:
        return service, target.rsplit(".", 1)[-1], True
    form = urllib.parse.parse_qs(body.decode(errors="replace"))
    return service, (form.get("Action") or [""])[0], False


def _error_body(fault: Fault, service: str, json_protocol: bool) -> tuple[bytes, str]:
    if json_protocol:
        text = f'{{"__type":"{fault.code}","message":"{fault.message}"}}'
        return text.encode(), "application/x-amz-json-1.0"
    if service == "ec2":
        text = (
            f"<Response><Errors><Error><Code>{fault.code}</Code><Message>{fault.message}"
            "</Message></Error></Errors><RequestID>fault</RequestID></Response>"
        )
    else:
        text = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{fault.code}</Code>"
            f"<Message>{fault.message}</Message></Error><RequestId>fault</RequestId>"
            "</ErrorResponse>"
        )
    return text.encode(), "text/xml"


class FaultProxy:
    """The proxy on 127.0.0.1 (random port); ``calls`` counts requests per (service, action)."""

    def __init__(
        self, upstream: str, faults: list[Fault] | None = None, judge: Judge | None = None
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = list(faults or [])
        self.judge = judge
        self.calls: dict[tuple[str, str], int] = {}
        self.injected: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _match(self, service: str, action: str) -> Fault | None:
        with self._lock:
            self.calls[(service, action)] = self.calls.get((service, action), 0) + 1
            for fault in self.faults:
                if (fault.service, fault.action) != (service, action):
                    continue
                if fault.times is not None:
                    if fault.times <= 0:
                        continue
                    fault.times -= 1
                key = (service, action)
                self.injected[key] = self.injected.get(key, 0) + 1
                return fault
        return None

    def _forward(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any, bytes]:
        request = urllib.request.Request(
            self.upstream + path,
            data=body if method != "GET" else None,
            method=method,
            headers={k: v for k, v in headers.items() if k.lower() != "host"},
        )
        try:
            with self._opener.open(request, timeout=30) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                service, action, json_protocol = _request_id(self.headers, body)
                fault = proxy._match(service, action)
                if fault is None and proxy.judge is not None and not json_protocol:
                    form = urllib.parse.parse_qs(body.decode(errors="replace"))
                    fault = proxy.judge(service, action, form)
                if fault is not None:
                    payload, ctype = _error_body(fault, service, json_protocol)
                    status, headers = fault.status, {"Content-Type": ctype}
                else:
                    status, upstream, payload = proxy._forward(
                        self.command, self.path, self.headers, body
                    )
                    headers = {
                        k: v
                        for k, v in upstream.items()
                        if k.lower() not in ("content-length", "transfer-encoding", "connection")
                    }
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return Handler
