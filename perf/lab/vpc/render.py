"""nftables rulesets of the VPC router (source/destination check) and of the internet
gateway (1:1 Elastic IP translation), rendered from a :class:`~perf.lab.vpc.model.VpcState`.

Each is one table, replaced atomically with ``nft -f`` when its text changes. The
internet gateway translates statelessly, like AWS's (VPC User Guide, "Internet
gateways"): no conntrack, so a moved association applies to the next packet, flows
included. An outbound packet whose private source has no public address matches no map
entry and falls to the chain's drop policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from perf.lab.vpc.topology import IGW_INET_IF, IGW_VPC_IF

ROUTER_TABLE = "cv_vpc"
IGW_TABLE = "cv_igw"
TRANSLATED = "0x5eed"  # mark of inbound packets whose public destination was translated


def _set(items: Iterable[str]) -> str:
    return "{ " + ", ".join(sorted(items)) + " }"


def _map(pairs: Mapping[str, str]) -> str:
    return ", ".join(f"{k} : {v}" for k, v in sorted(pairs.items()))


def _replace(family: str, name: str, body: list[str]) -> str:
    head = [
        f"table {family} {name} {{}}",
        f"delete table {family} {name}",
        f"table {family} {name} {{",
    ]
    return "\n".join([*head, *body, "}"]) + "\n"


def router_nft(checked: Mapping[str, frozenset[str]]) -> str:
    """Drop what an ENI with the source/destination check on may not send or receive."""
    rules = []
    for link, ips in sorted(checked.items()):
        for direction, field in (("iifname", "saddr"), ("oifname", "daddr")):
            match = f"ip {field} != {_set(ips)} " if ips else ""
            rules.append(
                f'        {direction} "{link}" {match}counter drop comment "src/dst check"'
            )
    return _replace(
        "ip",
        ROUTER_TABLE,
        [
            "    chain forward {",
            "        type filter hook forward priority filter; policy accept;",
            *rules,
            "    }",
        ],
    )


def igw_nft(nat: Mapping[str, str]) -> str:
    """Stateless 1:1 translation public <-> private for every current association."""
    to_private = {public: private for public, private in nat.items()}
    to_public = {private: public for public, private in nat.items()}
    body = []
    for name, pairs in (("to_private", to_private), ("to_public", to_public)):
        body.append(f"    map {name} {{")
        body.append("        type ipv4_addr : ipv4_addr;")
        if pairs:
            body.append(f"        elements = {{ {_map(pairs)} }}")
        body.append("    }")
    body += [
        "    chain prerouting {",
        "        type filter hook prerouting priority raw; policy accept;",
        "        notrack",
        f'        iifname "{IGW_INET_IF}" ip daddr set ip daddr map @to_private '
        f"meta mark set {TRANSLATED}",
        "    }",
        "    chain forward {",
        "        type filter hook forward priority filter; policy drop;",
        f'        iifname "{IGW_VPC_IF}" oifname "{IGW_INET_IF}" '
        "ip saddr set ip saddr map @to_public counter accept",
        f'        iifname "{IGW_INET_IF}" oifname "{IGW_VPC_IF}" '
        f"meta mark {TRANSLATED} counter accept",
        '        counter comment "no public address"',
        "    }",
        "    chain output {",
        "        type filter hook output priority raw; policy accept;",
        "        notrack",
        "    }",
    ]
    return _replace("ip", IGW_TABLE, body)
