"""TLS termination by HAProxy driven by the document through the agent of ``cs-gw-a``,
used from the workload ``cs-ws-a``: HTTPS to the lab's HTTP server, HSTS, the HTTP ->
HTTPS redirect keeping host and path, TLS 1.2+ with no CBC cipher, backend state in the
status, 20 reloads under load with no failed request, a renewed certificate file served
without a restart."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.agent import read_state
from perf.lab import TOPOLOGY
from perf.lab.topology import INET_SERVICE_IP
from tests.certs import make_cert
from tests.netns.helpers import agent, document, sh, wait_for
from tests.netns.test_proxy_squid import applied, write

GW = TOPOLOGY.gateway("a")
NAME = "gw.test"


@pytest.fixture
def certs(lab: Any) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="spectra-tls-"))
    make_cert(directory, NAME)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def tls_doc(certs: Path, weight: int = 1) -> dict[str, Any]:
    listener = {"name": "web", "port": 443, "certificate_file": str(certs / f"{NAME}.crt"),
                "private_key_file": str(certs / f"{NAME}.key"), "hsts": True,
                "redirect_http_port": 80,
                "backends": [{"address": INET_SERVICE_IP, "port": 80, "weight": weight}],
                }  # fmt: skip
    return document(interfaces={"data_plane": "kernel"}, tls={"enabled": True,
                    "listeners": [listener]})  # fmt: skip


def curl(certs: Path, url: str, *opts: str) -> dict[str, Any]:
    out = sh(GW.workload_netns, "curl", "-s", "-o", "/dev/null", "-m", "10", "--cacert",
             str(certs / f"{NAME}.crt"), "--resolve", f"{NAME}:443:{GW.inside_ip}",
             "--resolve", f"{NAME}:80:{GW.inside_ip}", *opts, "-w", "%{json}", url)  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout) if out.stdout else {}
    result["rc"] = out.returncode
    return result


def pem_serial(text: str) -> str:
    """The serial of the first certificate in ``text`` (``serial=...``)."""
    out = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=text,
                         capture_output=True, text=True, check=False)  # fmt: skip
    return out.stdout.strip()


def served_serial(certs: Path) -> str:
    hello = sh(GW.workload_netns, "openssl", "s_client", "-connect", f"{GW.inside_ip}:443",
               "-servername", NAME)  # fmt: skip
    return pem_serial(hello.stdout)


def handshake(*opts: str) -> bool:
    proc = sh(GW.workload_netns, "openssl", "s_client", "-connect", f"{GW.inside_ip}:443",
              "-servername", NAME, *opts)  # fmt: skip
    return proc.returncode == 0 and "Cipher is (NONE)" not in proc.stdout


def test_tls_termination(certs: Path) -> None:
    with agent(GW.netns, tls_doc(certs)):
        try:
            run_tls_checks(certs)
        finally:  # the product stops the HAProxy it started (it outlives the agent)
            applied(write(document(interfaces={"data_plane": "kernel"})))


def run_tls_checks(certs: Path) -> None:
    st = wait_for(lambda: (read_state(GW.netns) or {}).get("tls", {}).get("healthy") and
                  read_state(GW.netns), 15, "haproxy healthy with its backend up")  # fmt: skip
    assert st["tls"]["version"].startswith("2.6")
    assert st["tls"]["servers"] == {"web/s0": {"status": "UP", "check": "L4OK"}}
    assert "tls" not in st["not_yet_rendered"]

    ok = curl(certs, f"https://{NAME}/")
    assert ok["rc"] == 0 and ok["http_code"] == 200 and ok["scheme"].upper() == "HTTPS"
    headers = sh(GW.workload_netns, "curl", "-s", "-o", "/dev/null", "-D", "-", "--cacert",
                 str(certs / f"{NAME}.crt"), "--resolve", f"{NAME}:443:{GW.inside_ip}",
                 f"https://{NAME}/").stdout.lower()  # fmt: skip
    assert "strict-transport-security: max-age=31536000" in headers

    moved = curl(certs, f"http://{NAME}/some/path?q=1")
    assert moved["http_code"] == 301
    assert moved["redirect_url"] == f"https://{NAME}/some/path?q=1"

    assert handshake("-tls1_3") and handshake("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert not handshake("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA")  # CBC: refused
    assert not handshake("-tls1_1")

    # 20 reloads under load: no failed request, the same master
    master = st["tls"]["pid"]
    results: list[dict[str, Any]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            results.append(curl(certs, f"https://{NAME}/bytes/20000"))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        for n in range(20):
            applied(write(tls_doc(certs, weight=2 + n)))
    finally:
        stop.set()
        for w in workers:
            w.join()
    st = read_state(GW.netns) or {}
    assert st["tls"]["pid"] == master and st["tls"]["reloads"] >= 20
    failed = [r for r in results if r["rc"] != 0 or r["http_code"] != 200]
    assert len(results) > 40 and not failed, failed[:3]

    # a renewed certificate file is served without a restart
    # (the old worker may still accept for a moment after the reload: the new serial is
    # served when three handshakes in a row show it)
    make_cert(certs, NAME)
    renewed = pem_serial((certs / f"{NAME}.crt").read_text())
    wait_for(lambda: all(served_serial(certs) == renewed for _ in range(3)), 20,
             "the renewed certificate served")  # fmt: skip
    answer = curl(certs, f"https://{NAME}/")
    assert answer["rc"] == 0 and answer["http_code"] == 200, answer
    assert (read_state(GW.netns) or {})["tls"]["pid"] == master
