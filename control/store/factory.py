"""Building a config store from a URL, for the CLI and the agent.

``local`` or ``local:/path/to/config.db`` -> :class:`SqliteStore`;
``ssm:/prefix`` -> :class:`SsmStore` over the ``client`` the caller passes, or else a
boto3 SSM client from boto3's default credential chain with standard retries. Nothing
here assumes a role: the agent and the CLI pass no client, so they use the default
chain (environment, shared config files, or on EC2 the instance role).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from control.store.base import ConfigStore, StoreError
from control.store.local import DEFAULT_PATH, SqliteStore
from control.store.ssm import SsmStore

if TYPE_CHECKING:
    from mypy_boto3_ssm.client import SSMClient

POLL_SECONDS = {"local": 1.0, "ssm": 5.0}


def open_store(url: str, client: SSMClient | None = None) -> ConfigStore:
    """``local[:PATH]`` or ``ssm:/PREFIX``; raise :class:`StoreError` on anything else."""
    kind, _, rest = url.partition(":")
    if kind == "local":
        return SqliteStore(rest or DEFAULT_PATH)
    if kind == "ssm":
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("ssm", config=Config(retries={"mode": "standard"}))
        return SsmStore(client, rest or "/spectra/config")
    raise StoreError(f"config store {url!r}: expected local[:PATH] or ssm:/PREFIX")
