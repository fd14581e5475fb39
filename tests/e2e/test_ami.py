"""The AMI recipe end to end: deploy/ami/build-rootfs.sh builds a Debian root filesystem
(debootstrap from Debian's packages, install.sh inside it), every unit passes
``systemd-analyze verify``, and the image boots with systemd as PID 1
(``systemd-nspawn --boot``) on a VPC subnet attached to the lab's internet, with a fake
IMDS: first boot writes the one-arm NAT document and shows the admin token on the
console, the agent converges, and a workload that routes 0.0.0.0/0 to the instance
reaches the internet translated (the world is described in :mod:`tests.e2e.amilab`).

The base system is cached in ``.state/ami`` (a first run downloads and installs it, a
few minutes; later runs reuse it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perf.lab import INET_SERVICE_IP
from tests.e2e.amilab import (
    GW_IF,
    GW_IP,
    REPO,
    ROUTER_IP,
    UPLINK_IP,
    VPC_NS,
    WS_NS,
    Container,
    run,
    segment_down,
    segment_up,
    start_imds,
)

UNITS = ("spectra-firstboot.service", "spectra-agent.service", "spectra-ai-gateway.service")
WORK = Path("/var/tmp/spectra-ami-e2e")
USER_DATA = {"name": "e2e", "mode": "standalone"}
TOKEN_RE = re.compile(r"admin token \(shown once\) \*\*\*\r?\n(spk_\S+)")


def build(rootfs: Path) -> None:
    env = dict(os.environ, SPECTRA_BUILD_PYTHON=sys.executable)
    proc = subprocess.run(
        [str(REPO / "deploy/ami/build-rootfs.sh"), str(rootfs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, f"build-rootfs.sh failed:\n{proc.stdout}\n{proc.stderr}"


def in_image(rootfs: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command in the image (not booted); its stdout and stderr both reach stdout
    (nspawn's console)."""
    return subprocess.run(
        [
            *("systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(rootfs)),
            *("--setenv=SYSTEMD_COLORS=0", *argv),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def rootfs() -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    target = WORK / "rootfs"
    build(target)
    return target


@pytest.mark.timeout(900)
def test_every_unit_passes_systemd_analyze_verify(rootfs: Path) -> None:
    units = [f"/etc/systemd/system/{u}" for u in UNITS]
    proc = in_image(rootfs, "systemd-analyze", "verify", *units)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    # the check can fail: a unit with an unknown directive and a missing binary
    bad = rootfs / "etc/systemd/system/spectra-bad.service"
    bad.write_text("[Service]\nExecStart=/opt/spectra/venv/bin/nothing\nCapabilityBoundSet=\n")
    try:
        proc = in_image(
            rootfs, "systemd-analyze", "verify", "/etc/systemd/system/spectra-bad.service"
        )
    finally:
        bad.unlink()
    assert proc.returncode != 0
    assert "Unknown key 'CapabilityBoundSet'" in proc.stdout
    assert "nothing is not executable" in proc.stdout


@pytest.fixture
def booted(rootfs: Path, lab: Any, tmp_path: Path) -> Iterator[tuple[Container, Path]]:
    # no DHCP server in the lab: a static address for ens5 (the image asks DHCP)
    network = tmp_path / "10-e2e.network"
    network.write_text(
        f"[Match]\nName={GW_IF}\n\n[Network]\nAddress={GW_IP}/24\nGateway={ROUTER_IP}\n"
        "IPForward=yes\nLinkLocalAddressing=no\n"
    )
    box: Container | None = None
    imds: subprocess.Popen[bytes] | None = None
    try:
        segment_up()
        imds = start_imds(json.dumps(USER_DATA), tmp_path)
        box = Container.boot(rootfs, tmp_path / "console.log", network)
        yield box, rootfs
    finally:
        if box is not None:
            box.stop()
        if imds is not None:
            imds.terminate()
            imds.wait(timeout=10)
            if imds.stdout is not None:
                imds.stdout.close()
        segment_down()


@pytest.mark.timeout(240)
def test_the_image_boots_into_a_working_one_arm_nat(booted: tuple[Container, Path]) -> None:
    box, _ = booted
    started = time.monotonic()
    box.wait_active(UNITS[:2], timeout_s=90)

    # first boot: the token once on the console, the report without it
    token = _console_token(box, timeout_s=10)
    report = json.loads(box.exec("cat", "/var/lib/spectra/firstboot.json", check=True))
    assert (report["mode"], report["interface"], report["instance"]) == ("standalone", GW_IF, "e2e")
    assert report["document_written"] == 1 and report["data_plane"] == "kernel"
    assert report["token"]["console"] is True
    assert token not in json.dumps(report)
    # the AI gateway has no /etc/spectra/ai.json: skipped by its condition, not failed
    ai = box.exec("systemctl", "show", "-p", "ConditionResult", "-p", "ActiveState", UNITS[2])
    assert "ConditionResult=no" in ai and "ActiveState=inactive" in ai, ai

    # the agent converges; its API answers the console's token from the workload's subnet
    status = _wait_converged(box, token, timeout_s=60)
    assert status["data_plane"] == "kernel" and status["outside_addresses"] == [GW_IP]

    # a workload routing 0.0.0.0/0 to the instance reaches the internet translated: the
    # IGW only passes the instance's own address, so this answer proves the sNAT
    seen = run("curl", "-s", "-m", "5", f"http://{INET_SERVICE_IP}/", ns=WS_NS, check=False)
    assert seen and json.loads(seen)["client_ip"] == UPLINK_IP, _path_report(box)
    conntrack = box.exec("conntrack", "-L", "-p", "tcp", "--dport", "80")
    assert f"dst={INET_SERVICE_IP}" in conntrack and f"dst={GW_IP}" in conntrack, conntrack
    rejected = run("curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                   "-H", "Authorization: Bearer spk_wrong0000000000000000000000000000",
                   f"http://{GW_IP}:8080/v1/status", ns=WS_NS, check=False)  # fmt: skip
    assert rejected == "401"
    elapsed = time.monotonic() - started
    assert elapsed < 180, f"boot to translated traffic took {elapsed:.0f}s"


def _console_token(box: Container, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = TOKEN_RE.findall(box.log())
        if found:
            assert len(found) == 1, "the admin token was shown more than once"
            return str(found[0])
        time.sleep(0.2)
    raise AssertionError(
        f"no admin token on the console:\n{box.log()}\n{box.journal('spectra-firstboot.service')}"
    )


def _wait_converged(box: Container, token: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        last = run("curl", "-s", "-m", "2", "-H", f"Authorization: Bearer {token}",
                   f"http://{GW_IP}:8080/v1/status", ns=WS_NS, check=False)  # fmt: skip
        try:
            state: dict[str, Any] = json.loads(last)["instances"]["e2e"]
        except (ValueError, KeyError):
            state = {}
        if state.get("converged"):
            return state
        time.sleep(0.5)
    raise AssertionError(
        f"the agent did not converge within {timeout_s}s; last /v1/status: {last}\n"
        f"{box.journal('spectra-agent.service')}"
    )


def _path_report(box: Container) -> str:
    """What the packet path looked like: the gateway's and the router's state."""
    parts = [
        ("gateway nft", box.exec("nft", "list", "ruleset")),
        ("gateway addresses", box.exec("ip", "-br", "addr")),
        ("gateway routes", box.exec("ip", "route")),
        ("gateway forwarding", box.exec("sysctl", "net.ipv4.ip_forward")),
        ("gateway conntrack", box.exec("conntrack", "-L")),
        ("router nft", run("nft", "list", "ruleset", ns=VPC_NS, check=False)),
        ("router conntrack", run("conntrack", "-L", ns=VPC_NS, check=False)),
        ("workload routes", run("ip", "route", ns=WS_NS, check=False)),
    ]
    return "\n".join(f"--- {name}\n{text}" for name, text in parts)
