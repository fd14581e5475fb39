"""The ``ha`` section of the config document: what a leader and its standby share.

``ha.conntrack_sync`` drives conntrackd (conntrack-tools, FTFW mode over unicast UDP):
the leader replicates its conntrack table to the standby, so a takeover keeps the
established, translated flows (same public address, same ports). The document is one
for every instance, so it names every instance's sync address, not "me" and "the
other": each instance takes the member address it finds on ``interface`` as its own and
sends to the one other member in that subnet (the AZ's other instance). conntrackd's
unicast UDP transport sends to one destination (more ``UDP`` sections are fail-over
links, not fan-out), hence pairs: one standby per AZ.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from pydantic import Field, model_validator

from control.config.issues import fail
from control.config.types import IfName, Port, StrictModel

CONNTRACKD_PORT = 3780


class ConntrackSync(StrictModel):
    """conntrackd FTFW state replication between the leader and its standby."""

    enabled: bool = False
    interface: IfName | None = Field(
        default=None,
        description="the sync link (a dedicated one, or the private subnet's); "
        "default: interfaces.inside",
    )
    members: list[IPv4Address] = Field(
        default_factory=list,
        max_length=64,
        description="the sync-link IPv4 addresses of the instances, two per AZ; each "
        "instance uses the one on its interface and sends to the other member in the same "
        "subnet (an instance with no member address on its interface is not synced)",
    )
    port: Port = Field(
        default=CONNTRACKD_PORT, description="UDP port of the sync messages, on both members"
    )

    @model_validator(mode="after")
    def _pair(self) -> ConntrackSync:
        if not self.enabled:
            return self
        addresses = [str(a) for a in self.members]
        if len(self.members) < 2:
            raise fail(
                ("members",),
                addresses,
                "expected at least 2 IPv4 addresses (the sync addresses of an AZ's two "
                "instances) when enabled",
            )
        for i, address in enumerate(addresses):
            if address in addresses[:i]:
                first = addresses.index(address)
                raise fail(
                    ("members", i), address, f"expected an address other than members[{first}]"
                )
        return self


class Ha(StrictModel):
    """High availability of one AZ's gateway: a leader and its standby."""

    conntrack_sync: ConntrackSync = ConntrackSync()
