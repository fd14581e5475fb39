"""``spectra config``: read and change the config document through the config API.

Operators never write the store directly: every change goes through the API, which
validates, versions and records who changed what. The API address and token come from
options or ``SPECTRA_API`` / ``SPECTRA_TOKEN``.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

DEFAULT_API = "http://127.0.0.1:8080"


class Api:
    """A tiny synchronous client of the config API (stdlib only)."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, _json(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read()), dict(exc.headers)
        except urllib.error.URLError as exc:
            raise click.ClickException(f"config API {self.base} unreachable: {exc.reason}") from exc


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def _ok(status: int, body: Any) -> Any:
    if status < 300:
        return body
    err = body.get("error", {}) if isinstance(body, dict) else {}
    lines = [f"HTTP {status}: {err.get('message', body)}"]
    details = err.get("details") or {}
    for detail in details.get("errors", []) if isinstance(details, dict) else details:
        if isinstance(detail, dict) and "path" in detail:
            lines.append(
                f"  {detail['path']}: {detail.get('message')} (got {detail.get('value')!r})"
            )
    raise click.ClickException("\n".join(lines))


def _read_doc(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.ClickException(f"{path}: not JSON: {exc}") from exc


@click.group()
@click.option("--api", envvar="SPECTRA_API", default=DEFAULT_API, show_default=True)
@click.option("--token", envvar="SPECTRA_TOKEN", help="Bearer token (or SPECTRA_TOKEN).")
@click.pass_context
def config(ctx: click.Context, api: str, token: str | None) -> None:
    """Read and change the config document through the config API."""
    ctx.obj = Api(api, token)


@config.command("get")
@click.pass_obj
def get(api: Api) -> None:
    """Print the current document with its version."""
    click.echo(json.dumps(_ok(*api.call("GET", "/v1/config")[:2]), indent=2))


@config.command("put")
@click.argument("path")
@click.option(
    "--version", "expected", type=int, required=True, help="Version the change is based on."
)
@click.pass_obj
def put(api: Api, path: str, expected: int) -> None:
    """Replace the document with PATH (- for stdin), based on --version."""
    body = _ok(
        *api.call("PUT", "/v1/config", {"document": _read_doc(path)}, {"If-Match": str(expected)})[
            :2
        ]
    )
    click.echo(json.dumps(body, indent=2))


@config.command("validate")
@click.argument("path")
@click.pass_obj
def validate(api: Api, path: str) -> None:
    """Dry run: errors, or the diff and the rendered nftables ruleset."""
    click.echo(
        json.dumps(
            _ok(*api.call("POST", "/v1/config/validate", {"document": _read_doc(path)})[:2]),
            indent=2,
        )
    )


@config.command("versions")
@click.pass_obj
def versions(api: Api) -> None:
    """Who changed what, when."""
    click.echo(json.dumps(_ok(*api.call("GET", "/v1/config/versions")[:2]), indent=2))


@config.command("rollback")
@click.argument("version", type=int)
@click.pass_obj
def rollback(api: Api, version: int) -> None:
    """Make VERSION's content the newest version."""
    body = _ok(*api.call("POST", "/v1/config/rollback", {"to_version": version})[:2])
    click.echo(json.dumps(body, indent=2))


@config.command("schema")
def schema() -> None:
    """Print the document's JSON Schema (no API needed)."""
    from control.config import json_schema

    click.echo(json.dumps(json_schema(), indent=2))
