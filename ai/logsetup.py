"""Log level and format of every appliance process: the document's ``logging`` section.

Shared by the agent (``spectra run``, which also runs the config API and the AI
gateway in threads), the stand-alone AI gateway (``python -m ai``) and the built-in
inspection engine (``python -m nfq engine``, given the agent's settings on its command
line). It lives in ``ai`` because that package imports no other of the product's, so
every process can use it without breaking the dependency direction (control drives
the others). ``json``: one JSON object per record and line (JSON Lines,
https://jsonlines.org/), the AMI's default; ``text``: one human-readable line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Any, Literal

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "text"]
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# exported by configure(export=True): processes the agent spawns start with its settings
ENV_LEVEL, ENV_FORMAT = "SPECTRA_LOG_LEVEL", "SPECTRA_LOG_FORMAT"
NOISY = ("pyroute2", "botocore", "urllib3", "aiohttp.access")  # at least WARNING


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg"}`` plus ``exc`` for an exception, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _Handler(logging.StreamHandler[IO[str]]):
    """The handler :func:`configure` owns (replaced, never stacked, on a change)."""


def configure(
    level: str = "info", fmt: str = "text", stream: IO[str] | None = None, export: bool = False
) -> None:
    """Set the root logger's level and the format of its one appliance handler; called
    again when the document's ``logging`` section changes. ``export``: also into this
    process's environment, which the processes it spawns inherit (:func:`from_env`)."""
    if level not in LEVELS:
        raise ValueError(f"logging.level {level!r}: expected one of {sorted(LEVELS)}")
    if fmt not in ("json", "text"):
        raise ValueError(f"logging.format {fmt!r}: expected json or text")
    root = logging.getLogger()
    old = next((h for h in root.handlers if isinstance(h, _Handler)), None)
    handler = _Handler(stream if stream is not None else (old.stream if old else sys.stderr))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    for h in list(root.handlers):  # basicConfig's or ours: exactly one appliance handler
        if isinstance(h, _Handler) or type(h) is logging.StreamHandler:
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    for name in NOISY:
        logging.getLogger(name).setLevel(max(LEVELS[level], logging.WARNING))
    if export:
        os.environ[ENV_LEVEL], os.environ[ENV_FORMAT] = level, fmt


def from_env(default_level: str = "info", default_format: str = "text") -> None:
    """:func:`configure` from the environment the agent exported (else the defaults)."""
    level = os.environ.get(ENV_LEVEL, default_level)
    fmt = os.environ.get(ENV_FORMAT, default_format)
    configure(
        level if level in LEVELS else default_level,
        fmt if fmt in ("json", "text") else default_format,
    )
