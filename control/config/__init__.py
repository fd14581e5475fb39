"""The config document: schema, validation, diff and rendering into the kernel path.

Public surface: :class:`ConfigDocument` and :func:`parse_document` (raises
:class:`ConfigValidationError` whose ``errors`` name path, value and what is accepted),
:func:`dump_document`, :func:`canonical_json`, :func:`json_schema`,
:func:`diff_documents`, :func:`render_nftables`, :func:`xdp_deny_rules`.
"""

from control.config.diff import Change, diff_documents, summarize
from control.config.document import (
    SCHEMA_VERSION,
    SECRET_FIELDS,
    ConfigDocument,
    canonical_json,
    dump_document,
    json_schema,
    parse_document,
    validation_errors,
)
from control.config.errors import ConfigValidationError, FieldError
from control.config.render import render_nftables, xdp_deny_rules
from control.config.types import MASK

__all__ = [
    "MASK",
    "SCHEMA_VERSION",
    "SECRET_FIELDS",
    "Change",
    "ConfigDocument",
    "ConfigValidationError",
    "FieldError",
    "canonical_json",
    "diff_documents",
    "dump_document",
    "json_schema",
    "parse_document",
    "render_nftables",
    "summarize",
    "validation_errors",
    "xdp_deny_rules",
]
