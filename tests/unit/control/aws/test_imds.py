"""The IMDSv2 client against the fake metadata service (perf/lab/imds.py)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from control.aws import Imds, ImdsError
from perf.lab.imds import FakeEni, FakeImds, FakeInstance, instance_from_ec2
from tests.unit.control.aws.conftest import admin_client

INSTANCE = FakeInstance(
    instance_id="i-0aaaabbbbccccdddd",
    region="eu-west-1",
    availability_zone="eu-west-1b",
    account_id="210987654321",
    interfaces=[
        FakeEni(
            "0e:00:00:00:00:02", "eni-inside", 1, ["10.0.1.10"], "subnet-in", "vpc-1", "10.0.1.0/24"
        ),
        FakeEni("0e:00:00:00:00:01", "eni-outside", 0, ["10.0.0.10", "10.0.0.99"]),
    ],
)


def no_sleep(_: float) -> None:
    pass


def test_identity_and_interfaces() -> None:
    with FakeImds(INSTANCE) as fake:
        ident = Imds(fake.url).identity()
    assert (ident.instance_id, ident.region, ident.availability_zone, ident.account_id) == (
        "i-0aaaabbbbccccdddd",
        "eu-west-1",
        "eu-west-1b",
        "210987654321",
    )
    assert [i.interface_id for i in ident.interfaces] == ["eni-outside", "eni-inside"]
    assert ident.primary.private_ips == ("10.0.0.10", "10.0.0.99")
    assert ident.primary.primary_ip == "10.0.0.10"
    assert ident.interfaces[1].subnet_cidr == "10.0.1.0/24"
    assert fake.counts["token"] == 1  # one token for every read
    assert fake.counts["refused"] == 0


def test_a_request_without_a_token_is_refused() -> None:
    with FakeImds(INSTANCE) as fake:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{fake.url}/latest/meta-data/instance-id", timeout=2)
        assert refused.value.code == 401
        refused.value.close()
        bad_ttl = urllib.request.Request(
            f"{fake.url}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "99999"},
        )
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(bad_ttl, timeout=2)
        assert bad.value.code == 400
        bad.value.close()


def test_token_ttl_and_renewal_after_401() -> None:
    now = [0.0]
    with FakeImds(INSTANCE, monotonic=lambda: now[0]) as fake:
        imds = Imds(fake.url, token_ttl_s=60, monotonic=lambda: now[0])
        imds.get("meta-data/instance-id")
        now[0] = 30.0
        imds.get("meta-data/instance-id")
        assert fake.counts["token"] == 1
        now[0] = 61.0  # past the client's reuse window (TTL - 10%): a new token first
        imds.get("meta-data/instance-id")
        assert fake.counts["token"] == 2
        fake.revoke_tokens()  # refused once, a new token, then answered
        assert imds.get("meta-data/instance-id") == INSTANCE.instance_id
        assert fake.counts["token"] == 3 and fake.counts["refused"] == 1
    with pytest.raises(ValueError, match=r"token_ttl_s=0: expected 1\.\.21600"):
        Imds(token_ttl_s=0)


def test_transient_errors_are_retried() -> None:
    with FakeImds(INSTANCE) as fake:
        fake.fail_next(2)
        imds = Imds(fake.url, attempts=3, sleep=no_sleep)
        assert imds.get("meta-data/placement/availability-zone") == "eu-west-1b"
        assert fake.counts["failed"] == 2


def test_unreachable_is_a_clear_error_after_bounded_retries() -> None:
    with FakeImds(INSTANCE) as fake:
        url = fake.url
    pauses: list[float] = []
    imds = Imds(url, attempts=3, timeout_s=0.5, sleep=pauses.append)
    with pytest.raises(ImdsError, match=r"IMDS http://127\.0\.0\.1:\d+ token: .* after 3 attempts"):
        imds.identity()
    assert pauses == [0.1, 0.2]
    assert "after 3 attempts" in str(imds.status()["last_error"])


def test_hop_limit_too_low_is_explained() -> None:
    with FakeImds(INSTANCE, hop_limit=1, hops=2) as fake:
        imds = Imds(fake.url, attempts=2, timeout_s=0.3, sleep=no_sleep)
        with pytest.raises(ImdsError, match="HttpPutResponseHopLimit"):
            imds.get("meta-data/instance-id")
        assert fake.counts["dropped"] == 2


def test_unknown_path_is_named() -> None:
    with FakeImds(INSTANCE) as fake, pytest.raises(ImdsError, match="meta-data/nothing: HTTP 404"):
        Imds(fake.url).get("meta-data/nothing")


def test_user_data_is_read_and_none_when_absent() -> None:
    with FakeImds(INSTANCE) as fake:
        assert Imds(fake.url).user_data() is None  # EC2 answers 404: no user data
    with_data = FakeInstance(user_data='{"mode": "standalone"}')
    with FakeImds(with_data) as fake:
        imds = Imds(fake.url)
        assert imds.user_data() == '{"mode": "standalone"}'
        fake.revoke_tokens()
        assert imds.user_data() == '{"mode": "standalone"}'  # a new token after a 401
    assert fake.counts["token"] == 2


def test_fake_serves_a_moto_instance(moto_endpoint: str) -> None:
    """The lab's use: the fake describes an instance of moto's EC2, read live."""
    ec2 = admin_client(moto_endpoint, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="eu-west-1a")
    subnet_id = subnet["Subnet"]["SubnetId"]
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=subnet_id)
    instance_id = instance["Instances"][0]["InstanceId"]
    with FakeImds(lambda: instance_from_ec2(ec2, instance_id)) as fake:
        imds = Imds(fake.url)
        before = imds.identity()
        assert before.instance_id == instance_id and before.availability_zone == "eu-west-1a"
        assert before.primary.subnet_cidr == "10.9.1.0/24"
        eni = before.primary.interface_id
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.9.1.200"])
        assert imds.interface(before.mac).private_ips[1:] == ("10.9.1.200",)


def test_lifecycle_state_only_in_a_group_and_a_failing_source_is_a_500() -> None:
    path = "meta-data/autoscaling/target-lifecycle-state"
    with FakeImds(INSTANCE) as fake, pytest.raises(ImdsError, match=f"{path}: HTTP 404"):
        Imds(fake.url).get(path)
    leaving = FakeInstance(lifecycle_state="Terminated")
    with FakeImds(leaving) as fake:
        assert Imds(fake.url).get(path) == "Terminated"

    def gone() -> FakeInstance:
        raise LookupError("InvalidInstanceID.NotFound")

    with FakeImds(gone) as fake:
        with pytest.raises(ImdsError, match="HTTP 500"):
            Imds(fake.url, attempts=2, sleep=no_sleep).get("meta-data/instance-id")
        assert fake.counts["get"] == 2


def test_a_restarted_agent_reads_its_identity_from_the_cache(tmp_path: Path) -> None:
    """The first start keeps the identity; a restart checks only the instance id and
    uses the rest from the cache; another instance's or a broken cache reads IMDS."""
    import dataclasses
    import json
    import threading

    from control.aws.ha import HaRunner

    cache = tmp_path / "identity.json"

    def identify() -> Any:
        with FakeImds(INSTANCE) as fake:
            return HaRunner(Imds(fake.url), lambda: True, lambda: None, cache=cache).identify(
                threading.Event()
            )

    first = identify()
    assert json.loads(cache.read_text())["instance_id"] == first.instance_id
    marked = dataclasses.asdict(first) | {"account_id": "999999999999"}
    cache.write_text(json.dumps(marked))
    assert identify() == dataclasses.replace(first, account_id="999999999999")
    cache.write_text(json.dumps(marked | {"instance_id": "i-0another"}))
    assert identify() == first
    cache.write_text("{not json")
    assert identify() == first
