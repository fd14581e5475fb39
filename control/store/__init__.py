"""Config stores behind one :class:`ConfigStore` protocol.

``local``: :class:`SqliteStore` (the default, /var/lib/spectra/config.db);
``ssm``: :class:`SsmStore` (SSM Parameter Store, chunked, SecureString secrets).
:func:`open_store` builds either from a CLI-friendly URL.
"""

from control.store.base import (
    ConfigStore,
    CorruptRevision,
    StoreError,
    VersionConflict,
    VersionInfo,
    VersionNotFound,
)
from control.store.factory import open_store
from control.store.local import DEFAULT_PATH, SqliteStore
from control.store.ssm import SsmStore

__all__ = [
    "DEFAULT_PATH",
    "ConfigStore",
    "CorruptRevision",
    "SqliteStore",
    "SsmStore",
    "StoreError",
    "VersionConflict",
    "VersionInfo",
    "VersionNotFound",
    "open_store",
]
