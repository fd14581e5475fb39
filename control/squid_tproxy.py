"""The proxy's transparent mode: the inside's plain HTTP handed to Squid by TPROXY.

Linux TPROXY (kernel ``Documentation/networking/tproxy.rst``): an nftables ``tproxy``
statement in a prerouting chain assigns a TCP segment to a local socket with
``IP_TRANSPARENT`` (Squid's ``http_port ... tproxy``) without rewriting it, and marks
it; a policy-routing rule sends marked packets to a table whose one route is ``local
0.0.0.0/0 dev lo``, so the kernel delivers them locally instead of forwarding them.
Segments of established connections find their socket the same way. Squid sees the
client's original destination, checks the ``Host`` header against it, and applies the
same domain lists as to configured clients (no authentication: an intercepted client
does not know a proxy is there). Squid connects to the origin from the gateway's own
address (``spoof_client_ip deny all``), so its replies need no socket match.

Only TCP port 80 arriving on the inside interface, to an address that is not the
gateway's own, is intercepted. The table is ``ip spectra_tproxy`` (the proxy step's own;
replaced in one transaction, deleted when the mode is off).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from control.nftables import apply_ruleset
from nfq.marks import SKB_MARK_TPROXY

TABLE = "spectra_tproxy"
ROUTE_TABLE = 3129  # the policy-routing table of the local route
RULE_PRIORITY = 3129
INTERCEPTED_PORT = 80


def ruleset(inside: str, listen: Sequence[str]) -> str:
    """The table, or only its deletion when ``listen`` is empty; every intercepted
    connection goes to the first listener (ip:port)."""
    out = [f"table ip {TABLE}", f"delete table ip {TABLE}"]
    if not listen:
        return "\n".join(out) + "\n"
    mark = f"{SKB_MARK_TPROXY:#x}"
    out += [
        f"table ip {TABLE} {{",
        "  chain prerouting {",
        "    type filter hook prerouting priority mangle; policy accept;",
        f'    iifname "{inside}" tcp dport {INTERCEPTED_PORT} fib daddr type local return',
        f'    iifname "{inside}" tcp dport {INTERCEPTED_PORT} '
        f"meta mark set meta mark | {mark} tproxy to {listen[0]} accept",
        "  }",
        "}",
    ]
    return "\n".join(out) + "\n"


def _ip(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10, check=False)


def route(on: bool) -> None:
    """The policy-routing rule and local route of marked packets, added or removed
    (idempotent)."""
    mark = f"{SKB_MARK_TPROXY:#x}/{SKB_MARK_TPROXY:#x}"
    rule = ["rule", "{}", "fwmark", mark, "lookup", str(ROUTE_TABLE), "priority",
            str(RULE_PRIORITY)]  # fmt: skip
    present = f"fwmark {mark} lookup {ROUTE_TABLE}" in _ip("rule", "show").stdout
    if on:
        _ip("route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", str(ROUTE_TABLE))
        if not present:
            proc = _ip(*[a.replace("{}", "add") for a in rule])
            if proc.returncode != 0:
                raise RuntimeError(f"ip rule add: {proc.stderr.strip()}")
    else:
        if present:
            _ip(*[a.replace("{}", "del") for a in rule])
        _ip("route", "flush", "table", str(ROUTE_TABLE))


def apply(inside: str, listen: Sequence[str]) -> None:
    """Intercept to ``listen`` (empty: stop intercepting)."""
    if listen:
        route(True)
        apply_ruleset(ruleset(inside, listen))
    else:
        apply_ruleset(ruleset(inside, listen))
        route(False)
