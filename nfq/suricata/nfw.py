"""The subset of Suricata rules AWS Network Firewall accepts in a stateful rule group,
checked before Suricata sees a rule, so that a Network Firewall rule group imports
unchanged and nothing Network Firewall would refuse is accepted here silently.

Source: "Limitations and caveats for stateful rules in AWS Network Firewall" and
"Suricata compatible rule strings" (AWS Network Firewall Developer Guide): actions
``pass``, ``drop``, ``reject``, ``alert`` only; not supported: datasets (``dataset``,
``datarep``), IP reputation (``iprep``), Lua scripting, file extraction keywords,
thresholding (``threshold``, ``detection_filter``), GeoIP (``geoip``), the protocols
QUIC, ENIP/CIP, IKEv2, SCTP and IP-in-IP, and the host-level ``tag``, ``xbits`` and
``hostbits``. Everything else is left to Suricata's own parser (``suricata -T``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nfq.engine.rules import split_options

ACTIONS = ("pass", "drop", "reject", "alert")
REFUSED_KEYWORDS = {
    "dataset": "datasets",
    "datarep": "datasets",
    "iprep": "IP reputation",
    "lua": "Lua scripting",
    "luajit": "Lua scripting",
    "filestore": "file extraction",
    "filemagic": "file extraction",
    "file.magic": "file extraction",
    "filename": "file extraction",
    "file.name": "file extraction",
    "fileext": "file extraction",
    "filemd5": "file extraction",
    "filesha1": "file extraction",
    "filesha256": "file extraction",
    "filesize": "file extraction",
    "threshold": "thresholding",
    "detection_filter": "thresholding",
    "geoip": "GeoIP",
    "tag": "host-level tagging",
    "xbits": "host-level bits",
    "hostbits": "host-level bits",
}
REFUSED_PROTOCOLS = {
    "quic": "QUIC",
    "enip": "ENIP/CIP",
    "cip": "ENIP/CIP",
    "ike": "IKEv2",
    "ikev2": "IKEv2",
    "sctp": "SCTP",
    "ipip": "IP-in-IP",
}
# keyword prefixes of the refused protocols (quic.sni, enip_command, cip_service, ike.*)
REFUSED_PREFIXES = {"quic.": "QUIC", "enip_": "ENIP/CIP", "cip_": "ENIP/CIP", "ike.": "IKEv2"}
IP_IN_IP = {"4", "ipip", "ipencap", "ip-in-ip", "94"}
_HEADER = re.compile(r"^\s*(\S+)\s+(\S+)\s")


@dataclass(frozen=True, slots=True)
class NfwRefusal:
    """Why Network Firewall would refuse a rule: the keyword and what it belongs to."""

    keyword: str
    reason: str

    def __str__(self) -> str:
        return (
            f"'{self.keyword}' ({self.reason}) is not accepted by AWS Network Firewall; "
            f"accepted actions: {', '.join(ACTIONS)}"
        )


def check_rule(text: str) -> NfwRefusal | None:
    """The first thing in ``text`` Network Firewall refuses, or None."""
    head = _HEADER.match(text)
    if head is None:
        return NfwRefusal(text.strip()[:20] or "(empty)", "not a rule: expected 'action proto'")
    action, proto = head.group(1), head.group(2).lower()
    if action not in ACTIONS:
        return NfwRefusal(action, "rule action")
    if proto in REFUSED_PROTOCOLS:
        return NfwRefusal(proto, f"protocol {REFUSED_PROTOCOLS[proto]}")
    open_at, close_at = text.find("("), text.rfind(")")
    if open_at < 0 or close_at < open_at:
        return None  # not well formed: Suricata's parser names the problem
    try:
        options = split_options(text[open_at + 1 : close_at])
    except ValueError:
        return None
    for name, value in options:
        keyword = name.lower()
        if keyword in REFUSED_KEYWORDS:
            return NfwRefusal(keyword, REFUSED_KEYWORDS[keyword])
        for prefix, what in REFUSED_PREFIXES.items():
            if keyword.startswith(prefix):
                return NfwRefusal(keyword, f"protocol {what}")
        if (
            keyword == "app-layer-protocol"
            and value
            and value.strip("! ").lower() in (REFUSED_PROTOCOLS)
        ):
            return NfwRefusal(f"app-layer-protocol:{value}", "unsupported protocol")
        if keyword == "ip_proto" and value and value.strip("!<> ").lower() in IP_IN_IP:
            return NfwRefusal(f"ip_proto:{value}", "protocol IP-in-IP")
    return None
