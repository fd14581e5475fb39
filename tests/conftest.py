"""Shared test fixtures and the tier policy.

Tiers are pytest markers: ``unit`` (no privileges), ``bpf`` (BPF_PROG_TEST_RUN), ``netns``
(real traffic in the lab), ``e2e`` (the whole appliance). A privileged tier skips only
when its prerequisite is really absent, and never under ``CI=true``: there a missing
prerequisite fails the test with the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PRIVILEGED = {"bpf", "netns", "e2e"}
TOOLS = {
    "netns": ("ip", "nft", "curl", "iperf3", "ethtool", "conntrack"),
    "e2e": ("ip", "nft", "curl"),
    "bpf": (),
}


def _missing_prerequisite(tier: str) -> str | None:
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tiers = {m.name for m in item.iter_markers()} & (PRIVILEGED | {"unit"})
        if not tiers:
            # Every test belongs to a tier; its directory under tests/ names it.
            parts = item.path.relative_to(Path(__file__).parent).parts
            if parts and parts[0] in PRIVILEGED | {"unit"}:
                item.add_marker(getattr(pytest.mark, parts[0]))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for tier in PRIVILEGED & {m.name for m in item.iter_markers()}:
        reason = _missing_prerequisite(tier)
        if reason is None:
            continue
        if os.environ.get("CI") == "true":
            pytest.fail(f"prerequisite missing under CI=true: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def lab_session() -> Iterator[Any]:
    """The lab, brought up once for the session and removed at the end."""
    from perf.lab import Lab, exclusive

    lab = Lab()
    with exclusive():
        lab.up()
        yield lab
        lab.down()


@pytest.fixture
def lab(lab_session: Any) -> Any:
    """The lab, up (idempotent re-up in case a lifecycle test took it down)."""
    lab_session.up()
    return lab_session


@pytest.fixture
def lab_status(lab: Any) -> dict[str, Any]:
    status: dict[str, Any] = lab.status()
    return status
