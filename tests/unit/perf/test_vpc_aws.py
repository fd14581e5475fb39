"""The VPC lab's AWS side without root: the moto launcher's AWS behaviours, the seeded
resources and the IMDSv2 fake, over loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from control.aws.lease import KEY as LEASE_KEY
from perf.lab.imds import Ec2Instance, FakeImds
from perf.lab.vpc.seed import clients, describe, seed
from perf.lab.vpc.topology import LAUNCH_HOOK, LEASE_TABLE, TOPOLOGY

pytestmark = pytest.mark.timeout(90)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    port = _free_port()
    log = tmp_path_factory.mktemp("motod") / "lifecycle.jsonl"
    argv = [
        sys.executable,
        "-m",
        "perf.lab.vpc.motod",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifecycle-log",
        str(log),
    ]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    assert time.monotonic() < deadline, "motod did not listen"
                    time.sleep(0.1)
            url = f"http://127.0.0.1:{port}"
            seed(clients(url))
            yield url, log
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture(scope="module")
def lab_aws(endpoint: tuple[str, Path]) -> dict[str, Any]:
    return describe(clients(endpoint[0]), endpoint[0])


def test_seed_builds_the_topology(endpoint: tuple[str, Path], lab_aws: dict[str, Any]) -> None:
    c = clients(endpoint[0])
    seed(c)  # a second seed changes nothing
    assert describe(c, endpoint[0]) == lab_aws
    assert set(lab_aws["instances"]) == {i.name for i in TOPOLOGY.instances}
    a = lab_aws["azs"]["a"]
    a1 = lab_aws["instances"]["a1"]
    assert a["nat_ip_eni"] == a1["enis"]["eth0"]["eni_id"]
    assert a["eip_private_ip"] == a["nat_ip"] == "10.0.101.100"
    assert a["private_default_route_eni"] == a1["enis"]["eth1"]["eni_id"]
    assert a1["enis"]["eth0"]["source_dest_check"] is True
    table = c["dynamodb"].describe_table(TableName=LEASE_TABLE)["Table"]
    assert table["KeySchema"] == [{"AttributeName": LEASE_KEY, "KeyType": "HASH"}]
    groups = c["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=[a["asg"]])
    members = {i["InstanceId"] for i in groups["AutoScalingGroups"][0]["Instances"]}
    assert members == {lab_aws["instances"][n]["instance_id"] for n in ("a1", "a2")}


def test_reassignment_moves_the_address_and_the_eip_follows(
    endpoint: tuple[str, Path], lab_aws: dict[str, Any]
) -> None:
    ec2 = clients(endpoint[0])["ec2"]
    a = lab_aws["azs"]["a"]
    a1_out = lab_aws["instances"]["a1"]["enis"]["eth0"]["eni_id"]
    a2_out = lab_aws["instances"]["a2"]["enis"]["eth0"]["eni_id"]
    with pytest.raises(ClientError, match="InvalidParameterValue"):
        ec2.assign_private_ip_addresses(NetworkInterfaceId=a2_out, PrivateIpAddresses=[a["nat_ip"]])
    try:
        ec2.assign_private_ip_addresses(
            NetworkInterfaceId=a2_out, PrivateIpAddresses=[a["nat_ip"]], AllowReassignment=True
        )
        holders = [
            e["NetworkInterfaceId"]
            for e in ec2.describe_network_interfaces()["NetworkInterfaces"]
            if any(p["PrivateIpAddress"] == a["nat_ip"] for p in e["PrivateIpAddresses"])
        ]
        assert holders == [a2_out]
        eip = ec2.describe_addresses(AllocationIds=[a["eip_allocation_id"]])["Addresses"][0]
        assert (eip["PrivateIpAddress"], eip["NetworkInterfaceId"]) == (a["nat_ip"], a2_out)
    finally:
        ec2.assign_private_ip_addresses(
            NetworkInterfaceId=a1_out, PrivateIpAddresses=[a["nat_ip"]], AllowReassignment=True
        )


def test_lifecycle_actions_are_recorded(
    endpoint: tuple[str, Path], lab_aws: dict[str, Any]
) -> None:
    url, log = endpoint
    asg = clients(url)["autoscaling"]
    a1 = lab_aws["instances"]["a1"]["instance_id"]
    group = lab_aws["azs"]["a"]["asg"]
    asg.record_lifecycle_action_heartbeat(
        AutoScalingGroupName=group, LifecycleHookName=LAUNCH_HOOK, InstanceId=a1
    )
    asg.complete_lifecycle_action(
        AutoScalingGroupName=group,
        LifecycleHookName=LAUNCH_HOOK,
        InstanceId=a1,
        LifecycleActionResult="CONTINUE",
    )
    with pytest.raises(ClientError, match="ValidationError"):
        asg.complete_lifecycle_action(
            AutoScalingGroupName=group,
            LifecycleHookName="no-such-hook",
            InstanceId=a1,
            LifecycleActionResult="CONTINUE",
        )
    lines = log.read_text().splitlines()
    assert [line.split('"action": "')[1].split('"')[0] for line in lines] == [
        "RecordLifecycleActionHeartbeat",
        "CompleteLifecycleAction",
    ]
    assert '"result": "CONTINUE"' in lines[1] and a1 in lines[1]


def _get(url: str, headers: dict[str, str], method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), ""


def test_imds_v2_needs_a_token_and_reads_moto_live(
    endpoint: tuple[str, Path], lab_aws: dict[str, Any]
) -> None:
    """The lab's metadata service as perf.lab.vpc.imds builds it, over loopback."""
    a1 = lab_aws["instances"]["a1"]
    c = clients(endpoint[0])
    source = Ec2Instance(c["ec2"], a1["instance_id"], c["autoscaling"], iam_role="lab-role")
    with FakeImds(source, lifecycle=source.lifecycle_state) as fake:
        base = f"{fake.url}/latest"
        assert _get(f"{base}/meta-data/instance-id", {})[0] == 401
        assert (
            _get(f"{base}/meta-data/instance-id", {"X-aws-ec2-metadata-token": "forged"})[0] == 401
        )
        assert _get(f"{base}/api/token", {}, "PUT")[0] == 400  # TTL header is required
        assert (
            _get(
                f"{base}/api/token",
                {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "1.2.3.4"},
                "PUT",
            )[0]
            == 403
        )
        status, token = _get(
            f"{base}/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}, "PUT"
        )
        assert status == 200 and token
        h = {"X-aws-ec2-metadata-token": token}
        assert _get(f"{base}/meta-data/instance-id", h) == (200, a1["instance_id"])
        assert _get(f"{base}/meta-data/placement/availability-zone", h) == (200, "us-east-1a")
        assert _get(f"{base}/meta-data/placement/region", h) == (200, "us-east-1")
        mac = a1["enis"]["eth0"]["mac"]
        assert _get(f"{base}/meta-data/mac", h) == (200, mac)
        macs = f"{base}/meta-data/network/interfaces/macs"
        assert _get(f"{macs}/{mac}/interface-id", h) == (200, a1["enis"]["eth0"]["eni_id"])
        assert _get(f"{macs}/{mac}/local-ipv4s", h) == (200, "10.0.101.11\n10.0.101.100")
        assert _get(f"{macs}/{mac}/device-number", h) == (200, "0")
        assert _get(f"{macs}/{mac}/subnet-ipv4-cidr-block", h) == (200, "10.0.101.0/24")
        assert _get(f"{macs}/{mac}/vpc-ipv4-cidr-block", h) == (200, "10.0.0.0/16")
        lifecycle = f"{base}/meta-data/autoscaling/target-lifecycle-state"
        assert _get(lifecycle, h) == (200, "InService")
        role = f"{base}/meta-data/iam/security-credentials"
        assert _get(role, h) == (200, "lab-role")
        status, creds = _get(f"{role}/lab-role", h)
        assert status == 200 and json.loads(creds)["Code"] == "Success"
        status, doc = _get(f"{base}/dynamic/instance-identity/document", h)
        identity = json.loads(doc)
        assert status == 200, doc
        assert (identity["instanceId"], identity["region"]) == (a1["instance_id"], "us-east-1")
        assert identity["availabilityZone"] == "us-east-1a"
        assert _get(f"{base}/meta-data/no-such-key", h)[0] == 404


def test_expired_tokens_are_refused() -> None:
    now = [0.0]
    with FakeImds(monotonic=lambda: now[0]) as fake:
        put = {"X-aws-ec2-metadata-token-ttl-seconds": "10"}
        status, token = _get(f"{fake.url}/latest/api/token", put, "PUT")
        assert status == 200
        path = f"{fake.url}/latest/meta-data/instance-id"
        assert _get(path, {"X-aws-ec2-metadata-token": token}) == (200, "i-0123456789abcdef0")
        now[0] = 10.5
        assert _get(path, {"X-aws-ec2-metadata-token": token})[0] == 401
        assert fake.counts["refused"] == 1
