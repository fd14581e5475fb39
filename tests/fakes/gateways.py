"""Gateways without instances, for the live-resize executor's unit tests.

Each instance of the group is a real :class:`~control.aws.lease.Lease` on the test's
DynamoDB table (stepped whenever its state is read, so the hand-over runs the product's
lease protocol), and its "agent state" is what the real agent reports, reduced to what
a resize reads: the lease's status, the role, the takeover (of which only the Elastic
IP moves) and the conntrack caches.
Replacement goes through the product's :class:`~control.aws.resize.AsgReplacer` against
moto's Auto Scaling group (which launches from the group's launch template); the new
instance's agent joins the lease unless the test says it never becomes healthy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from control.aws.lease import Lease, LeaseSettings
from control.aws.resize import AsgReplacer

FAST = {
    "renew_interval_s": 0.05,
    "duration_s": 30.0,  # the leases step only when read: no expiry between reads
    "skew_margin_s": 0.05,
    "health_failures": 1,
    "health_successes": 1,
}


class FakeGateways:
    """Agents of the AZ ``az`` on lease table ``table`` (see the module doc)."""

    def __init__(
        self, dynamodb: Any, autoscaling: Any, ec2: Any, table: str, az: str, allocation: str
    ) -> None:
        self.dynamodb = dynamodb
        self.ec2 = ec2
        self.allocation = allocation
        self.table = table
        self.az = az
        self.leases: dict[str, Lease] = {}
        self.replacer = AsgReplacer(lambda: autoscaling, timeout_s=5.0, poll_s=0.05)
        self.replaced: list[str] = []
        self.replacements_healthy = True
        self.frozen: set[str] = set()  # agents that stopped stepping (hung)
        self.after_replace: Callable[[str], None] | None = None  # what happens next
        self.leader_flows = 100
        self.synced_flows = 100

    def join(self, instance_id: str) -> Lease:
        settings = LeaseSettings(self.table, self.az, instance_id, **FAST)  # type: ignore[arg-type]
        lease = Lease(self.dynamodb, settings, lambda: True)
        self.leases[instance_id] = lease
        return lease

    def step(self) -> None:
        for instance_id, lease in list(self.leases.items()):
            if instance_id not in self.frozen:
                lease.step()

    # -- Replacer ----------------------------------------------------------------------

    def replace(self, group: str, instance_id: str) -> str:
        self.replaced.append(instance_id)
        self.leases.pop(instance_id, None)  # terminated: its agent is gone
        new = self.replacer.replace(group, instance_id)
        if self.replacements_healthy:
            self.join(new)
        if self.after_replace is not None:
            self.after_replace(new)
        return new

    # -- GatewayStatus -----------------------------------------------------------------

    def state(self, instance_id: str) -> dict[str, Any] | None:
        self.step()
        lease = self.leases.get(instance_id)
        if lease is None:
            return None
        status = lease.status()
        leading = status["state"] == "leader"
        if leading:  # the takeover's Elastic IP step (the address moves with the leader)
            self.ec2.associate_address(
                AllocationId=self.allocation, InstanceId=instance_id, AllowReassociation=True
            )
        return {
            "aws": {
                "instance_id": instance_id,
                "role": "leader" if leading else "standby",
                "lease": status,
                "takeover": {"ok": True, "token": status["token"]} if leading else {},
            },
            "conntrack_sync": {
                "enabled": True,
                "running": True,
                "internal_cache_entries": self.leader_flows if leading else 0,
                "external_cache_entries": 0 if leading else self.synced_flows,
            },
        }
