"""A steady load through the forward proxy for the reconfigure test, run in a
workload namespace: ``python -m tests.netns.proxy_load PROXY URL USER:PASSWORD
CLIENTS STOP_FILE``. Each of ``CLIENTS`` threads sends GETs for ``URL`` through the
proxy at ``PROXY`` (host:port), one new connection per request (so every request
needs Squid's listening socket), until ``STOP_FILE`` exists. Prints one JSON object:
the count of each outcome (``"200"``, another status, or the exception's class) and
the first failures with their time, so a test can say what failed and when.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    proxy, url, user, clients, stop_file = sys.argv[1:]
    host, _, port = proxy.rpartition(":")
    expected = int(url.rsplit("/", 1)[1])
    auth = {"Proxy-Authorization": "Basic " + base64.b64encode(user.encode()).decode()}
    outcomes: collections.Counter[str] = collections.Counter()
    failures: list[tuple[float, str]] = []
    lock = threading.Lock()
    stop = Path(stop_file)

    def one() -> str:
        conn = http.client.HTTPConnection(host, int(port), timeout=20)
        try:
            conn.request("GET", url, headers=auth)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            return type(exc).__name__
        finally:
            conn.close()
        if response.status == 200 and len(body) != expected:
            return "short body"
        return str(response.status)

    def client() -> None:
        while not stop.exists():
            outcome = one()
            with lock:
                outcomes[outcome] += 1
                if outcome != "200" and len(failures) < 50:
                    failures.append((time.time(), outcome))

    threads = [threading.Thread(target=client) for _ in range(int(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"outcomes": outcomes, "failures": failures}))


if __name__ == "__main__":
    main()
