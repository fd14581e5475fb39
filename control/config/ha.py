"""The ``ha`` section of the config document: what a leader and its standby share.

``ha.conntrack_sync`` drives conntrackd (conntrack-tools, FTFW mode over unicast UDP):
the leader replicates its conntrack table to the standby, so a takeover keeps the
established, translated flows (same public address, same ports). The document is one
for every instance, so it names the pair, not "me" and "the other": each instance
takes the member address it finds on ``interface`` as its own and sends to the other
one. conntrackd's unicast UDP transport sends to one destination (more ``UDP``
sections are fail-over links, not fan-out), hence exactly two members.
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
        max_length=2,
        description="the sync-link IPv4 addresses of the two instances; each uses the one "
        "on its interface and sends to the other",
    )
    port: Port = Field(
        default=CONNTRACKD_PORT, description="UDP port of the sync messages, on both members"
    )

    @model_validator(mode="after")
    def _pair(self) -> ConntrackSync:
        if not self.enabled:
            return self
        addresses = [str(a) for a in self.members]
        if len(self.members) != 2:
            raise fail(
                ("members",),
                addresses,
                "expected exactly 2 IPv4 addresses (this instance's and its peer's sync "
                "address) when enabled",
            )
        if self.members[0] == self.members[1]:
            raise fail(("members", 1), addresses[1], "expected an address other than members[0]")
        return self


class Ha(StrictModel):
    """High availability of one AZ's gateway: a leader and its standby."""

    conntrack_sync: ConntrackSync = ConntrackSync()
