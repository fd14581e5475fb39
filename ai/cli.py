"""``spectra ai ...``: the AI gateway's command group (audit verification, key hashing).

Mounted into the ``spectra`` CLI by the control plane; :data:`ai_group` is a plain click
group, so it also runs on its own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ai.audit import verify
from ai.keys import SecretMissing, hash_key, new_key, secret_from_file_or_env


@click.group("ai")
def ai_group() -> None:
    """AI gateway tools."""


@ai_group.group("audit")
def audit_group() -> None:
    """Audit log tools."""


@audit_group.command("verify")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--allow-pruned", is_flag=True, help="the oldest segments were deleted")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option(
    "--key-file",
    type=click.Path(path_type=Path),
    default=None,
    help="the chain's HMAC key (audit.key), first line of this file",
)
@click.option("--key-env", default=None, help="... or this environment variable")
@click.option(
    "--anchors",
    type=click.Path(path_type=Path),
    default=None,
    help="the anchor file (audit.anchor_path): detects a truncated log",
)
@click.option(
    "--s3-anchors",
    default=None,
    metavar="s3://BUCKET/PREFIX/CHAIN/",
    help="the chain's anchor objects (audit.anchor_s3: <prefix><chain>/); each must be "
    "under compliance-mode Object Lock",
)
@click.option("--s3-region", default=None, help="the bucket's region")
@click.option("--s3-endpoint-url", default=None, help="another S3 endpoint")
def audit_verify(
    path: Path,
    allow_pruned: bool,
    as_json: bool,
    key_file: Path | None,
    key_env: str | None,
    anchors: Path | None,
    s3_anchors: str | None,
    s3_region: str | None,
    s3_endpoint_url: str | None,
) -> None:
    """Verify the hash chain of the audit log PATH (and its rotated segments); a keyed
    chain (audit.key) is verified with --key-file or --key-env. Reports the first bad
    record; with --anchors or --s3-anchors, the first missing one of a truncated log."""
    if key_file is not None and key_env is not None:
        raise click.UsageError("give one of --key-file or --key-env")
    key = None
    if key_file is not None or key_env is not None:
        try:
            key = secret_from_file_or_env(key_file, key_env or "").encode()
        except SecretMissing as exc:
            raise click.BadParameter(str(exc), param_hint="--key-file/--key-env") from None
    entries = None
    if s3_anchors is not None:
        from ai.anchors import AnchorUnreadable, s3_anchor_entries

        try:
            entries = s3_anchor_entries(s3_anchors, region=s3_region, endpoint_url=s3_endpoint_url)
        except AnchorUnreadable as exc:  # could have been replaced: the check fails
            click.echo(f"FAILED: {exc}", err=True)
            sys.exit(1)
        except ValueError as exc:  # a malformed URL
            raise click.BadParameter(str(exc), param_hint="--s3-anchors") from None
        except Exception as exc:  # botocore: credentials, access, the network
            raise click.ClickException(f"cannot read the S3 anchors: {exc}") from None
    report = verify(
        path, allow_pruned=allow_pruned, key=key, anchors=anchors, anchor_entries=entries
    )
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    elif report.ok:
        click.echo(f"ok: {report.records} records in {len(report.files)} file(s)")
    else:
        click.echo(
            f"FAILED: {report.error} at {report.file}:{report.line} "
            f"({report.records} records verified before it)",
            err=True,
        )
    sys.exit(0 if report.ok else 1)


@ai_group.group("keys")
def keys_group() -> None:
    """API key tools."""


@keys_group.command("new")
@click.option("--secret-file", type=click.Path(path_type=Path), default=None)
@click.option("--secret-env", default="SPECTRA_AI_KEY_SECRET", show_default=True)
def keys_new(secret_file: Path | None, secret_env: str) -> None:
    """Make a new API key; prints the key (give it to the client) and its hash (config)."""
    key = new_key()
    digest = hash_key(secret_from_file_or_env(secret_file, secret_env), key)
    click.echo(json.dumps({"key": key, "hash": digest}))
