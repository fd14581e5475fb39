"""The mark bits the inspection path owns, in conntrack and in the packet (skb) mark.

Conntrack mark (shared with the XDP offloader, :mod:`xdp.offload`):

* ``CT_MARK_INSPECT`` (0x1): policy selected this flow for inspection; it stays on the
  kernel path and is queued to the inspector.
* ``CT_MARK_BYPASS`` (0x2): the inspector decided the flow (a ``pass`` rule, or stream
  depth reached without a match); it leaves the queue and may move to the fast path.

Packet mark, set by the inspector in its NFQUEUE verdict together with ``NF_REPEAT``
so the packet re-enters the hook and the product's chain acts on it:

* ``SKB_MARK_BYPASS`` (0x2): copy into the conntrack mark (``CONNMARK``), so every later
  packet of the flow skips the queue, and the offloader sees the decision.
* ``SKB_MARK_REPEAT`` (0x4): "already verdicted in this pass"; never queue it again
  (Suricata's ``repeat-mark``).

Both skb bits are cleared before the packet leaves the chain.
"""

from __future__ import annotations

from xdp.offload import CT_MARK_BYPASS, CT_MARK_INSPECT

SKB_MARK_BYPASS = 0x2
SKB_MARK_REPEAT = 0x4
SKB_MARK_MASK = SKB_MARK_BYPASS | SKB_MARK_REPEAT
CT_MARK_MASK = CT_MARK_INSPECT | CT_MARK_BYPASS

__all__ = [
    "CT_MARK_BYPASS",
    "CT_MARK_INSPECT",
    "CT_MARK_MASK",
    "SKB_MARK_BYPASS",
    "SKB_MARK_MASK",
    "SKB_MARK_REPEAT",
]
