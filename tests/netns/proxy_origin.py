"""An origin server for the proxy tests, run in the lab's internet namespace:
``python -m tests.netns.proxy_origin ADDRESS PORT...``. ``/cacheable/<n>`` answers ``n``
bytes a cache may keep for ten minutes (RFC 9111 ``max-age``); ``/bytes/<n>`` answers
``n`` bytes no cache may store (``no-store``)."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler

from perf.lab.echo import _HttpServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        kind, _, size = self.path.strip("/").partition("/")
        if kind not in ("cacheable", "bytes") or not size.isdigit():
            self.send_error(404)
            return
        body = b"x" * min(int(size), 1 << 26)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header(
            "Cache-Control", "public, max-age=600" if kind == "cacheable" else "no-store"
        )
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def main() -> None:
    address, *ports = sys.argv[1:]
    servers = [_HttpServer((address, int(p)), _Handler) for p in ports]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
