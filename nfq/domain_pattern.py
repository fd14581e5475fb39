"""The one domain pattern of the product: every domain list in the config document (the
forward proxy's allow / deny / CONNECT lists, the inspection policy's Network Firewall
style domain lists) is validated here and compiled by each consumer from
:func:`split_pattern`.

The form is AWS Network Firewall's domain list form ("Stateful domain list rule groups
in AWS Network Firewall", AWS Network Firewall Developer Guide) with one addition:

* ``www.example.com``: that host name only;
* ``.example.com``: ``example.com`` and every subdomain (Network Firewall's wildcard);
* ``*.example.com``: every subdomain, not ``example.com`` itself.

Names are DNS host names (RFC 1123 labels: letters, digits, inner hyphens; at most 63
characters a label, 253 in all), compared case-insensitively, so a pattern is stored
lower-cased. Kept in ``nfq`` (which imports no other package of the product) so both
the inspection policy and the control plane's document can use it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator

Kind = Literal["exact", "domain", "subdomains"]

_RE = re.compile(
    r"^(\*\.|\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)
MESSAGE = "expected a DNS name like example.com, or a suffix like .example.com / *.example.com"


def check_pattern(value: str) -> str:
    """``value`` lower-cased; :class:`ValueError` (with :data:`MESSAGE`) if it is not a
    domain pattern."""
    lowered = value.lower()
    if len(lowered) > 253 or not _RE.match(lowered):
        raise ValueError(MESSAGE)
    return lowered


def split_pattern(pattern: str) -> tuple[Kind, str]:
    """A validated pattern -> its kind and its name without the prefix."""
    if pattern.startswith("*."):
        return "subdomains", pattern[2:]
    if pattern.startswith("."):
        return "domain", pattern[1:]
    return "exact", pattern


DomainPattern = Annotated[str, AfterValidator(check_pattern)]
"""A domain pattern in a pydantic model (validated, lower-cased)."""
