"""Every mark bit the product sets, in conntrack and in the packet (skb) mark: one
registry, so no two owners pick the same bit.

It lives here because the marks are netfilter state and nfq is the package that owns
netfilter rule rendering; the other users only read it (the XDP offloader decides what
to offload from the conntrack mark, the agent's nftables step sets ``CT_MARK_GWLB``).
Nothing here imports another package of the product, so any of them may import it.

Conntrack mark:

* ``CT_MARK_INSPECT`` (0x1): policy selected this flow for inspection; it stays on the
  kernel path and is queued to the inspector.
* ``CT_MARK_BYPASS`` (0x2): the inspector decided the flow (a ``pass`` rule, or stream
  depth reached without a match); it leaves the queue and may move to the fast path.
* ``CT_MARK_GWLB`` (0x8): the flow arrived decapsulated from a Gateway Load Balancer;
  its replies must be re-encapsulated to the GWLB, so the offloader puts it on the fast
  path only while the fast path can do that (a linked GWLB interface), else the kernel
  path and ``tc_gwlb_encap`` carry it.

* ``CT_MARK_PARKED`` (0x10): the offloader took this flow off the fast path because it
  went idle while its conntrack entry lived on (set by the agent over ctnetlink). The
  forward chain clears it at the flow's next packet, and that mark change is the
  conntrack UPDATE event that brings the flow back to the fast path at once.

Packet mark, set by the inspector in its NFQUEUE verdict together with ``NF_REPEAT``
so the packet re-enters the hook and the product's chain acts on it:

* ``SKB_MARK_BYPASS`` (0x2): copy into the conntrack mark (``CONNMARK``), so every later
  packet of the flow skips the queue, and the offloader sees the decision.
* ``SKB_MARK_REPEAT`` (0x4): "already verdicted in this pass"; never queue it again
  (Suricata's ``repeat-mark``).

Both skb bits are cleared before the packet leaves the chain.

* ``SKB_MARK_HAIRPIN`` (0x40): set with the DNAT of a port forward reached from the
  inside (hairpin NAT, :mod:`control.steps.port_forwards`); the postrouting chain
  masquerades such a connection's first packet to the gateway's inside address.
* ``SKB_MARK_TPROXY`` (0x80): set with the ``tproxy`` of the proxy's transparent mode
  (:mod:`control.squid_tproxy`); a policy-routing rule sends packets carrying it to a
  table whose one route is ``local`` (so they reach Squid's socket, not the internet).
"""

from __future__ import annotations

CT_MARK_INSPECT = 0x1
CT_MARK_BYPASS = 0x2
CT_MARK_GWLB = 0x8
CT_MARK_PARKED = 0x10
CT_MARK_MASK = CT_MARK_INSPECT | CT_MARK_BYPASS  # the inspection path's bits

SKB_MARK_BYPASS = 0x2
SKB_MARK_REPEAT = 0x4
SKB_MARK_MASK = SKB_MARK_BYPASS | SKB_MARK_REPEAT
SKB_MARK_HAIRPIN = 0x40
SKB_MARK_TPROXY = 0x80

__all__ = [
    "CT_MARK_BYPASS",
    "CT_MARK_GWLB",
    "CT_MARK_INSPECT",
    "CT_MARK_MASK",
    "CT_MARK_PARKED",
    "SKB_MARK_BYPASS",
    "SKB_MARK_HAIRPIN",
    "SKB_MARK_MASK",
    "SKB_MARK_REPEAT",
    "SKB_MARK_TPROXY",
]
