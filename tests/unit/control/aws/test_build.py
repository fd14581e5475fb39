"""From the document's aws section to the session factory, the lease and the notifier."""

from __future__ import annotations

import json

import pytest

from control.aws import (
    Aws,
    InstanceIdentity,
    Interface,
    LeaseEvent,
    MemoryNotifier,
    NullNotifier,
    SnsNotifier,
    build,
)
from control.aws.imds import Imds
from control.config import ConfigValidationError, parse_document
from control.config.aws import Aws as AwsSection
from perf.lab.imds import FakeImds, FakeInstance
from tests.fakes.awsfault import Fault, FaultProxy
from tests.unit.control.aws.conftest import FakeClock, admin_client, base_session


def section(**aws: object) -> AwsSection:
    doc = {"interfaces": {"inside": "a", "outside": "b"}, "aws": aws}
    return parse_document(doc).aws


def errors(**aws: object) -> dict[str, str]:
    with pytest.raises(ConfigValidationError) as bad:
        section(**aws)
    return {e["path"]: e["message"] for e in bad.value.errors}


def test_bad_aws_section_names_field_and_accepted_values() -> None:
    assert errors(region="mars") == {"aws.region": "expected an AWS region name like eu-west-1"}
    found = errors(
        operational_role={"name": "a b", "external_id": "x", "organization_id": "org"},
        lease={"renew_interval_s": 2, "duration_s": 3, "skew_margin_s": 3},
        notify={"sns_topic_arn": "arn:aws:sqs:eu-west-1:123456789012:q"},
        endpoint_url="localhost:5000",
    )
    assert found == {
        "aws.operational_role.name": "expected an IAM role name: 1-64 letters, digits and +=,.@_-",
        "aws.operational_role.external_id": (
            "expected an STS external ID: 2-1224 letters, digits and +=,.@:/_-"
        ),
        "aws.operational_role.organization_id": (
            "expected an AWS Organizations ID like o-a1b2c3d4e5"
        ),
        "aws.lease.duration_s": "expected at least 2 x renew_interval_s (4)",
        "aws.lease.skew_margin_s": "expected less than duration_s (3)",
        "aws.notify.sns_topic_arn": (
            "expected an SNS topic ARN like arn:aws:sns:eu-west-1:123456789012:name"
        ),
        "aws.endpoint_url": (
            "expected an http(s) URL like http://127.0.0.1:5000 (the lab's moto server)"
        ),
    }
    assert "aws.lease.fail_back" in errors(lease={"fail_back": "sometimes"})


def test_every_field_reaches_its_constructor(moto_endpoint: str) -> None:
    topic = admin_client(moto_endpoint, "sns").create_topic(Name="build-test")["TopicArn"]
    cfg = section(
        region="eu-west-1",
        endpoint_url=moto_endpoint,
        operational_role={
            "name": "gw-cross-account-role2",
            "external_id": "ext-42",
            "organization_id": "o-abcdefghij",
        },
        lease={
            "table": "gw-lease",
            "renew_interval_s": 0.5,
            "duration_s": 3,
            "skew_margin_s": 0.5,
            "fail_back": True,
            "health_failures": 4,
            "health_successes": 5,
            "restart_grace_s": 7,
        },
        notify={"sns_topic_arn": topic},
    )
    instance = FakeInstance(
        instance_id="i-build", availability_zone="eu-west-1c", account_id="123456789012"
    )
    with FakeImds(instance) as fake:
        aws = build(cfg, Imds(fake.url), base=base_session())
    assert isinstance(aws, Aws)
    assert (aws.sessions.region, aws.sessions.endpoint_url) == ("eu-west-1", moto_endpoint)
    role = aws.sessions.role
    assert role is not None
    assert (role.name, role.external_id, role.organization_id, role.account_id) == (
        "gw-cross-account-role2",
        "ext-42",
        "o-abcdefghij",
        "123456789012",  # from the instance identity
    )
    settings = aws.lease_settings(preferred=True, address="10.0.1.5")
    assert settings == type(settings)(
        table="gw-lease",
        key="eu-west-1c",
        holder="i-build",
        renew_interval_s=0.5,
        duration_s=3,
        skew_margin_s=0.5,
        fail_back=True,
        preferred=True,
        health_failures=4,
        health_successes=5,
        address="10.0.1.5",
        restart_grace_s=7,
    )
    assert isinstance(aws.notifier, SnsNotifier) and aws.notifier.topic_arn == topic
    assert aws.status()["instance"] == {
        "id": "i-build",
        "availability_zone": "eu-west-1c",
        "region": "eu-west-1",
    }


def test_takeover_is_published_to_sns(moto_endpoint: str) -> None:
    sns, sqs = admin_client(moto_endpoint, "sns"), admin_client(moto_endpoint, "sqs")
    topic = sns.create_topic(Name="takeovers")["TopicArn"]
    queue = sqs.create_queue(QueueName="takeovers")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn["Attributes"]["QueueArn"])
    admin_client(moto_endpoint, "dynamodb").create_table(
        TableName="sns-lease",
        KeySchema=[{"AttributeName": "lease_key", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "lease_key", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    cfg = section(
        endpoint_url=moto_endpoint,
        operational_role={"name": "gw-cross-account-role1", "external_id": "ext-1"},
        lease={"table": "sns-lease", "health_successes": 1},
        notify={"sns_topic_arn": topic},
    )
    aws = build(cfg, identity(), base=base_session())
    lease = aws.lease(lambda: True, clock=FakeClock())
    assert lease.step()
    assert isinstance(aws.notifier, SnsNotifier)
    aws.notifier.flush()
    assert aws.notifier.status()["sent"] == 1
    body = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"][0]["Body"]
    event = json.loads(json.loads(body)["Message"])
    assert (event["kind"], event["holder"], event["token"]) == ("acquired", "i-sns", 1)
    assert lease.status()["notify"]["sent"] == 1


def test_notify_without_a_role_is_inert_and_the_lease_still_works(moto_endpoint: str) -> None:
    cfg = section(
        endpoint_url=moto_endpoint,
        notify={"sns_topic_arn": "arn:aws:sns:eu-west-1:123456789012:nothing"},
        lease={"table": "no-such-table"},
    )
    aws = build(cfg, identity(), base=base_session())
    assert isinstance(aws.notifier, SnsNotifier)
    aws.notifier.notify(event())
    aws.notifier.flush()
    status = aws.notifier.status()
    assert status["failed"] == 1
    assert status["last_error"] == "inert: no operational role configured (aws.operational_role)"
    assert aws.status()["sessions"]["operational_role"]["state"] == "inert"


def test_denied_publish_is_named(moto_endpoint: str) -> None:
    with FaultProxy(moto_endpoint, [Fault("sns", "Publish", "AuthorizationError", 403)]) as proxy:
        cfg = section(
            endpoint_url=proxy.url,
            operational_role={"name": "gw-cross-account-role1", "external_id": "ext-1"},
            notify={"sns_topic_arn": "arn:aws:sns:eu-west-1:123456789012:denied"},
        )
        aws = build(cfg, identity(), base=base_session())
        assert isinstance(aws.notifier, SnsNotifier)
        aws.notifier.notify(event())
        aws.notifier.flush()
    assert "Publish: AuthorizationError" in str(aws.notifier.status()["last_error"])


def test_defaults_and_no_metadata() -> None:
    with pytest.raises(ValueError, match=r"aws\.region: expected a region"):
        build(section(), None, base=base_session())
    aws = build(section(region="eu-west-1"), None, base=base_session())
    assert isinstance(aws.notifier, NullNotifier)
    assert aws.sessions.role is None
    with pytest.raises(Exception, match="needs the instance identity"):
        aws.lease(lambda: True)
    assert isinstance(MemoryNotifier().status(), dict)


def identity() -> InstanceIdentity:
    eni = Interface("0e:00:00:00:00:01", "eni-1", 0, ("10.0.0.10",), None, None, None)
    return InstanceIdentity("i-sns", "eu-west-1", "eu-west-1a", "123456789012", eni.mac, (eni,))


def event() -> LeaseEvent:
    return LeaseEvent("took_over", "eu-west-1a", "i-x", "i-y", 2, 0.0, "expired")


def test_operational_credentials_for_the_ai_gateway(moto_endpoint: str) -> None:
    """What control hands the AI gateway: the assumed role's keys, or the inert reason."""
    from control.aws import RoleInert, operational_credentials

    def no_imds() -> Imds:
        raise AssertionError("the section names the region: no metadata read")

    with FaultProxy(moto_endpoint) as proxy:
        cfg = section(
            region="eu-west-1",
            endpoint_url=proxy.url,
            operational_role={
                "name": "gw-cross-account-role1",
                "external_id": "ext-1",
                "account_id": "123456789012",
            },
        )
        source = operational_credentials(cfg, no_imds, base=base_session())
        assert proxy.calls == {}  # nothing until the first Bedrock request
        first = source().get_frozen_credentials()
        assert first.access_key != "testing"  # not the base (instance) credentials
        source()
        assert proxy.calls[("sts", "AssumeRole")] == 1
    inert = operational_credentials(section(region="eu-west-1"), no_imds, base=base_session())
    with pytest.raises(RoleInert, match="no operational role configured"):
        inert()
