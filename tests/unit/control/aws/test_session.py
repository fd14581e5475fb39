"""The session factory: operational role, no fallback, inert reasons, retries, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control.aws import InstanceRoleRefused, OperationalRole, RoleInert, SessionFactory
from tests.fakes.awsfault import Fault, FaultProxy
from tests.unit.control.aws.conftest import REGION, base_session

ROLE = OperationalRole("gw-cross-account-role1", "ext-id-123", account_id="123456789012")


def operational(endpoint: str, **kwargs: object) -> SessionFactory:
    return SessionFactory(REGION, endpoint, base=base_session(), role=ROLE, **kwargs)  # type: ignore[arg-type]


def test_missing_role_is_inert_with_the_reason(factory: SessionFactory) -> None:
    with pytest.raises(RoleInert, match=r"no operational role configured \(aws.operational_role\)"):
        factory.client("ssm")
    state = factory.status()["operational_role"]
    assert state == {
        "state": "inert",
        "role": None,
        "reason": "no operational role configured (aws.operational_role)",
    }
    with pytest.raises(RoleInert):
        factory.credentials()


def test_assumes_the_role_and_caches_clients(moto_endpoint: str) -> None:
    factory = operational(moto_endpoint)
    assert factory.status()["operational_role"]["state"] == "not assumed yet"
    sns = factory.client("sns")
    assert factory.client("sns") is sns
    arn = sns.create_topic(Name="cache-test")["TopicArn"]
    assert arn.endswith(":cache-test")
    state = factory.status()["operational_role"]
    assert state["state"] == "assumed"
    assert state["arn"] == "arn:aws:iam::123456789012:role/gw-cross-account-role1"
    # the operational client signs with the assumed (moto-issued) keys, not the base ones
    key = factory.credentials().get_frozen_credentials().access_key
    assert key != "testing"
    assert sns._request_signer._credentials.get_frozen_credentials().access_key == key


def test_refreshes_credentials_before_expiry(moto_endpoint: str) -> None:
    """botocore's advisory refresh (15 min before expiry) calls AssumeRole again."""
    now = [datetime.now(UTC)]
    with FaultProxy(moto_endpoint) as proxy:
        factory = SessionFactory(
            REGION,
            moto_endpoint,
            endpoints={"sts": proxy.url},
            base=base_session(),
            role=ROLE,
            now=lambda: now[0],
        )
        first = factory.credentials().get_frozen_credentials()
        assert proxy.calls[("sts", "AssumeRole")] == 1
        factory.client("ssm").describe_parameters()
        assert proxy.calls[("sts", "AssumeRole")] == 1  # still fresh: no new AssumeRole
        now[0] += timedelta(minutes=50)  # moto's credentials last an hour
        second = factory.credentials().get_frozen_credentials()
        assert proxy.calls[("sts", "AssumeRole")] == 2
        assert second.access_key != first.access_key


def test_wrong_external_id_is_inert_and_named(moto_endpoint: str) -> None:
    """moto does not enforce trust policies or external IDs, so STS's refusal is played by
    the fault proxy (tests/fakes/awsfault.py) answering AssumeRole with AccessDenied."""
    ticks = [0.0]
    with FaultProxy(moto_endpoint, [Fault("sts", "AssumeRole", "AccessDenied", 403)]) as proxy:
        factory = SessionFactory(
            REGION,
            moto_endpoint,
            endpoints={"sts": proxy.url},
            base=base_session(),
            role=OperationalRole("gw-cross-account-role1", "wrong", organization_id="o-abcdefghij"),
            retry_s=30.0,
            monotonic=lambda: ticks[0],
        )
        with pytest.raises(RoleInert) as refused:
            factory.client("sns")
        reason = refused.value.reason
        assert "cannot assume arn:aws:iam::123456789012:role/gw-cross-account-role1" in reason
        assert "AccessDenied" in reason
        assert "aws:PrincipalOrgID o-abcdefghij" in reason
        status = factory.status()
        assert status["operational_role"]["state"] == "inert"
        assert status["operational_role"]["reason"] == reason
        assert "AccessDenied" in status["errors"]["instance sts.AssumeRole"]
        # no hammering: within retry_s the refusal is answered from memory
        with pytest.raises(RoleInert):
            factory.client("ssm")
        assert proxy.calls[("sts", "AssumeRole")] == 1
        ticks[0] = 31.0
        with pytest.raises(RoleInert):
            factory.client("ssm")
        assert proxy.calls[("sts", "AssumeRole")] == 2
        # never the instance role: nothing but AssumeRole and the account lookup went out
        assert set(proxy.calls) == {("sts", "AssumeRole"), ("sts", "GetCallerIdentity")}


def test_instance_role_only_for_its_own_business(factory: SessionFactory) -> None:
    with pytest.raises(InstanceRoleRefused, match="'bedrock-runtime'"):
        factory.instance_client("bedrock-runtime")
    ec2 = factory.instance_client("ec2")
    ec2.describe_availability_zones()  # allowed: Describe*
    with pytest.raises(
        InstanceRoleRefused, match=r"ec2\.ReplaceRoute is not done with the instance"
    ):
        ec2.replace_route(
            RouteTableId="rtb-1", DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId="eni-1"
        )
    with pytest.raises(InstanceRoleRefused, match=r"ssm\.PutParameter"):
        factory.instance_client("ssm").put_parameter(Name="/x", Value="y", Type="String")


def test_access_denied_on_one_call_is_named_and_the_rest_works(moto_endpoint: str) -> None:
    """moto does not enforce IAM here: the denial comes from the fault proxy."""
    with FaultProxy(
        moto_endpoint, [Fault("ssm", "PutParameter", "AccessDeniedException")]
    ) as proxy:
        factory = operational(proxy.url)
        ssm = factory.client("ssm")
        with pytest.raises(Exception, match="AccessDeniedException"):
            ssm.put_parameter(Name="/denied/x", Value="y", Type="String")
        errors = factory.status()["errors"]
        assert errors["operational ssm.PutParameter"].startswith("AccessDeniedException")
        ssm.describe_parameters()
        factory.client("sns").list_topics()
        assert factory.status()["operational_role"]["state"] == "assumed"
        assert list(factory.status()["errors"]) == ["operational ssm.PutParameter"]


def test_throttling_is_retried_with_backoff(moto_endpoint: str) -> None:
    """Standard retry mode: a throttled call is retried and succeeds."""
    with FaultProxy(
        moto_endpoint, [Fault("ssm", "DescribeParameters", "ThrottlingException", times=3)]
    ) as proxy:
        factory = SessionFactory(REGION, proxy.url, base=base_session(), max_attempts=5)
        factory.instance_client("ssm").get_parameters(Names=["/nothing"])
        op = operational(proxy.url, max_attempts=5)
        op.client("ssm").describe_parameters()
        assert proxy.injected[("ssm", "DescribeParameters")] == 3
        assert proxy.calls[("ssm", "DescribeParameters")] == 4
        assert op.status()["errors"] == {}


def test_throttling_beyond_the_attempts_is_named(moto_endpoint: str) -> None:
    with FaultProxy(moto_endpoint, [Fault("dynamodb", "GetItem", "ThrottlingException")]) as proxy:
        factory = SessionFactory(REGION, proxy.url, base=base_session(), max_attempts=3)
        with pytest.raises(Exception, match="ThrottlingException"):
            factory.instance_client("dynamodb").get_item(
                TableName="t", Key={"lease_key": {"S": "a"}}
            )
        assert proxy.calls[("dynamodb", "GetItem")] == 3
        assert factory.status()["errors"]["instance dynamodb.GetItem"].startswith(
            "ThrottlingException"
        )


def test_configure_switches_roles(moto_endpoint: str, factory: SessionFactory) -> None:
    factory.configure(ROLE)
    assert factory.client("sns") is factory.client("sns")
    factory.configure(None)
    with pytest.raises(RoleInert):
        factory.client("sns")
