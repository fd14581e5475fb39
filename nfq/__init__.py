"""NFQUEUE hand-off to Suricata or the built-in inspector engine.

Public surface: :class:`InspectionPolicy` (the config document's ``inspection`` section),
:mod:`nfq.netfilter` (render and apply the queueing rules), the built-in engine
(``python -m nfq engine``) and :class:`nfq.suricata.Supervisor`.
"""

from nfq.policy import InspectionPolicy

__all__ = ["InspectionPolicy"]
