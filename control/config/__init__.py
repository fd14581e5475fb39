"""The config document: schema, validation and diff.

Public surface: :class:`ConfigDocument` and :func:`parse_document` (raises
:class:`ConfigValidationError` whose ``errors`` name path, value and what is accepted),
:func:`dump_document`, :func:`canonical_json`, :func:`json_schema`,
:func:`diff_documents`. What a document means for an instance is rendered by the
converge steps (:mod:`control.steps`).
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
    "summarize",
    "validation_errors",
]
