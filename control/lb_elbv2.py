"""Backends of an L4 virtual service read from an ELBv2 target group.

A listener naming ``target_group_arn`` takes the group's *healthy* targets as backends
(``DescribeTargetHealth``, Elastic Load Balancing API reference). A target being
deregistered is ``draining`` (or, once gone, absent): it leaves the set at the next
sync, so it gets no new connection, while the connections it has keep their conntrack
mapping. Targets of type ``ip`` are used as they are; ``instance`` targets are resolved
to the instance's primary private address (``DescribeInstances``); Lambda targets have
no address and are skipped.

The clients come from the product's session factory (:mod:`control.aws.session`): the
agent hands the step a callable, so nothing here knows about roles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from control.lb import Target

Client = Callable[[str], Any]  # service name -> boto3 client (SessionFactory.client)


def healthy_ids(response: dict[str, Any]) -> list[tuple[str, int]]:
    """``(id, port)`` of the targets a DescribeTargetHealth answer calls ``healthy``."""
    found = []
    for desc in response.get("TargetHealthDescriptions", []):
        if desc.get("TargetHealth", {}).get("State") == "healthy":
            target = desc["Target"]
            found.append((str(target["Id"]), int(target["Port"])))
    return found


def _instance_addresses(ec2: Any, ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=ids):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                if instance.get("PrivateIpAddress"):
                    out[instance["InstanceId"]] = instance["PrivateIpAddress"]
    return out


def read_targets(client: Client, arn: str) -> tuple[Target, ...]:
    """The healthy targets of target group ``arn`` (sorted: a stable map)."""
    pairs = healthy_ids(client("elbv2").describe_target_health(TargetGroupArn=arn))
    instances = sorted({i for i, _ in pairs if i.startswith("i-")})
    addresses = _instance_addresses(client("ec2"), instances) if instances else {}
    targets = set()
    for target_id, port in pairs:
        address = addresses.get(target_id) if target_id.startswith("i-") else target_id
        if address is not None and not target_id.startswith("arn:"):
            targets.add(Target(address, port))
    return tuple(sorted(targets, key=lambda t: (t.address, t.port)))
