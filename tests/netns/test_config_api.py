"""The config API in the lab: writes through the API converge the gateway; bad documents
change nothing; port forwards let the internet reach a workload."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.api import token_entry
from control.cli_config import Api
from perf.lab import TOPOLOGY, ns_exec
from tests.netns.helpers import agent, document, sh

GW = TOPOLOGY.gateway("a")


@pytest.fixture
def api(lab: Any, tmp_path: Path) -> Iterator[Api]:
    """cs-gw-a's agent with its config API, reached over the management link."""
    token, entry = token_entry("test-admin", "admin")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps([entry]))
    with agent(GW.netns, document(), "--api-tokens", str(tokens), "--poll", "1"):
        client = Api(f"http://{GW.mgmt_ip}:8080", token)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.call("GET", "/healthz")[0] == 200:
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "config API did not answer"
            time.sleep(0.1)
        yield client


def put(api: Api, doc: dict[str, Any]) -> tuple[int, Any]:
    status, body, _ = api.call("GET", "/v1/config")
    assert status == 200
    status, body, _ = api.call(
        "PUT", "/v1/config", {"document": doc}, {"If-Match": str(body["version"])}
    )
    return status, body


def udp_echo_ok(address: str) -> bool:
    script = (
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.3);"
        f"s.sendto(b'p',('{address}',7))\ntry: print(s.recv(9)==b'p')\nexcept OSError: print(False)"
    )
    return sh(GW.workload_netns, "python3", "-c", script).stdout.strip() == "True"


def test_deny_rule_through_the_api_drops_within_one_second(api: Api, lab_status: Any) -> None:
    echo = lab_status["services"]["udp_echo"]["address"]
    assert udp_echo_ok(echo)
    deny = {"action": "deny", "dst": f"{echo}/32", "proto": "udp", "ports": [7, 7]}
    written = time.monotonic()
    status, body = put(api, document(rules={"entries": [deny]}))
    assert status == 200, body
    while udp_echo_ok(echo):
        assert time.monotonic() - written < 1.0, "deny rule not in force after 1 s"
    # in the XDP deny list and in the nftables table
    assert "198.51.100.10" in sh(GW.netns, "nft", "list", "table", "inet", "spectra").stdout
    status, st, _ = api.call("GET", "/v1/status")
    assert st["instances"][GW.netns]["in_sync"]
    # nftables applies before XDP: the probes above may all have met the nft rule, so
    # send one now that every step is in force, for the XDP counter.
    assert not udp_echo_ok(echo)
    status, st, _ = api.call("GET", "/v1/status")
    assert st["instances"][GW.netns]["counters"]["xdp_drop_deny_packets"] >= 1


def test_invalid_document_gets_422_and_changes_nothing(api: Api) -> None:
    before = api.call("GET", "/v1/config")[1]
    ruleset = sh(GW.netns, "nft", "list", "table", "inet", "spectra").stdout
    bad = document(nat={"port_range": [2000, 70000]}, unknown_section={})
    status, body = put(api, bad)
    assert status == 422
    paths = {d["path"] for d in body["error"]["details"]["errors"]}
    assert {"nat.port_range[1]", "unknown_section"} <= paths
    time.sleep(1.5)
    assert api.call("GET", "/v1/config")[1] == before
    assert sh(GW.netns, "nft", "list", "table", "inet", "spectra").stdout == ruleset


def test_port_forward_lets_the_internet_reach_a_workload(api: Api) -> None:
    status, body = put(
        api,
        document(port_forwards=[{"proto": "tcp", "port": 8022, "to_address": GW.workload_ip,
                                 "to_port": 22}]),
    )  # fmt: skip
    assert status == 200, body
    server = subprocess.Popen(
        ns_exec(GW.workload_netns, "python3", "-c",
                "import socket;s=socket.socket();s.bind(('0.0.0.0',22));s.listen();"
                "c,a=s.accept();c.sendall(('hello '+a[0]).encode());c.close()"),
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.5)  # the agent polls the store once a second
        out = sh(TOPOLOGY.inet_netns, "python3", "-c",
                 f"import socket;c=socket.create_connection(('{GW.outside_ip}',8022),timeout=3);"
                 "print(c.recv(100).decode())")  # fmt: skip
        assert out.stdout.strip() == f"hello {GW.inet_cidr.split('/')[0]}", out.stderr
    finally:
        server.kill()
        server.wait()


def test_deny_ip_set_from_a_file_drops_through_both_paths(
    api: Api, lab_status: Any, tmp_path: Path
) -> None:
    """A 100,000-CIDR blocklist file holding the echo server: the API validates it, nft
    holds it as one interval set, XDP drops with the rule's counter; removing the rule
    lets the echo through again."""
    from tests.fixtures.blocklist import blocklist
    from xdp.prefixes import prefix_str

    echo = lab_status["services"]["udp_echo"]["address"]
    assert udp_echo_ok(echo)
    feed = tmp_path / "feed.txt"
    feed.write_text("\n".join([*map(prefix_str, blocklist(99_999)), f"{echo}/32"]) + "\n")
    sets = {"feed": {"file": str(feed)}}
    deny = {"action": "deny", "dst_set": "feed", "comment": "threat feed"}
    written = time.monotonic()
    status, body = put(api, document(rules={"ip_sets": sets, "entries": [deny]}))
    assert status == 200, body
    while udp_echo_ok(echo):
        assert time.monotonic() - written < 5.0, "IP set deny not in force after 5 s"
    listing = sh(GW.netns, "nft", "-j", "list", "set", "inet", "spectra", "ipset_feed").stdout
    elements = json.loads(listing)["nftables"][1]["set"]["elem"]
    assert len(elements) == 100_000
    deadline = time.monotonic() + 10  # nft first; the XDP step follows
    while not (st := api.call("GET", "/v1/status")[1])["instances"][GW.netns]["in_sync"]:
        assert time.monotonic() < deadline, st["instances"][GW.netns]
        time.sleep(0.2)
    assert not udp_echo_ok(echo)
    status, st, _ = api.call("GET", "/v1/status")
    assert st["instances"][GW.netns]["counters"]["xdp_drop_deny_packets"] >= 1

    status, body = put(api, document(rules={"ip_sets": sets, "entries": []}))
    assert status == 200, body
    deadline = time.monotonic() + 5
    while not udp_echo_ok(echo):
        assert time.monotonic() < deadline, "echo still dropped after the rule went"
