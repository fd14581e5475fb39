"""Domain allow/deny lists compiled into rules, as AWS Network Firewall compiles its
stateful domain list rule groups ("Stateful domain list rule groups in AWS Network
Firewall", AWS Network Firewall Developer Guide).

A target (:mod:`nfq.domain_pattern`) ``www.example.com`` matches that host name
exactly; ``.example.com`` matches ``example.com`` and every subdomain; ``*.example.com``
every subdomain only (a ``.`` before the name). ``TLS_SNI`` targets match the ClientHello's server
name (``tls.sni``), ``HTTP_HOST`` the request's Host header (``http.host``). A
``DENYLIST`` drops matching flows; an ``ALLOWLIST`` passes them (``pass`` wins over
``drop`` in the default action order) and drops every other inspected TLS / HTTP flow
from ``$HOME_NET``, as Network Firewall's generated rules do.

The rules use only what both engines share (``content`` + ``nocase`` as the fast pattern,
an anchored ``pcre`` for the exact match), so a list behaves the same on Suricata and on
the built-in engine. Their sids come from a reserved range (:data:`DOMAIN_SID_BASE`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from nfq.domain_pattern import split_pattern
from nfq.policy import DomainList

DOMAIN_SID_BASE = 1_900_000_000
SIDS_PER_LIST = 100_000
_PROTO = {"TLS_SNI": ("tls", "tls.sni", "TLS SNI"), "HTTP_HOST": ("http", "http.host", "HTTP Host")}


ANCHORS = {"exact": "^", "domain": "(^|\\.)", "subdomains": "\\."}  # before the name


def _match(target: str, buffer: str) -> str:
    kind, name = split_pattern(target)
    anchor = ANCHORS[kind]
    # http.host is lower-cased by both engines (Suricata refuses nocase on it); a '/' or
    # ';' never occurs in a validated host name; '.' is escaped for the regex
    case = "" if buffer == "http.host" else "nocase; "
    flags = "" if buffer == "http.host" else "i"
    return f'{buffer}; content:"{name}"; {case}pcre:"/{anchor}{re.escape(name)}$/{flags}";'


def compile_domain_list(index: int, dl: DomainList) -> list[str]:
    """The rules of list ``index`` (its sids: ``DOMAIN_SID_BASE + index * 100000 + n``)."""
    base = DOMAIN_SID_BASE + index * SIDS_PER_LIST
    action = "pass" if dl.generated_rules_type == "ALLOWLIST" else "drop"
    verb = "allowed" if action == "pass" else "denied"
    rules, n = [], 0
    for kind in dl.target_types:
        proto, buffer, label = _PROTO[kind]
        for target in dl.targets:
            n += 1
            rules.append(
                f"{action} {proto} $HOME_NET any -> $EXTERNAL_NET any "
                f'(msg:"domain list {index}: {verb} {label} {target}"; '
                f"flow:to_server,established; {_match(target, buffer)} sid:{base + n}; rev:1;)"
            )
        if action == "pass":
            n += 1
            rules.append(
                f"drop {proto} $HOME_NET any -> $EXTERNAL_NET any "
                f'(msg:"domain list {index}: {label} not on the allow list"; '
                f"flow:to_server,established; sid:{base + n}; rev:1;)"
            )
    return rules


def compile_domain_lists(lists: Iterable[DomainList]) -> list[str]:
    """Every list's rules, in document order."""
    return [rule for i, dl in enumerate(lists) for rule in compile_domain_list(i, dl)]
