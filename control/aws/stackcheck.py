"""Checks a CloudFormation template's parameter values offline, as CloudFormation would.

CloudFormation validates parameters when a stack or change set is created: each value
against its ``Type``, ``AllowedValues``, ``AllowedPattern``, ``MinLength``/``MaxLength``
and ``MinValue``/``MaxValue``, then every ``Rules`` entry whose ``RuleCondition`` holds
("Parameters" and "Rules" in the CloudFormation user guide; rule-specific intrinsic
functions: ``Fn::And``, ``Fn::Contains``, ``Fn::EachMemberEquals``, ``Fn::EachMemberIn``,
``Fn::Equals``, ``Fn::Not``, ``Fn::Or``).  ``cfn-lint`` checks the first part only and
moto neither, so :func:`check` does both here; ``spectra aws validate-stack`` runs it
before a deployment and the tests run it on the fleet templates.  Every problem names the
parameter (for a rule: the parameters its assertion reads) and what is accepted.

Functions that need the account (``Fn::ValueOf``, ``Fn::RefAll``, ``Fn::ValueOfAll``)
cannot be evaluated offline; a rule using one is reported, not guessed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

LIST_TYPES = ("CommaDelimitedList", "List<")


@dataclass(frozen=True, slots=True)
class Problem:
    """One parameter value CloudFormation would refuse, and why."""

    parameter: str
    message: str

    def __str__(self) -> str:
        return f"{self.parameter}: {self.message}"


class TemplateError(ValueError):
    """The template cannot be read (not YAML/JSON, no mapping)."""


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no stubs here
    """YAML with CloudFormation's short-form tags (``!Ref X`` -> ``{"Ref": "X"}``)."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    key = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {key: value}


_Loader.add_multi_constructor("!", _tagged)


def load_template(text: str) -> dict[str, Any]:
    """A template's YAML (short or long intrinsic forms) or JSON text as data."""
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.load(text, _Loader)
    except (ValueError, yaml.YAMLError) as exc:
        raise TemplateError(f"not a CloudFormation template: {exc}") from None
    if not isinstance(data, dict):
        raise TemplateError("not a CloudFormation template: expected a mapping at the top")
    return data


def _value_problem(name: str, spec: Mapping[str, Any], value: str) -> str | None:
    kind = str(spec.get("Type", "String"))
    why = spec.get("ConstraintDescription")
    items = [v.strip() for v in value.split(",")] if kind.startswith(LIST_TYPES) else [value]
    allowed = [str(v) for v in spec.get("AllowedValues", [])]
    pattern = spec.get("AllowedPattern")
    for item in items:
        if allowed and item not in allowed:
            return f"{item!r}: expected one of {allowed}" + (f" ({why})" if why else "")
        if pattern is not None and not re.fullmatch(str(pattern), item):
            return f"{item!r}: " + (str(why) if why else f"expected to match {pattern}")
    if kind == "Number":
        try:
            number = float(value)
        except ValueError:
            return f"{value!r}: expected a number"
        low, high = spec.get("MinValue"), spec.get("MaxValue")
        if low is not None and number < float(low):
            return f"{value!r}: expected at least {low}"
        if high is not None and number > float(high):
            return f"{value!r}: expected at most {high}"
    low, high = spec.get("MinLength"), spec.get("MaxLength")
    if low is not None and len(value) < int(low):
        return f"{value!r}: expected at least {low} characters"
    if high is not None and len(value) > int(high):
        return f"{value!r}: expected at most {high} characters"
    return None


class _Unevaluable(Exception):
    """A rule uses a function that needs the AWS account."""


class _Missing(Exception):
    """A rule reads a required parameter that was not given (reported on its own)."""


def _refs(expr: Any) -> list[str]:
    if isinstance(expr, dict):
        if set(expr) == {"Ref"}:
            return [str(expr["Ref"])]
        return [r for v in expr.values() for r in _refs(v)]
    if isinstance(expr, list):
        return [r for v in expr for r in _refs(v)]
    return []


def _eval(expr: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(expr, list):
        return [_eval(e, values) for e in expr]
    if not isinstance(expr, dict):
        return expr
    if len(expr) != 1:
        raise _Unevaluable(f"expected one function, got {sorted(expr)}")
    ((fn, arg),) = expr.items()
    if fn == "Ref":
        if arg not in values:
            raise _Missing(arg)
        return values[arg]
    args = _eval(arg, values)
    if fn == "Fn::Equals":
        return str(args[0]) == str(args[1])
    if fn == "Fn::Not":
        return not args[0]
    if fn == "Fn::And":
        return all(args)
    if fn == "Fn::Or":
        return any(args)
    if fn == "Fn::Contains":
        return args[1] in args[0]
    if fn == "Fn::EachMemberEquals":
        return all(m == args[1] for m in args[0])
    if fn == "Fn::EachMemberIn":
        return all(m in args[1] for m in args[0])
    raise _Unevaluable(f"{fn} cannot be evaluated offline")


def check(template: Mapping[str, Any], given: Mapping[str, str]) -> list[Problem]:
    """Every problem CloudFormation would report for ``given`` parameter values."""
    params: Mapping[str, Any] = template.get("Parameters") or {}
    problems = [
        Problem(name, f"not a parameter of this template: expected one of {sorted(params)}")
        for name in given
        if name not in params
    ]
    values: dict[str, Any] = {}
    for name, spec in params.items():
        if name in given:
            value = given[name]
        elif "Default" in spec:
            value = str(spec["Default"])
        else:
            problems.append(Problem(name, "required: the parameter has no default"))
            continue
        found = _value_problem(name, spec, value)
        if found:
            problems.append(Problem(name, found))
        kind = str(spec.get("Type", "String"))
        values[name] = value.split(",") if kind.startswith(LIST_TYPES) else value
    for rule_name, rule in (template.get("Rules") or {}).items():
        try:
            if "RuleCondition" in rule and not _eval(rule["RuleCondition"], values):
                continue
            for assertion in rule.get("Assertions", []):
                if not _eval(assertion["Assert"], values):
                    named = ", ".join(dict.fromkeys(_refs(assertion["Assert"]))) or rule_name
                    why = assertion.get("AssertDescription", "assertion failed")
                    problems.append(Problem(named, f"rule {rule_name}: {why}"))
        except _Missing as exc:
            if str(exc) not in params:
                problems.append(Problem(f"(rule {rule_name})", f"Ref {exc}: not a parameter"))
        except _Unevaluable as exc:
            problems.append(Problem(f"(rule {rule_name})", f"not checked: {exc}"))
    return problems
