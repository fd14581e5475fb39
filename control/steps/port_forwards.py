"""The nftables lines of the document's ``port_forwards`` (destination NAT).

Each forward is a ``dnat`` in the ``prerouting_nat`` chain for traffic to the outside
addresses arriving on the outside interface. A port range (``port..port_end``) keeps
its ports when ``to_port`` is ``port`` (or unset): ``dnat ip to <address>`` leaves the
destination port alone; a range moved elsewhere maps each port through an nft map
(``dnat ip to <address> : tcp dport map { 8000 : 9000, ... }``), 1:1.

Hairpin NAT: an inside workload that connects to an outside address gets the same DNAT
(the rule on the inside interface), and the packet is marked (``SKB_MARK_HAIRPIN``) so
the postrouting chain masquerades it to the gateway's inside address; the target then
answers the gateway, which undoes both translations (without the SNAT the target would
answer the workload directly and the workload would drop a reply from an address it
never called). NAT chains see only a connection's first packet; conntrack applies the
translation to the rest.

``allow_from``: new connections to a forward from any other source are dropped in a
filter chain before the DNAT (``port_forward_sources``, prerouting at ``dstnat - 10``),
so they never reach the target, nor the gateway's own service on that port.
"""

from __future__ import annotations

from control.config.document import ConfigDocument
from control.config.network import PortForward
from nfq.marks import SKB_MARK_HAIRPIN


def _line(*parts: str) -> str:
    return "\t\t" + " ".join(p for p in parts if p)


def _match(fwd: PortForward, iif: str, addresses: str) -> str:
    ports = str(fwd.port) if fwd.last_port == fwd.port else f"{fwd.port}-{fwd.last_port}"
    return f"iifname {iif} ip daddr {{ {addresses} }} {fwd.proto} dport {ports}"


def _dnat(fwd: PortForward) -> str:
    """The DNAT statement: one port, a range kept, or a range mapped 1:1 elsewhere."""
    if fwd.last_port == fwd.port:
        return f"dnat ip to {fwd.to_address}:{fwd.target_port}"
    if not fwd.shifted:
        return f"dnat ip to {fwd.to_address}"
    pairs = ", ".join(
        f"{p} : {fwd.target_port + p - fwd.port}" for p in range(fwd.port, fwd.last_port + 1)
    )
    return f"dnat ip to {fwd.to_address} : {fwd.proto} dport map {{ {pairs} }}"


def prerouting_chain(doc: ConfigDocument, in_if: str, out_if: str, addresses: str) -> list[str]:
    """``prerouting_nat``: every forward from outside, and hairpinned from inside."""
    if not doc.port_forwards:
        return []
    hairpin = not doc.one_arm_nat  # one interface: the outside rule already covers it
    lines = [
        "\tchain prerouting_nat {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
    ]
    for i, fwd in enumerate(doc.port_forwards):
        lines.append(_line(_match(fwd, out_if, addresses), "counter", _dnat(fwd),
                           f'comment "port_forwards[{i}]"'))  # fmt: skip
        if hairpin:
            mark = f"meta mark set meta mark | {SKB_MARK_HAIRPIN:#x}"
            lines.append(_line(_match(fwd, in_if, addresses), "counter", mark, _dnat(fwd),
                               f'comment "port_forwards[{i}] hairpin"'))  # fmt: skip
    lines.append("\t}")
    return lines


def sources_chain(doc: ConfigDocument, in_if: str, out_if: str, addresses: str) -> list[str]:
    """``port_forward_sources``: new connections from outside ``allow_from`` dropped."""
    limited = [(i, f) for i, f in enumerate(doc.port_forwards) if f.allow_from]
    if not limited:
        return []
    ifaces = out_if if doc.one_arm_nat else _union(in_if, out_if)
    lines = [
        "\tchain port_forward_sources {",
        "\t\ttype filter hook prerouting priority dstnat - 10; policy accept;",
    ]
    for i, fwd in limited:
        allowed = ", ".join(str(n) for n in fwd.allow_from)
        lines.append(_line(_match(fwd, ifaces, addresses), "ct state new",
                           f"ip saddr != {{ {allowed} }} counter drop",
                           f'comment "port_forwards[{i}].allow_from"'))  # fmt: skip
    lines.append("\t}")
    return lines


def hairpin_snat(doc: ConfigDocument, in_if: str) -> list[str]:
    """The postrouting line that masquerades hairpinned connections."""
    if not doc.port_forwards or doc.one_arm_nat:
        return []
    mark = f"{SKB_MARK_HAIRPIN:#x}"
    return [_line(f"oifname {in_if} meta mark & {mark} == {mark}", "counter masquerade",
                  'comment "port forward hairpin"')]  # fmt: skip


def _union(*ifaces: str) -> str:
    """nft interface set of rendered names (each ``"x"`` or ``{ "x", "y" }``)."""
    names = [n.strip() for i in ifaces for n in i.strip("{} ").split(",")]
    return "{ " + ", ".join(dict.fromkeys(names)) + " }"
