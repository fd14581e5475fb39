"""The tier policy shared by every conftest: what each privileged tier needs, and what
to do when it is missing (skip, but fail under ``CI=true``)."""

from __future__ import annotations

import os
import shutil

import pytest

PRIVILEGED = {"bpf", "netns", "e2e"}
TOOLS = {
    "netns": ("ip", "nft", "curl", "iperf3", "ethtool", "conntrack", "conntrackd", "squid"),
    "e2e": ("ip", "nft", "curl", "debootstrap", "systemd-nspawn", "nsenter"),
    "bpf": (),
}


def missing_prerequisite(tier: str) -> str | None:
    if os.geteuid() != 0:
        return f"the {tier} tier needs root"
    for tool in TOOLS.get(tier, ()):
        if shutil.which(tool) is None:
            return f"the {tier} tier needs {tool} (run `make deps`)"
    if tier == "bpf":
        try:
            import bcc  # noqa: F401
        except ImportError:
            return "the bpf tier needs Debian's python3-bpfcc in the venv (run `make deps`)"
        if not os.path.ismount("/sys/fs/bpf"):
            return "the bpf tier needs bpffs mounted on /sys/fs/bpf (run `make deps`)"
    return None


def require(tier: str) -> None:
    """Skip (or, under ``CI=true``, fail) when ``tier``'s prerequisite is missing."""
    reason = missing_prerequisite(tier)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"prerequisite missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)
