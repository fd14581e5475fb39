"""The nftables step: the config document rendered into the product's whole table.

The ruleset lives in one table of its own (``inet spectra``, :mod:`control.nftables`
applies it in one transaction). The baseline holds the slow path's invariant: whatever
arrives on the inside, nothing leaves the outside interface with an untranslated private
source, a martian destination or a conntrack-INVALID state. A bare masquerade rule does
not give this (the kernel forwards INVALID packets untranslated), hence the INVALID drop
in the forward chain and the egress guard after source NAT. On top of it, what the
document asks for:

- deny rules, stateless, in the forward chain, each after its rate-limited NFLOG twin
  when ``logging.firewall_logs`` is on (the XDP step loads the same rules into
  the deny list, which drops before the kernel sees the packet); a rule naming an IP
  set (``rules.ip_sets``) matches an nft interval set ``ipset_<name>``;
- allow rules and the default action, for new connections inside -> outside;
- port forwards: ``dnat`` in a ``prerouting_nat`` chain, admitted by ``ct status dnat``
  (ranges, hairpin NAT for inside workloads, source allow-lists:
  :mod:`control.steps.port_forwards`; it admits the L4 load balancer's flows too:
  :mod:`control.steps.lb`);
- the NAT port range (``masquerade to :low-high``, or ``snat`` to explicit addresses);
- ``tls.appliance``: the config API's and AI gateway's plain ports reset from anywhere
  but loopback (HAProxy serves them over HTTPS);
- ``aws.health.forward_probes``: the forward probe's interface (:mod:`control.aws.probe`)
  is an inside interface, so the probe's flow takes the workloads' path;
- GWLB: traffic decapsulated on the GWLB interface is policed like the inside's, and its
  new flows get conntrack mark ``CT_MARK_GWLB`` (the XDP offloader offloads them only
  while the fast path can re-encapsulate them to the GWLB);
- a flow the XDP offloader parked (``CT_MARK_PARKED``: idle, taken off the fast path)
  has the bit cleared at its next packet: that mark change is the conntrack event that
  puts it back on the fast path.

``tick`` re-applies the last ruleset if someone removed the table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from ipaddress import IPv4Address

from control import nftables
from control.aws.probe import PROBE_IF
from control.config.document import ConfigDocument
from control.config.network import ANY, Match, Rule
from control.nftables import MARTIAN_DESTINATIONS, TABLE
from control.steps import port_forwards
from control.steps.base import Host, RenderError, StepBase, StepContext
from nfq.marks import CT_MARK_GWLB, CT_MARK_PARKED
from xdp.prefixes import prefix_str

# A flow the offloader parked (idle on the fast path, conntrack entry alive) is back:
# clearing the bit is a conntrack mark change, i.e. the UPDATE event that re-offloads it.
UNPARK_RULE = (
    f"ct mark & {CT_MARK_PARKED:#x} == {CT_MARK_PARKED:#x} "
    f"ct mark set ct mark & {0xFFFFFFFF & ~CT_MARK_PARKED:#x} "
    'comment "parked fast-path flow active again: its mark change re-offloads it"'
)

log = logging.getLogger("spectra.control")

CHECK_SECONDS = 1.0
# Where a one-arm NAT instance's workloads are (RFC 1918, RFC 6598 shared space)
PRIVATE_SOURCES = ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16")
SET_PREFIX = "ipset_"  # nft set of rules.ip_sets.<name>


class NftablesStep(StepBase):
    name = "nftables"

    def __init__(self, context: StepContext) -> None:
        super().__init__(context)
        self.applied: str | None = None
        self._next_check = time.monotonic()

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> str:
        return render_nftables(doc, host.addresses(doc.interfaces.outside), host.zone())

    def apply(self, part: str) -> None:
        nftables.apply_ruleset(part)
        self.applied = part

    def tick(self) -> dict[str, object]:
        """Re-apply the last ruleset if the table is gone (checked once a second)."""
        now = time.monotonic()
        if self.applied is None or now < self._next_check:
            return {}
        self._next_check = now + CHECK_SECONDS
        if not nftables.table_present():
            log.warning("nftables table %s disappeared; re-applying", TABLE)
            nftables.apply_ruleset(self.applied)
        return {}


def _ports(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def match_expr(match: Match) -> str:
    """nft match expression of a selector (empty string: matches everything)."""
    parts = []
    for side, field in (("saddr", "src"), ("daddr", "dst")):
        set_name = getattr(match, f"{field}_set", None)
        if set_name is not None:
            parts.append(f"ip {side} @{SET_PREFIX}{set_name}")
        elif getattr(match, field) != ANY:
            parts.append(f"ip {side} {getattr(match, field)}")
    if match.ports is not None:
        parts.append(f"{match.proto} dport {_ports(*match.ports)}")
    elif match.proto is not None:
        parts.append(f"meta l4proto {match.proto}")
    return " ".join(parts)


def _set_lines(doc: ConfigDocument) -> list[str]:
    """Each IP set a rule names as an interval set, one element a line (a blocklist of
    100,000 CIDRs is one set, matched in one lookup, not 100,000 rules).

    Elements go in address order: the set's CIDRs never overlap, so that is the order
    of the intervals nft builds, and its userspace skips most of its own sorting (a
    100,000-element feed in random order costs nft ~2.5x the CPU of a sorted one)."""
    names = sorted({n for r in doc.rules.entries for n in (r.src_set, r.dst_set) if n is not None})
    lines: list[str] = []
    for name in names:
        lines += [f"\tset {SET_PREFIX}{name} {{", "\t\ttype ipv4_addr", "\t\tflags interval"]
        prefixes = sorted(doc.rules.ip_sets[name].prefixes)
        if prefixes:
            lines.append("\t\telements = {")
            lines += [f"\t\t\t{prefix_str(p)}," for p in prefixes]
            lines.append("\t\t}")
        lines.append("\t}")
    return lines


def _comment(rule: Rule, index: int) -> str:
    return f'comment "rules.entries[{index}]{": " + rule.comment if rule.comment else ""}"'


def _line(*parts: str) -> str:
    return "\t\t" + " ".join(p for p in parts if p)


def _forward_chain(doc: ConfigDocument, in_if: str, out_if: str) -> list[str]:
    martians = ", ".join(MARTIAN_DESTINATIONS)
    lines = [
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        '\t\tct state invalid counter drop comment "never forward what conntrack cannot track"',
        _line(UNPARK_RULE),
    ]
    gwlb_if = doc.gwlb_interface
    if gwlb_if is not None:
        lines.append(
            _line(
                f'iifname "{gwlb_if}" ct state new',
                f"ct mark set ct mark | {CT_MARK_GWLB:#x}",
                'comment "GWLB flow: offloaded as GWLB, or kept in the kernel"',
            )
        )
    if doc.port_forwards or (doc.load_balancer.enabled and doc.load_balancer.listeners):
        lines.append(
            _line(
                f"iifname {out_if} oifname {in_if} ct status dnat counter accept",
                'comment "port forward"',
            )
        )
    # one-arm NAT: workloads and the internet share the interface; new flows come only
    # from private (VPC) sources, and replies (which also arrive on the inside
    # interface) are not judged as workload traffic
    private = f" ip saddr != {{ {', '.join(PRIVATE_SOURCES)} }}" if doc.one_arm_nat else ""
    original = " ct direction original" if doc.one_arm_nat else ""
    lines += [
        f'\t\tiifname {out_if} ct state new{private} counter drop comment "no unsolicited inbound"',
        f"\t\tiifname {in_if} oifname {out_if}{original} ip daddr {{ {martians} }} "
        'counter drop comment "martian destination"',
    ]
    for i, rule in enumerate(doc.rules.entries):
        if rule.action == "deny":
            where = (f"iifname {in_if}{original}", match_expr(rule))
            lines += _firewall_log(doc, where, f"rules.entries[{i}]")
            lines.append(_line(*where, "counter drop", _comment(rule, i)))
    if _needs_policy(doc):
        lines.append(f"\t\tiifname {in_if} oifname {out_if} ct state new jump egress_policy")
    lines.append("\t}")
    return lines


def _firewall_log(doc: ConfigDocument, match: tuple[str, ...], path: str) -> list[str]:
    """``logging.firewall_logs``: a deny rule's rate-limited NFLOG twin, before it (the
    limit must not decide the drop), prefixed with the rule's path
    (:mod:`control.firewall_log` reads the group)."""
    fw = doc.logging.firewall_logs
    if not fw.enabled:
        return []
    rate = f"limit rate {fw.rate_per_second}/second"
    return [_line(*match, rate, f'log prefix "{path}" group {fw.group}')]


def _needs_policy(doc: ConfigDocument) -> bool:
    return doc.rules.default == "deny" or any(r.action == "allow" for r in doc.rules.entries)


def _policy_chain(doc: ConfigDocument) -> list[str]:
    if not _needs_policy(doc):
        return []
    lines = ["\tchain egress_policy {"]
    for i, rule in enumerate(doc.rules.entries):
        if rule.action == "allow":
            lines.append(_line(match_expr(rule), "counter accept", _comment(rule, i)))
    if doc.rules.default == "deny":
        lines += _firewall_log(doc, (), "rules.default")
        lines.append('\t\tcounter drop comment "rules.default: deny"')
    lines.append("\t}")
    return lines


def _appliance_input(doc: ConfigDocument) -> list[str]:
    """With ``tls.appliance`` the config API's and AI gateway's plain-HTTP ports answer
    on loopback only (HAProxy's way in); any other interface gets a TCP reset."""
    if not (doc.tls.enabled and doc.tls.appliance):
        return []
    ports = ", ".join(str(p) for p in sorted({doc.api.port, doc.ai.listen_port} - {0}))
    return [
        "\tchain appliance_input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        f'\t\tiifname != "lo" tcp dport {{ {ports} }} counter reject with tcp reset '
        'comment "tls.appliance: plain HTTP on loopback only"',
        "\t}",
    ]


def nat_targets(doc: ConfigDocument, zone: str | None) -> list[str] | None:
    """The addresses flows are translated to, or ``None`` for the interface's own.

    ``"zone"``: this instance's AZ's NAT address; with no zone known (the config API's
    dry run renders for any instance) the first zone's stands for all of them."""
    wanted = doc.nat.outside_addresses
    if isinstance(wanted, list):
        return [str(a) for a in wanted]
    if wanted == "interface":
        return None
    zones = doc.aws.zones
    if zone is None:
        return [str(next(iter(zones.values())).nat_address)] if zones else None
    if zone not in zones:
        raise RenderError(
            "aws.zones",
            f"no entry for this instance's Availability Zone {zone!r} "
            f'(nat.outside_addresses is "zone"; zones: {sorted(zones)})',
        )
    return [str(zones[zone].nat_address)]


def _snat_lines(doc: ConfigDocument, out_if: str, zone: str | None) -> list[str]:
    ports = _ports(*doc.nat.port_range)
    flags = " fully-random" if doc.nat.random_fully else ""
    l4 = f"oifname {out_if} meta l4proto {{ tcp, udp }} counter"
    other = f"oifname {out_if} counter"
    explicit = nat_targets(doc, zone)
    if explicit is None:
        return [_line(l4, f"masquerade to :{ports}{flags}"), _line(other, "masquerade")]
    if len(explicit) == 1:
        return [
            _line(l4, f"snat ip to {explicit[0]}:{ports}{flags}"),
            _line(other, f"snat ip to {explicit[0]}"),
        ]
    n = len(explicit)
    pick = "jhash ip saddr" if doc.nat.address_selection == "source" else "numgen inc"
    with_ports = ", ".join(f"{i} : {a} . {ports}" for i, a in enumerate(explicit))
    plain = ", ".join(f"{i} : {a}" for i, a in enumerate(explicit))
    return [
        _line(l4, f"snat ip to {pick} mod {n} map {{ {with_ports} }}{flags}"),
        _line(other, f"snat ip to {pick} mod {n} map {{ {plain} }}"),
    ]


def guard_addresses(
    doc: ConfigDocument, interface_addresses: Sequence[str], zone: str | None = None
) -> list[str]:
    """Sources allowed to leave the outside interface: the NAT targets."""
    explicit = nat_targets(doc, zone)
    if explicit is not None:
        return explicit
    addresses = [str(IPv4Address(a)) for a in interface_addresses]
    if not addresses:
        raise RenderError(
            "nat.outside_addresses",
            f'"interface" but {doc.interfaces.outside!r} has no IPv4 address',
        )
    return addresses


def render_nftables(
    doc: ConfigDocument, outside_addresses: Sequence[str], zone: str | None = None
) -> str:
    """The whole ``inet spectra`` table for ``doc`` as one atomic nft script.

    ``outside_addresses`` are the IPv4 addresses of the outside interface (used when
    ``nat.outside_addresses`` is ``"interface"``); ``zone`` the instance's Availability
    Zone (used when it is ``"zone"``).  Pure: no I/O.
    """
    inside = [doc.interfaces.inside]
    gwlb_if = doc.gwlb_interface
    if gwlb_if is not None and gwlb_if != doc.interfaces.inside:
        inside.append(gwlb_if)
    if doc.aws.health.forward_probes:  # the probe's flows are judged as a workload's
        inside.append(PROBE_IF)
    names = ", ".join(f'"{i}"' for i in inside)
    in_if = f"{{ {names} }}" if len(inside) > 1 else names
    out_if = f'"{doc.interfaces.outside}"'
    saddrs = ", ".join(guard_addresses(doc, outside_addresses, zone))
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    lines += _set_lines(doc)
    lines += _forward_chain(doc, in_if, out_if)
    lines += _policy_chain(doc)
    lines += port_forwards.sources_chain(doc, in_if, out_if, saddrs)
    lines += port_forwards.prerouting_chain(doc, in_if, out_if, saddrs)
    lines += _appliance_input(doc)
    lines += [
        "\tchain postrouting_nat {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        *_snat_lines(doc, out_if, zone),
        *port_forwards.hairpin_snat(doc, in_if),
        "\t}",
        "\tchain egress_guard {",
        "\t\ttype filter hook postrouting priority srcnat + 10; policy accept;",
        f"\t\toifname {out_if}{' ct direction original' if doc.one_arm_nat else ''} "
        f"ip saddr != {{ {saddrs} }} counter drop "
        'comment "untranslated source"',
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"
