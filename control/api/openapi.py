"""The OpenAPI 3.1 document of the config API, built from the config schema.

Hand-written paths; the document's own schema comes from :func:`control.config.json_schema`
(pydantic, JSON Schema 2020-12, which OpenAPI 3.1 uses as is), so the two never drift.
"""

from __future__ import annotations

import functools
from typing import Any

from control.aws.changeset import OPERATOR_PARAMETERS
from control.config import ConfigDocument

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_VERSION = {"type": "integer", "minimum": 0, "maximum": 999_999_999_999}
_ETAG = {"ETag": {"description": 'the config version, quoted: "3"', "schema": {"type": "string"}}}

_COUNT = {"type": ["integer", "null"]}


def _history(sample: dict[str, Any]) -> dict[str, Any]:
    """A history endpoint's answer: its sampling interval and window, and the samples
    (each as ``sample``), oldest first."""
    return {
        "type": "object",
        "required": ["interval_seconds", "window_seconds", "samples"],
        "properties": {
            "interval_seconds": {"type": "number"},
            "window_seconds": {"type": "number"},
            "samples": {"type": "array", "items": sample},
        },
    }


_SCHEMAS: dict[str, Any] = {
    "Principal": {
        "type": "object",
        "required": ["name", "role"],
        "properties": {"name": {"type": "string"}, "role": {"enum": ["read", "admin"]}},
    },
    "Flows": {
        "type": "object",
        "required": ["address", "max_bytes", "instances"],
        "properties": {
            "address": {"type": ["string", "null"]},
            "max_bytes": {"type": "integer"},
            "instances": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": [
                        "records",
                        "top_sources",
                        "top_destinations",
                        "matches",
                        "newest",
                        "per_minute",
                        "bytes_read",
                        "truncated",
                    ],
                    "properties": {
                        "records": {"type": "integer"},
                        "top_sources": {"type": "array", "items": _ref("FlowTotal")},
                        "top_destinations": {"type": "array", "items": _ref("FlowTotal")},
                        "matches": {"type": "integer"},
                        "newest": {
                            "type": "array",
                            "items": {"type": "object", "description": "flow log records"},
                        },
                        "per_minute": {
                            "type": "array",
                            "description": "the matching records by the minute they ended "
                            "in (t: unix seconds), oldest first",
                            "items": {
                                "type": "object",
                                "required": ["t", "flows", "bytes", "packets"],
                                "properties": {
                                    "t": {"type": "integer"},
                                    "flows": {"type": "integer"},
                                    "bytes": {"type": "integer"},
                                    "packets": {"type": "integer"},
                                },
                            },
                        },
                        "bytes_read": {"type": "integer"},
                        "truncated": {"type": "boolean"},
                    },
                },
            },
        },
    },
    "FlowTotal": {
        "type": "object",
        "required": ["address", "bytes", "packets", "flows"],
        "properties": {
            "address": {"type": "string"},
            "bytes": {"type": "integer"},
            "packets": {"type": "integer"},
            "flows": {"type": "integer"},
        },
    },
    "AiKeyRequest": {
        "type": "object",
        "required": ["id", "tenant"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
            "tenant": {"type": "string", "minLength": 1},
            "budget": _ref("BudgetConfig"),
        },
    },
    "AiKeyCreated": {
        "type": "object",
        "required": ["version", "id", "key", "changes"],
        "properties": {
            "version": {"type": "integer"},
            "id": {"type": "string"},
            "key": {"type": "string", "description": "the key; shown once, never stored"},
            "changes": {"type": "array", "items": _ref("Change")},
        },
    },
    "AiUsage": {
        "type": "object",
        "required": ["version", "state_file", "keys", "unknown_keys", "gateway"],
        "properties": {
            "version": {"type": "integer"},
            "state_file": {"type": ["string", "null"]},
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "id",
                        "tenant",
                        "revoked",
                        "budget",
                        "used_tokens",
                        "used_cost_usd",
                        "models",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "tenant": {"type": "string"},
                        "revoked": {"type": "boolean"},
                        "budget": _ref("BudgetConfig"),
                        "used_tokens": {"type": "integer"},
                        "used_cost_usd": {"type": "number"},
                        "models": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["model", "requests"],
                                "properties": {
                                    "model": {"type": "string"},
                                    "requests": {"type": "integer"},
                                    "prompt_tokens": {"type": "integer"},
                                    "completion_tokens": {"type": "integer"},
                                    "cached_tokens": {"type": "integer"},
                                    "cost_usd": {"type": "number"},
                                },
                            },
                        },
                    },
                },
            },
            "unknown_keys": {"type": "array", "items": {"type": "string"}},
            "gateway": {
                "type": "object",
                "description": "the local AI gateway's requests by cache outcome and hit "
                "rates (from its /metrics), or why it could not be read",
                "required": ["reachable"],
                "properties": {
                    "reachable": {"type": "boolean"},
                    "error": {"type": "string"},
                    "requests_by_cache": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                    },
                    "exact_hit_rate": {"type": ["number", "null"]},
                    "semantic_hit_rate": {"type": ["number", "null"]},
                    "overflow_decisions": {
                        "type": "object",
                        "description": "overflow decisions since the gateway started, by "
                        "policy/decision (queue/queued, spill/spilled, reject/rejected, ...)",
                        "additionalProperties": {"type": "integer"},
                    },
                },
            },
        },
    },
    "AiUsageHistory": _history(
        {
            "type": "object",
            "required": ["t", "keys", "overflow"],
            "properties": {
                "t": {"type": "number", "description": "unix seconds"},
                "keys": {
                    "type": "object",
                    "description": "key -> model -> counters at time t (requests, "
                    "prompt_tokens, completion_tokens, cost_usd)",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "additionalProperties": {"type": "number"},
                        },
                    },
                },
                "overflow": {
                    "type": ["object", "null"],
                    "description": "overflow decisions by policy/decision since "
                    "the gateway started; null when its /metrics was unreachable",
                    "additionalProperties": {"type": "integer"},
                },
            },
        }
    ),
    "StatusHistory": _history(
        {
            "type": "object",
            "required": ["t", "instances"],
            "properties": {
                "t": {"type": "number", "description": "unix seconds"},
                "instances": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "description": "counters (packets, bytes, fast_packets, "
                        "fast_bytes, drops by reason) and gauges at time t",
                        "properties": {
                            "packets": {"type": "integer"},
                            "bytes": {"type": "integer"},
                            "fast_packets": {"type": "integer"},
                            "fast_bytes": {"type": "integer"},
                            "drops": {
                                "type": "object",
                                "additionalProperties": {"type": "integer"},
                            },
                            "links": {
                                "type": "object",
                                "description": "role (inside/outside) -> rx/tx "
                                "packets and bytes of its interface",
                                "additionalProperties": {
                                    "type": "object",
                                    "additionalProperties": {"type": "integer"},
                                },
                            },
                            "conntrack_count": _COUNT,
                            "conntrack_max": _COUNT,
                            "conntrack_insert_failed": _COUNT,
                            "nat_ports_busiest": _COUNT,
                            "applied_version": _COUNT,
                            "converged": {"type": "boolean"},
                            "role": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        }
    ),
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {},
                },
            }
        },
    },
    "FieldError": {
        "type": "object",
        "required": ["path", "value", "message"],
        "properties": {"path": {"type": "string"}, "value": {}, "message": {"type": "string"}},
    },
    "Change": {
        "type": "object",
        "required": ["op", "path"],
        "properties": {
            "op": {"enum": ["added", "removed", "changed"]},
            "path": {"type": "string"},
            "old": {},
            "new": {},
        },
    },
    "VersionInfo": {
        "type": "object",
        "required": ["version", "actor", "created_at", "summary", "sha256", "rollback_of"],
        "properties": {
            "version": {"type": "integer"},
            "actor": {"type": "string"},
            "created_at": {"type": "number"},
            "summary": {"type": "string"},
            "sha256": {"type": "string"},
            "rollback_of": {"type": ["integer", "null"]},
        },
    },
    "ConfigEnvelope": {
        "type": "object",
        "required": ["version", "document"],
        "properties": {"version": _VERSION, "document": _ref("ConfigDocument")},
    },
    "PutRequest": {
        "type": "object",
        "required": ["document"],
        "additionalProperties": False,
        "properties": {"version": _VERSION, "document": _ref("ConfigDocument")},
    },
    "WriteResult": {
        "type": "object",
        "required": ["version", "changes"],
        "properties": {
            "version": {"type": "integer"},
            "changes": {"type": "array", "items": _ref("Change")},
        },
    },
    "ChangeSetRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "stack_name": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9-]{0,127}$"},
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {key: {"type": "string"} for key in OPERATOR_PARAMETERS},
            },
        },
    },
    "ChangeSetStaged": {
        "type": "object",
        "required": ["config_version", "change_set"],
        "properties": {
            "config_version": _VERSION,
            "change_set": {
                "type": "object",
                "required": [
                    "stack_name",
                    "change_set_name",
                    "change_set_id",
                    "status",
                    "features",
                ],
                "properties": {
                    "stack_name": {"type": "string"},
                    "change_set_name": {"type": "string"},
                    "change_set_id": {"type": "string"},
                    "change_set_type": {"enum": ["CREATE", "UPDATE"]},
                    "status": {"type": "string"},
                    "status_reason": {"type": "string"},
                    "features": {"type": "array", "items": {"type": "string"}},
                    "parameters": {"type": "object"},
                    "changes": {"type": "array"},
                    "execute": {"type": "string"},
                },
            },
        },
    },
    "RollbackRequest": {
        "type": "object",
        "required": ["to_version"],
        "additionalProperties": False,
        "properties": {
            "to_version": {"type": "integer", "minimum": 1, "maximum": 999_999_999_999},
            "version": _VERSION,
        },
    },
    "ValidateRequest": {
        "type": "object",
        "required": ["document"],
        "additionalProperties": False,
        "properties": {
            "document": {"type": "object"},
            "version": _VERSION,
            "outside_addresses": {
                "type": "array",
                "items": {"type": "string", "format": "ipv4"},
                "minItems": 1,
            },
        },
    },
    "ValidateResult": {
        "type": "object",
        "required": ["valid", "errors"],
        "properties": {
            "valid": {"type": "boolean"},
            "errors": {"type": "array", "items": _ref("FieldError")},
            "base_version": {"type": "integer"},
            "changes": {"type": "array", "items": _ref("Change")},
            "nftables": {"type": "string"},
            "outside_addresses": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Status": {
        "type": "object",
        "required": ["desired_version", "instances"],
        "properties": {
            "desired_version": {"type": "integer"},
            "instances": {"type": "object", "additionalProperties": {"type": "object"}},
        },
    },
}

_AUTH_ERRORS = {
    "401": _error("missing or unknown bearer token"),
    "503": _error("the config store is unreachable"),
}
_WRITE_ERRORS = {
    **_AUTH_ERRORS,
    "400": _error("malformed JSON or If-Match"),
    "403": _error("the token's role is read; writes need admin"),
    "409": _error("the base version is not the newest: re-read and retry"),
    "413": _error("request body too large"),
    "422": _error("invalid document (details.errors: path, value, message); nothing stored"),
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": '^(W/)?"?[0-9]{1,12}"?$'},
    "description": 'base config version, e.g. "3"',
}


def _history_get(schema: str, summary: str) -> dict[str, Any]:
    """GET of a history endpoint: samples newer than ``since``, answered as ``schema``."""
    return {
        "get": {
            "summary": summary,
            "parameters": [
                {"name": "since", "in": "query", "schema": {"type": "number", "default": 0}}
            ],
            "responses": {
                "200": _json(_ref(schema), "samples, oldest first"),
                "400": _error("since is not a number"),
                **_AUTH_ERRORS,
            },
        }
    }


def _paths() -> dict[str, Any]:
    write_ok = {"200": {**_json(_ref("WriteResult"), "committed"), "headers": _ETAG}}
    return {
        "/v1/config": {
            "get": {
                "summary": "The newest config document (secrets masked)",
                "responses": {
                    "200": {**_json(_ref("ConfigEnvelope"), "document"), "headers": _ETAG},
                    "404": _error("nothing written yet"),
                    **_AUTH_ERRORS,
                },
            },
            "put": {
                "summary": "Replace the document (base version in If-Match or version)",
                "parameters": [_IF_MATCH],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("PutRequest")}},
                },
                "responses": {
                    **write_ok,
                    **_WRITE_ERRORS,
                    "428": _error("no base version given"),
                },
            },
            "patch": {
                "summary": "JSON merge patch (RFC 7396) against the If-Match version",
                "parameters": [{**_IF_MATCH, "required": True}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/merge-patch+json": {"schema": {"type": "object"}},
                        "application/json": {"schema": {"type": "object"}},
                    },
                },
                "responses": {**write_ok, **_WRITE_ERRORS, "428": _error("no If-Match")},
            },
        },
        "/v1/config/versions": {
            "get": {
                "summary": "Revision history, newest first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    }
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["versions"],
                            "properties": {
                                "versions": {"type": "array", "items": _ref("VersionInfo")}
                            },
                        },
                        "history",
                    ),
                    "400": _error("bad limit"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/config/versions/{version}": {
            "get": {
                "summary": "One revision with its metadata",
                "parameters": [
                    {
                        "name": "version",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 999999999999},
                    }
                ],
                "responses": {
                    "200": {
                        **_json(
                            {
                                "type": "object",
                                "required": ["version", "info", "document"],
                                "properties": {
                                    "version": {"type": "integer"},
                                    "info": _ref("VersionInfo"),
                                    "document": _ref("ConfigDocument"),
                                },
                            },
                            "revision",
                        ),
                        "headers": _ETAG,
                    },
                    "400": _error("bad version"),
                    "404": _error("no such version"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/config/rollback": {
            "post": {
                "summary": "Store an earlier revision's content as a new revision",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("RollbackRequest")}},
                },
                "responses": {**write_ok, **_WRITE_ERRORS, "404": _error("no such version")},
            }
        },
        "/v1/config/validate": {
            "post": {
                "summary": "Dry run: errors, or the diff and the rendered nftables ruleset",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ValidateRequest")}},
                },
                "responses": {
                    "200": _json(_ref("ValidateResult"), "result of the dry run"),
                    "400": _error("malformed JSON"),
                    "404": _error("no such base version"),
                    "413": _error("request body too large"),
                    "422": _error("malformed request envelope"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/aws/changesets": {
            "post": {
                "summary": "Stage a change set of the operational-role stack for the newest "
                "document's features (the operator executes it)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ChangeSetRequest")}},
                },
                "responses": {
                    "201": _json(_ref("ChangeSetStaged"), "the staged change set"),
                    **_AUTH_ERRORS,
                    "400": _error("malformed JSON"),
                    "403": _error("the token's role is read; staging needs admin"),
                    "409": _error("no AWS here, no aws.deployment, or the core role is inert"),
                    "413": _error("request body too large"),
                    "422": _error("bad request, or the change set would widen a trust policy"),
                },
            }
        },
        "/v1/status": {
            "get": {
                "summary": "Desired version; applied version and convergence per instance",
                "responses": {"200": _json(_ref("Status"), "status"), **_AUTH_ERRORS},
            }
        },
        "/v1/status/history": _history_get(
            "StatusHistory",
            "Per-instance counter samples newer than since (bounded window, "
            "in memory: the dashboard's charts)",
        ),
        "/v1/flows": {
            "get": {
                "summary": "Top talkers and destinations from each instance's flow log, and "
                "the newest records naming an address (reads at most the last "
                "flow_read_bytes of the current file)",
                "parameters": [
                    {
                        "name": "address",
                        "in": "query",
                        "description": "an IP address: source or destination, before or after NAT",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
                    },
                ],
                "responses": {
                    "200": _json(_ref("Flows"), "per instance"),
                    "400": _error("address not an IP address, or limit outside 1..200"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/ai/usage": {
            "get": {
                "summary": "AI gateway usage: requests, tokens and cost per key and model, "
                "budget use against each key's limits (from the gateway's state file)",
                "responses": {
                    "200": _json(_ref("AiUsage"), "usage per key"),
                    "404": _error("no config document yet"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/ai/usage/history": _history_get(
            "AiUsageHistory",
            "AI gateway usage over time: samples of requests, tokens and cost "
            "per key and model and of the overflow decisions newer than since "
            "(bounded window, in memory)",
        ),
        "/v1/ai/keys": {
            "post": {
                "summary": "Create an AI gateway key (a config write): the key is in this "
                "answer only; the document keeps its HMAC",
                "parameters": [{**_IF_MATCH, "required": True}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("AiKeyRequest")}},
                },
                "responses": {
                    "201": {**_json(_ref("AiKeyCreated"), "created"), "headers": _ETAG},
                    **_WRITE_ERRORS,
                    "409": _error(
                        "the base version is not the newest, or this process cannot read "
                        "ai.key_secret (code key_secret_missing)"
                    ),
                    "428": _error("no If-Match"),
                },
            }
        },
        "/v1/ai/keys/{id}/revoke": {
            "post": {
                "summary": "Revoke an AI gateway key (a config write: ai.keys[].revoked)",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {**_IF_MATCH, "required": True},
                ],
                "responses": {
                    "200": {**_json(_ref("WriteResult"), "committed"), "headers": _ETAG},
                    **_WRITE_ERRORS,
                    "404": _error("no key with this id"),
                    "428": _error("no If-Match"),
                },
            }
        },
        "/v1/whoami": {
            "get": {
                "summary": "The calling token's name and role",
                "responses": {"200": _json(_ref("Principal"), "the caller"), **_AUTH_ERRORS},
            }
        },
        "/v1/alerts": {
            "get": {
                "summary": "Newest inspection alerts and drops per instance (newest first), "
                "with per-signature counts",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {"name": "sid", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {
                    "200": {
                        "description": "alerts per instance",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "400": _error("limit or sid not an integer, or limit outside 1..1000"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text format",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": _error("metrics.enabled is false in the config document"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "security": [],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"status": {"const": "ok"}}}, "alive"
                    )
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
            }
        },
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at /openapi.json."""
    doc_schema = ConfigDocument.model_json_schema(ref_template=_REF)
    components = dict(doc_schema.pop("$defs", {}))
    components["ConfigDocument"] = doc_schema
    components.update(_SCHEMAS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Cloud Spectra Gateway config API",
            "version": "1",
            "description": "Versioned config document of the appliance.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
        },
        "paths": _paths(),
    }
