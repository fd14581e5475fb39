"""Fixtures of the AWS tests: a base session against the shared moto server, clocks,
lease tables.

The moto server is ``moto_endpoint`` of the control-plane conftest (one per session);
every client is a real boto3 client over HTTP.  The base session holds static test
credentials: it stands for the instance role.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from control.aws import SessionFactory
from control.aws.lease import create_table

REGION = "eu-west-1"


def base_session() -> boto3.Session:
    """The instance role's stand-in: static credentials moto accepts."""
    return boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )


def admin_client(endpoint: str, service: str) -> Any:
    """A client outside the product (the test's own hands: create tables, topics)."""
    return base_session().client(service, endpoint_url=endpoint)  # type: ignore[call-overload]


class FakeClock:
    """Wall and monotonic clocks that move only when told; ``skew`` offsets the wall."""

    def __init__(self, start: float = 1_800_000_000.0, skew: float = 0.0) -> None:
        self.now = start
        self.skew = skew
        self.mono = 100.0

    def time(self) -> float:
        return self.now + self.skew

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


class SkewedClock:
    """Another machine's clocks: the same time as ``base`` plus ``skew`` on the wall."""

    def __init__(self, base: FakeClock, skew: float) -> None:
        self.base = base
        self.skew = skew

    def time(self) -> float:
        return self.base.time() + self.skew

    def monotonic(self) -> float:
        return self.base.monotonic()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def factory(moto_endpoint: str) -> SessionFactory:
    """A session factory with no operational role (instance-role clients only)."""
    return SessionFactory(REGION, moto_endpoint, base=base_session())


@pytest.fixture
def lease_table(moto_endpoint: str) -> Iterator[str]:
    name = f"lease-{uuid.uuid4().hex[:10]}"
    client = admin_client(moto_endpoint, "dynamodb")
    create_table(client, name)
    yield name
    client.delete_table(TableName=name)
