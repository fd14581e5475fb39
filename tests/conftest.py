"""Shared test fixtures and the tier policy.

Tiers are pytest markers: ``unit`` (no privileges), ``bpf`` (BPF_PROG_TEST_RUN), ``netns``
(real traffic in the lab), ``e2e`` (the whole appliance). A privileged tier skips only
when its prerequisite is really absent, and never under ``CI=true``: there a missing
prerequisite fails the test with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tiers import PRIVILEGED, require


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
        require(tier)


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
