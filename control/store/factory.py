"""Building a config store from a URL, for the CLI and the agent.

``local`` or ``local:/path/to/config.db`` -> :class:`SqliteStore`;
``ssm:/prefix`` -> :class:`SsmStore`.  On the appliance the caller passes its
:class:`~control.aws.SessionFactory`: the document is read with the instance role (boot
needs it before the operational role is known: the document names that role) and written
with the operational role (the config API).  Without one -- the operator's CLI on their
own machine -- ``client`` or else boto3's default chain (the operator's credentials) does
both, with standard retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from control.store.base import ConfigStore, StoreError
from control.store.local import DEFAULT_PATH, SqliteStore
from control.store.ssm import SsmStore

if TYPE_CHECKING:
    from mypy_boto3_ssm.client import SSMClient

    from control.aws.session import SessionFactory

POLL_SECONDS = {"local": 1.0, "ssm": 5.0}


def open_store(
    url: str, client: SSMClient | None = None, *, aws: SessionFactory | None = None
) -> ConfigStore:
    """``local[:PATH]`` or ``ssm:/PREFIX``; raise :class:`StoreError` on anything else."""
    kind, _, rest = url.partition(":")
    if kind == "local":
        return SqliteStore(rest or DEFAULT_PATH)
    if kind == "ssm":
        prefix = rest or "/spectra/config"
        if aws is not None:
            return SsmStore(aws.instance_client("ssm"), prefix, writer=lambda: aws.client("ssm"))
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("ssm", config=Config(retries={"mode": "standard"}))
        return SsmStore(client, prefix)
    raise StoreError(f"config store {url!r}: expected local[:PATH] or ssm:/PREFIX")
