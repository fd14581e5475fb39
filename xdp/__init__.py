"""eBPF/XDP data plane: programs in ``xdp/bpf``, loaded through bcc, pinned under bpffs.

Public surface: :class:`Dataplane` (load / adopt, attach / detach, deny rules, flow
table, counters), the records it takes (:class:`FlowKey`, :class:`FlowEntry`,
:class:`DenyRule`), :class:`BuildOptions` (compile-time tunables) and :class:`Reason`
(the verdict reasons counted in the ``stats`` map).  Importing runs nothing.
"""

from xdp.dataplane import Dataplane
from xdp.loader import BuildOptions
from xdp.reasons import Reason
from xdp.records import DenyRule, FlowEntry, FlowKey

__all__ = ["BuildOptions", "Dataplane", "DenyRule", "FlowEntry", "FlowKey", "Reason"]
