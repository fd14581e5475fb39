"""A truthful document: every field the JSON Schema accepts has a consumer that reads
it (the reviewed map in :mod:`tests.unit.control.field_consumers`), or is refused unless
it has its default, or belongs to a section the status reports as not yet rendered."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from control.agent import UNRENDERED_SECTIONS
from control.config import ConfigValidationError, json_schema, parse_document
from tests.unit.control.field_consumers import CONSUMERS, REFUSED, REFUSED_VALUES, UNRENDERED

ROOT = Path(__file__).resolve().parents[3]
# where fields are declared and validated, not where they take effect
MODEL_MODULES = {
    "ai/config.py", "ai/semcache/config.py", "nfq/policy.py", "control/cli_config.py",
    "control/api/openapi.py",
    *(str(p.relative_to(ROOT)) for p in (ROOT / "control/config").glob("*.py")),
}  # fmt: skip


def schema_leaves(schema: dict[str, Any]) -> set[str]:
    """Every field path of the schema that holds a value (``[]``: list item, ``{}``: a
    value of a map); alternatives (Optional, unions) are merged."""
    defs = schema.get("$defs", {})
    out: set[str] = set()

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[1]]
        return node

    def walk(node: dict[str, Any], path: str) -> None:
        node = resolve(node)
        alternatives = node.get("anyOf") or node.get("oneOf") or node.get("allOf")
        if alternatives:
            for alt in alternatives:
                walk(alt, path)
        elif node.get("type") == "array" and "items" in node:
            walk(node["items"], path + "[]")
        elif node.get("properties"):
            for key, sub in node["properties"].items():
                walk(sub, f"{path}.{key}" if path else key)
        elif node.get("type") == "null":
            return
        elif isinstance(extra := node.get("additionalProperties"), dict) and (
            resolve(extra).get("properties") or "anyOf" in extra or "oneOf" in resolve(extra)
        ):
            walk(extra, path + "{}")
        else:
            out.add(path)

    walk(schema, "")
    return out


def _identifier(path: str, consumer: str) -> tuple[str, str]:
    module, _, alias = consumer.partition(":")
    return module, alias or path.rsplit(".", 1)[-1].replace("[]", "").replace("{}", "")


def test_every_schema_field_is_mapped_and_every_mapping_is_a_field() -> None:
    leaves = schema_leaves(json_schema())
    assert len(leaves) > 200  # the walk reached the nested sections
    assert sorted(leaves - set(CONSUMERS)) == [], "fields with no reviewed consumer"
    assert sorted(set(CONSUMERS) - leaves) == [], "mapped paths the schema does not have"


@pytest.mark.parametrize("path", sorted(p for p, c in CONSUMERS.items() if ":" in c or "/" in c))
def test_the_consumer_reads_the_field(path: str) -> None:
    module, name = _identifier(path, CONSUMERS[path])
    assert module not in MODEL_MODULES, f"{path}: {module} declares fields, it gives no effect"
    source = (ROOT / module).read_text()
    assert re.search(rf"\b{re.escape(name)}\b", source), f"{path}: {module} never reads {name}"


@pytest.mark.parametrize("path", sorted(p for p, c in CONSUMERS.items() if c == REFUSED))
def test_a_refused_field_names_itself_and_what_is_supported(path: str) -> None:
    value = REFUSED_VALUES[path]
    data: dict[str, Any] = {"interfaces": {"inside": "a", "outside": "b"}}
    node = data
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    with pytest.raises(ConfigValidationError) as info:
        parse_document(data)
    [error] = info.value.errors
    assert error["path"] == path and "expected" in error["message"]


def test_unrendered_fields_belong_to_a_section_reported_as_unrendered() -> None:
    sections = {p.split(".")[0] for p, c in CONSUMERS.items() if c == UNRENDERED}
    assert sections <= set(UNRENDERED_SECTIONS)


def test_the_walk_sees_a_new_field() -> None:
    """The check can fail: a field added to the schema without a consumer is found."""
    schema = json_schema()
    schema["$defs"]["Logging"]["properties"]["colour"] = {"type": "string"}
    assert schema_leaves(schema) - set(CONSUMERS) == {"logging.colour"}
