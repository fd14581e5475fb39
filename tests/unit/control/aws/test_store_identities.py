"""The SSM config store through the session factory: read as the instance, write as the
operational role; an inert role stops writes (named) and never reads."""

from __future__ import annotations

import uuid

import pytest

from control.aws import OperationalRole, SessionFactory
from control.config import parse_document
from control.store import SsmStore, StoreError, open_store
from tests.fakes.awsfault import Fault, FaultProxy
from tests.unit.control.aws.conftest import REGION, base_session
from tests.unit.control.conftest import minimal

ROLE = OperationalRole("gw-cross-account-role1", "ext-1", account_id="123456789012")


def test_reads_with_the_instance_role_writes_with_the_operational_role(
    moto_endpoint: str,
) -> None:
    with FaultProxy(moto_endpoint) as proxy:
        factory = SessionFactory(
            REGION, moto_endpoint, endpoints={"sts": proxy.url}, base=base_session(), role=ROLE
        )
        store = open_store(f"ssm:/test/{uuid.uuid4().hex[:8]}/config", aws=factory)
        assert isinstance(store, SsmStore)
        assert store.head() == 0
        assert ("sts", "AssumeRole") not in proxy.calls  # reading needs no operational role
        version = store.put(parse_document(minimal()), 0, "test")
        assert proxy.calls[("sts", "AssumeRole")] == 1
        assert store.latest()[0] == version == 1
        writer = factory.client("ssm")
        assert store.client is factory.instance_client("ssm") and store.client is not writer


def test_inert_role_stops_writes_with_the_reason_and_reads_go_on(moto_endpoint: str) -> None:
    prefix = f"/test/{uuid.uuid4().hex[:8]}/config"
    with FaultProxy(moto_endpoint, [Fault("sts", "AssumeRole", "AccessDenied", 403)]) as proxy:
        factory = SessionFactory(
            REGION, moto_endpoint, endpoints={"sts": proxy.url}, base=base_session(), role=ROLE
        )
        store = open_store(f"ssm:{prefix}", aws=factory)
        with pytest.raises(StoreError, match=rf"ssm writes under {prefix} are inert: cannot"):
            store.put(parse_document(minimal()), 0, "test")
        assert store.head() == 0
    unconfigured = open_store(
        f"ssm:{prefix}", aws=SessionFactory(REGION, moto_endpoint, base=base_session())
    )
    with pytest.raises(StoreError, match=r"inert: no operational role configured"):
        unconfigured.put(parse_document(minimal()), 0, "test")
