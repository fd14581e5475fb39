"""A changed ``ai`` section takes effect without a restart.

A *source* is any callable that returns the current :class:`~ai.config.AIConfig`
(the ``--config`` file through :class:`FileSource`; the appliance can pass one that
reads its config store). :func:`watch` polls it off the event loop; when the section
changed, :func:`apply` builds the new key store and router first (so a bad secret
reference or route leaves the running configuration in place, logged) and then swaps
them, with prices, budgets and overflow admission, into the running gateway in one
step on the event loop. Requests in flight finish on what they started with; used
budget totals and meters are kept (they belong to the key ids, not the document).

Listener address, caches, audit log and state file are bound at start: a change of
those is logged as needing a restart and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from ai.config import AIConfig
from ai.keys import KeyStore, resolve_secret
from ai.pipeline import Gateway
from ai.providers.base import AwsCredentialSource
from ai.routing import Router

log = logging.getLogger("spectra.ai")

Source = Callable[[], AIConfig]

#: Settings bound when the gateway starts.
RESTART_ONLY = ("listen_host", "listen_port", "exact_cache", "semantic_cache", "audit", "state")


def restart_only_changes(old: AIConfig, new: AIConfig) -> list[str]:
    """Names of the changed settings that only a restart applies."""
    return [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]


def apply(
    gateway: Gateway,
    config: AIConfig,
    env: Mapping[str, str],
    aws: AwsCredentialSource | None = None,
) -> list[str]:
    """Make ``config`` the running configuration; returns the changed settings that need
    a restart. Raises (and changes nothing) when the new keys or routes cannot be built."""
    keys = KeyStore(resolve_secret(config.key_secret, env), config.keys)
    router = Router(config, env, aws)
    pending = restart_only_changes(gateway.config, config)
    # Keep what start bound: only the reloadable settings come from the new document.
    kept = config.model_copy(update={name: getattr(gateway.config, name) for name in pending})
    gateway.reconfigure(kept, router, keys)
    return pending


class FileSource:
    """The ``ai`` section of a JSON file, re-read only when the file changed."""

    def __init__(self, path: Path, load: Callable[[Path], AIConfig]) -> None:
        self._path = path
        self._load = load
        self._stamp: tuple[int, int] | None = None
        self._config: AIConfig | None = None

    def __call__(self) -> AIConfig:
        stat = self._path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._config is None or stamp != self._stamp:
            self._config = self._load(self._path)
            self._stamp = stamp
        return self._config


async def watch(
    gateway: Gateway,
    source: Source,
    env: Mapping[str, str],
    interval_s: float,
    aws: AwsCredentialSource | None = None,
) -> None:
    """Poll ``source`` every ``interval_s`` and apply what changed, until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            config = await asyncio.to_thread(source)
        except Exception as exc:  # an unreadable or invalid document: keep running
            log.error("AI config not reloaded, keeping the running one: %s", exc)
            continue
        if config == gateway.config:
            continue
        try:
            pending = apply(gateway, config, env, aws)
        except Exception as exc:
            log.error("AI config not applied, keeping the running one: %s", exc)
            continue
        log.info("AI config reloaded (keys, routes, providers, prices, budgets)")
        if pending:
            log.warning("AI config: %s changed; takes effect on restart", ", ".join(pending))
