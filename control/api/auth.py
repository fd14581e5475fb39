"""Bearer-token authentication of the config API: tokens hashed at rest, two roles.

Tokens are 256-bit random strings (:func:`new_token`); the document keeps only
``sha256:<hex>`` of each (``api.tokens``).  A fast hash is the right tool for
high-entropy tokens (nothing to brute-force), so verification costs one SHA-256 and a
constant-time compare per configured token.  ``read`` may GET; ``admin`` may also write.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from control.config.operations import ApiToken

Role = Literal["read", "admin"]
TOKEN_PREFIX = "spk_"
MIN_TOKEN_CHARS = 32


class TokenError(ValueError):
    """A token is too short to be hashed safely with a fast hash."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name and role."""

    name: str
    role: Role


def new_token() -> str:
    """A fresh random bearer token (show it once; store only :func:`hash_token`)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of ``token``, the form ``api.tokens[].hash`` accepts."""
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(f"token has {len(token)} characters; expected at least {MIN_TOKEN_CHARS}")
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def token_entry(name: str, role: Role) -> tuple[str, dict[str, str]]:
    """CLI helper: a new token and its ``api.tokens`` entry (``spectra token new``)."""
    token = new_token()
    return token, {"name": name, "role": role, "hash": hash_token(token)}


def authenticate(header: str | None, tokens: Iterable[ApiToken]) -> Principal | None:
    """The principal of an ``Authorization: Bearer ...`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or len(token) < MIN_TOKEN_CHARS:
        return None
    presented = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    found: Principal | None = None
    for entry in tokens:
        if hmac.compare_digest(presented, entry.hash.get_secret_value()):
            found = Principal(entry.name, entry.role)
    return found
