"""eBPF/XDP data plane: programs in ``xdp/bpf``, loaded through bcc, pinned under bpffs.

Public surface: :class:`xdp.dataplane.Dataplane` (attach / detach / adopt, deny rules,
flow table, counters) once the fast-path issue lands.
"""
