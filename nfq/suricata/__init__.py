"""Suricata as the production inspector: rendered suricata.yaml for NFQ IPS mode,
rule files, a supervisor for ``suricata -q``, the unix-command socket client (rule
reload, health) and eve.json alert ingestion into the product's logs and counters.

Public surface: :func:`render_yaml`, :func:`write_config`, :class:`SuricataPaths`,
:class:`Supervisor`, :class:`UnixSocketClient`, :class:`EveTailer`.
"""

from nfq.suricata.config import SuricataPaths, render_yaml, write_config
from nfq.suricata.eve import EveTailer
from nfq.suricata.supervisor import Supervisor
from nfq.suricata.unixsock import UnixSocketClient, UnixSocketError

__all__ = [
    "EveTailer",
    "Supervisor",
    "SuricataPaths",
    "UnixSocketClient",
    "UnixSocketError",
    "render_yaml",
    "write_config",
]
