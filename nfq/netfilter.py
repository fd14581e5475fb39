"""Netfilter side of the inspection path: which packets go to NFQUEUE, and the bypass.

Renders the product's own chains only, never anything else:

* iptables (``iptables-nft``): table ``mangle``, chains ``SPECTRA_INSPECT`` (jumped from
  ``FORWARD``) and ``SPECTRA_VERDICT``, applied in one ``iptables-restore --noflush``
  transaction (declared user chains are flushed and refilled; other chains untouched).
* nft, where the kernel has the ``queue`` expression (``NFT_QUEUE``): table
  ``ip spectra_inspect``, replaced atomically like ``inet spectra``.

The chain (mangle, priority -150, so before the product's ``inet spectra`` filter):

1. conntrack mark has BYPASS (0x2): return, the flow is decided;
2. packet mark has REPEAT (0x4): the inspector verdicted it with ``NF_REPEAT``; go to
   ``SPECTRA_VERDICT``, which saves packet-mark BYPASS into the conntrack mark and
   clears the product's packet-mark bits (then the packet leaves the chain). Never
   from a RELATED packet: an ICMP error carries the conntrack of the flow it quotes,
   so a BYPASS verdict on it (the inspector bypasses protocols no rule looks at)
   would end inspection of that flow, and anyone on the path can send one;
3. NEW flows matching a selector: conntrack mark |= INSPECT (0x1);
4. conntrack mark INSPECT without BYPASS: ``NFQUEUE --queue-balance A:B`` (plus
   ``--queue-bypass`` when the policy fails open; without it the packet is dropped
   while no inspector is bound: fail-closed).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

from nfq.marks import (
    CT_MARK_BYPASS,
    CT_MARK_INSPECT,
    CT_MARK_MASK,
    SKB_MARK_BYPASS,
    SKB_MARK_MASK,
)
from nfq.marks import SKB_MARK_REPEAT as _REPEAT
from nfq.policy import InspectionPolicy, Selector

log = logging.getLogger("spectra.nfq")

TABLE = "mangle"
CHAIN = "SPECTRA_INSPECT"
VERDICT_CHAIN = "SPECTRA_VERDICT"
HOOK_CHAIN = "FORWARD"
NFT_TABLE = "spectra_inspect"
_CLEAR_SKB = 0xFFFFFFFF & ~SKB_MARK_MASK

__all__ = [
    "CHAIN",
    "NFT_TABLE",
    "VERDICT_CHAIN",
    "InspectionPolicy",
    "NetfilterError",
    "apply",
    "nft_queue_supported",
    "remove",
    "render_iptables",
    "render_iptables_removal",
    "render_nft",
]


class NetfilterError(RuntimeError):
    """iptables-restore or nft rejected the inspection rules, or could not be run."""


def _check_ifname(ifname: str | None) -> None:
    if ifname is not None and (
        not ifname or len(ifname) > 15 or any(c in ifname for c in " \"\\;{}'")
    ):
        raise NetfilterError(f"interface name {ifname!r}: 1-15 characters, no quotes/spaces")


# ---- iptables ------------------------------------------------------------------------


def _ipt_selector(sel: Selector, in_interface: str | None) -> list[str]:
    """One iptables match per (src, dst) pair of the selector."""
    base = ["-m conntrack --ctstate NEW"]
    if in_interface:
        base.append(f"-i {in_interface}")
    srcs: list[str | None] = [str(n) for n in sel.src] or [None]
    dsts: list[str | None] = [str(n) for n in sel.dst] or [None]
    l4 = []
    if sel.proto != "any":
        l4.append(f"-p {sel.proto}")
    if sel.ports:
        l4.append("-m multiport --dports " + ",".join(str(p) for p in sel.ports))
    out = []
    for s in srcs:
        for d in dsts:
            parts = list(base)
            if s:
                parts.append(f"-s {s}")
            if d:
                parts.append(f"-d {d}")
            parts += l4
            out.append(" ".join(parts))
    return out


def _nfqueue_target(policy: InspectionPolicy) -> str:
    q = policy.queues
    target = (
        f"NFQUEUE --queue-num {q.first}"
        if q.first == q.last
        else (f"NFQUEUE --queue-balance {q.first}:{q.last}")
    )
    return target + (" --queue-bypass" if policy.fail_open else "")


def render_iptables(
    policy: InspectionPolicy, *, in_interface: str | None = None, add_jump: bool = True
) -> str:
    """The ``iptables-restore --noflush`` script for the product's chains.

    ``add_jump`` inserts ``FORWARD -j SPECTRA_INSPECT``; pass False when the jump is
    already there (:func:`apply` checks), so re-applying never duplicates it.
    """
    _check_ifname(in_interface)
    lines = [f"*{TABLE}", f":{CHAIN} - [0:0]", f":{VERDICT_CHAIN} - [0:0]"]
    if policy.enabled:
        lines += [
            f"-A {CHAIN} -m connmark --mark {CT_MARK_BYPASS:#x}/{CT_MARK_BYPASS:#x} -j RETURN",
            f"-A {CHAIN} -m mark --mark {_REPEAT:#x}/{_REPEAT:#x} -g {VERDICT_CHAIN}",
        ]
        for sel in policy.selectors:
            for match in _ipt_selector(sel, in_interface):
                lines.append(f"-A {CHAIN} {match} -j CONNMARK --or-mark {CT_MARK_INSPECT:#x}")
        lines.append(
            f"-A {CHAIN} -m connmark --mark {CT_MARK_INSPECT:#x}/{CT_MARK_MASK:#x} "
            f"-j {_nfqueue_target(policy)}"
        )
        lines += [
            f"-A {VERDICT_CHAIN} -m conntrack ! --ctstate RELATED "
            f"-m mark --mark {SKB_MARK_BYPASS:#x}/{SKB_MARK_BYPASS:#x} "
            f"-j CONNMARK --or-mark {CT_MARK_BYPASS:#x}",
            f"-A {VERDICT_CHAIN} -j MARK --and-mark {_CLEAR_SKB:#x}",
        ]
    if add_jump:
        lines.append(f"-I {HOOK_CHAIN} 1 -j {CHAIN}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_iptables_removal(*, has_jump: bool = True) -> str:
    """Delete the jump and both chains (one transaction)."""
    lines = [f"*{TABLE}", f":{CHAIN} - [0:0]", f":{VERDICT_CHAIN} - [0:0]"]
    if has_jump:
        lines.append(f"-D {HOOK_CHAIN} -j {CHAIN}")
    lines += [f"-X {CHAIN}", f"-X {VERDICT_CHAIN}", "COMMIT"]
    return "\n".join(lines) + "\n"


# ---- nft -----------------------------------------------------------------------------


def _nft_selector(sel: Selector, in_interface: str | None) -> str:
    parts = ["ct state new"]
    if in_interface:
        parts.append(f'iifname "{in_interface}"')
    if sel.src:
        parts.append("ip saddr { " + ", ".join(str(n) for n in sel.src) + " }")
    if sel.dst:
        parts.append("ip daddr { " + ", ".join(str(n) for n in sel.dst) + " }")
    if sel.proto != "any":
        parts.append(f"meta l4proto {sel.proto}")
    if sel.ports:
        ports = ", ".join(str(p).replace(":", "-") for p in sel.ports)
        parts.append(f"th dport {{ {ports} }}")
    return " ".join(parts)


def render_nft(policy: InspectionPolicy, *, in_interface: str | None = None) -> str:
    """The ``ip spectra_inspect`` table (kernels with ``NFT_QUEUE``), one transaction."""
    _check_ifname(in_interface)
    q = policy.queues
    numbers = str(q.first) if q.first == q.last else f"{q.first}-{q.last}"
    flags = " flags bypass" if policy.fail_open else ""
    rules = [
        f"ct mark & {CT_MARK_BYPASS:#x} == {CT_MARK_BYPASS:#x} return",
        f"meta mark & {_REPEAT:#x} == {_REPEAT:#x} goto verdict",
    ]
    rules += [
        f"{_nft_selector(s, in_interface)} ct mark set ct mark | {CT_MARK_INSPECT:#x}"
        for s in policy.selectors
    ]
    rules.append(f"ct mark & {CT_MARK_MASK:#x} == {CT_MARK_INSPECT:#x} queue{flags} to {numbers}")
    body = "\n".join(f"\t\t{r}" for r in rules) if policy.enabled else ""
    return (
        f"table ip {NFT_TABLE}\n"
        f"delete table ip {NFT_TABLE}\n"
        f"table ip {NFT_TABLE} {{\n"
        "\tchain forward {\n"
        "\t\ttype filter hook forward priority mangle; policy accept;\n"
        f"{body}\n"
        "\t}\n"
        "\tchain verdict {\n"
        f"\t\tct state != related meta mark & {SKB_MARK_BYPASS:#x} == {SKB_MARK_BYPASS:#x} "
        f"ct mark set ct mark | {CT_MARK_BYPASS:#x}\n"
        f"\t\tmeta mark set meta mark & {_CLEAR_SKB:#x}\n"
        "\t}\n"
        "}\n"
    )


# ---- apply ---------------------------------------------------------------------------

NFT_PROBE = (
    "table ip spectra_probe {\n"
    "\tchain c {\n\t\ttype filter hook forward priority 0; policy accept;\n"
    "\t\tqueue flags bypass to 0\n\t}\n}\n"
)


def _argv(netns: str | None, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetfilterError(f"{argv[0]} could not be run: {exc}") from exc


def nft_queue_supported() -> bool:
    """Whether this kernel loads an nft ``queue`` statement (tried in a throwaway table
    inside a fresh network namespace, so nothing real is touched)."""
    proc = _run(["unshare", "-n", "nft", "-f", "-"], NFT_PROBE)
    if proc.returncode != 0:
        log.info("nft queue unsupported here (%s); using iptables NFQUEUE", proc.stderr.strip())
    return proc.returncode == 0


def _jump_present(netns: str | None) -> bool:
    proc = _run(_argv(netns, "iptables", "-w", "-t", TABLE, "-C", HOOK_CHAIN, "-j", CHAIN))
    return proc.returncode == 0


def apply(
    policy: InspectionPolicy,
    *,
    in_interface: str | None = None,
    netns: str | None = None,
    backend: str | None = None,
) -> str:
    """Install the policy atomically; returns the backend used (``nft`` or ``iptables``).

    ``backend`` None picks nft when the kernel supports its queue statement.
    """
    if backend is None:
        backend = "nft" if nft_queue_supported() else "iptables"
    if backend == "nft":
        proc = _run(_argv(netns, "nft", "-f", "-"), render_nft(policy, in_interface=in_interface))
    elif backend == "iptables":
        script = render_iptables(
            policy, in_interface=in_interface, add_jump=not _jump_present(netns)
        )
        proc = _run(_argv(netns, "iptables-restore", "-w", "--noflush"), script)
    else:
        raise NetfilterError(f"backend {backend!r}: expected 'nft' or 'iptables'")
    if proc.returncode != 0:
        raise NetfilterError(f"{backend} rejected the inspection rules: {proc.stderr.strip()}")
    log.info("inspection rules applied with %s (queues %s)", backend, policy.queues.numbers)
    return backend


def remove(*, netns: str | None = None) -> None:
    """Remove the product's inspection chains/table, whichever backend installed them."""
    _run(_argv(netns, "nft", "delete", "table", "ip", NFT_TABLE))
    chains = _run(_argv(netns, "iptables", "-w", "-t", TABLE, "-S", CHAIN))
    if chains.returncode != 0:
        return
    script = render_iptables_removal(has_jump=_jump_present(netns))
    proc = _run(_argv(netns, "iptables-restore", "-w", "--noflush"), script)
    if proc.returncode != 0:
        raise NetfilterError(f"iptables-restore could not remove {CHAIN}: {proc.stderr.strip()}")
