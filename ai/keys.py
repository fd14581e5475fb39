"""API keys: hashed at rest with HMAC-SHA256 under a server secret, mapped to tenants.

Why HMAC and not scrypt/argon2: gateway keys are random, >= 128-bit tokens (see
:func:`new_key`), so a slow password hash buys nothing against guessing but would cost
milliseconds of CPU on every request. Keying the hash with a server-side secret (kept
outside the config document, referenced by ``key_secret``) means a leaked config or
audit log cannot even be used to test candidate keys offline. Lookup is one HMAC and
one dict access; the comparison is by the digest, so it leaks no timing about the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ai.config import BudgetConfig, KeyConfig, SecretRef
from ai.errors import Forbidden, Unauthenticated

KEY_PREFIX = "sk-spectra-"


class SecretMissing(Exception):
    """A secret reference points at an unset variable or an unreadable file."""


def resolve_secret(ref: SecretRef, env: Mapping[str, str] | None = None) -> str:
    """The secret's value; the error names the reference, never a value."""
    env = os.environ if env is None else env
    if ref.env is not None:
        value = env.get(ref.env)
        if not value:
            raise SecretMissing(f"environment variable {ref.env} is not set")
        return value
    assert ref.file is not None
    try:
        return ref.file.read_text().splitlines()[0].strip()
    except (OSError, IndexError) as exc:
        raise SecretMissing(f"cannot read secret file {ref.file}: {type(exc).__name__}") from None


def hash_key(secret: str, key: str) -> str:
    """hex HMAC-SHA256 of ``key`` under ``secret``."""
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    key_id: str
    key_hash: str
    tenant: str
    budget: BudgetConfig
    revoked: bool = False


class KeyStore:
    """Maps presented keys to principals through their hashes."""

    def __init__(self, secret: str, keys: tuple[KeyConfig, ...]) -> None:
        self._secret = secret
        self._by_hash = {k.hash: k for k in keys}

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an ``Authorization: Bearer`` header, or a 401/403 error."""
        principal = self.identify(authorization)
        check_not_revoked(principal)
        return principal

    def identify(self, authorization: str | None) -> Principal:
        """The key's principal, revoked or not; 401 for a missing or unknown key."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthenticated(
                "missing API key: send `Authorization: Bearer <key>`", code="missing_api_key"
            )
        digest = hash_key(self._secret, authorization[7:].strip())
        record = self._by_hash.get(digest)
        if record is None:
            raise Unauthenticated("invalid API key")
        return Principal(record.id, record.hash, record.tenant, record.budget, record.revoked)


def check_not_revoked(principal: Principal) -> None:
    if principal.revoked:
        raise Forbidden(f"API key {principal.key_id} has been revoked")


def secret_from_file_or_env(path: Path | None, env_name: str) -> str:
    """CLI helper: read the hashing secret the way the gateway does."""
    ref = SecretRef(file=path) if path is not None else SecretRef(env=env_name)
    return resolve_secret(ref)
