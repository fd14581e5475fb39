"""The pinned Suricata install (``deploy/suricata/install-suricata.sh``, run by
``make deps`` and the AMI recipe): the apt pin it writes lets only Suricata and libhtp2
come from bookworm-backports, and on this host (installed by ``make deps``) apt's own
policy shows exactly that: Suricata 7 from backports, a package that backports carries at
a newer version (curl) still from bookworm."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = Path(__file__).resolve().parents[3] / "deploy" / "suricata" / "install-suricata.sh"


def stanzas(text: str) -> list[dict[str, str]]:
    """apt_preferences(5): blank-line separated stanzas of ``Field: value``."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields = dict(
            line.split(":", 1)
            for line in block.splitlines()
            if line.strip() and not line.startswith("#")
        )
        out.append({k.strip(): v.strip() for k, v in fields.items()})
    return out


def script_pin() -> str:
    m = re.search(r"preferences\.d/spectra-suricata <<PIN\n(.*?)\nPIN\n", SCRIPT.read_text(), re.S)
    assert m, "install-suricata.sh writes no apt pin"
    return m.group(1)


def test_pin_lets_only_suricata_and_libhtp2_from_backports() -> None:
    pins = stanzas(script_pin())
    backports = [p for p in pins if p["Pin"] == "release n=bookworm-backports"]
    assert len(backports) == len(pins) == 2
    allowed = [p for p in backports if int(p["Pin-Priority"]) > 0]
    assert [set(p["Package"].split()) for p in allowed] == [{"suricata", "libhtp2"}]
    assert int(allowed[0]["Pin-Priority"]) < 1000  # never a downgrade of anything
    rest = [p for p in backports if p["Package"] == "*"]
    assert [int(p["Pin-Priority"]) for p in rest] == [-1]


def policy(package: str) -> tuple[str, str, dict[str, int]]:
    """(installed, candidate, {version: priority}) from ``apt-cache policy``."""
    text = subprocess.run(
        ["apt-cache", "policy", package], capture_output=True, text=True, check=True
    ).stdout
    installed = re.search(r"Installed: (\S+)", text)
    candidate = re.search(r"Candidate: (\S+)", text)
    assert installed and candidate, text
    versions = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^ (?:\*\*\*| {3}) (\S+) (-?\d+)$", text, re.M)
    }
    return installed.group(1), candidate.group(1), versions


def test_host_policy_proves_the_pin() -> None:
    installed, candidate, versions = policy("suricata")
    assert installed == candidate and re.match(r"1:7\.0\.\d+", installed), (installed, versions)
    assert versions[installed] == 500
    _, htp_candidate, _ = policy("libhtp2")
    assert "bpo12" in htp_candidate
    _, curl_candidate, curl_versions = policy("curl")
    newer = [v for v, prio in curl_versions.items() if "bpo" in v]
    assert newer and all(curl_versions[v] == -1 for v in newer), curl_versions
    assert "bpo" not in curl_candidate
