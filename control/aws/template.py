"""The operational-role stack's template, read and rendered for checks before staging.

``deploy/cloudformation/operational-roles.yaml`` is found relative to this package (never
the working directory).  It is written with the long form of CloudFormation's intrinsic
functions ("Intrinsic function reference" in the CloudFormation user guide), so it is
plain YAML; :func:`render` resolves the few it uses (``Ref`` of parameters and pseudo
parameters, ``Fn::Sub`` in both forms, ``Fn::If``, ``Fn::Equals``, ``Fn::Not``, ``Condition``,
``AWS::NoValue``) for given parameter values, giving the roles CloudFormation would
create with their trust and inline policies.  The change-set stager checks those trust
policies before it calls CreateChangeSet; the tests feed the policies to parliament.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_PATH = (
    Path(__file__).resolve().parents[2] / "deploy" / "cloudformation" / "operational-roles.yaml"
)
"""Resolved from the package's own location (a source checkout or the appliance image)."""

_NO_VALUE = object()
_SUB_RE = re.compile(r"\$\{([A-Za-z0-9_:.]+)\}")


class TemplateError(ValueError):
    """The template cannot be read or uses something the renderer does not resolve."""


@dataclass(frozen=True, slots=True)
class RenderedRole:
    """One ``AWS::IAM::Role`` the stack would create, intrinsics resolved."""

    logical_id: str
    name: str
    trust: dict[str, Any]
    policies: dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Pseudo:
    """The pseudo parameters a rendering assumes."""

    account_id: str = "123456789012"
    region: str = "eu-west-1"
    partition: str = "aws"
    stack_name: str = "spectra-operational-roles"


def load(path: Path = TEMPLATE_PATH) -> tuple[str, dict[str, Any]]:
    """The template's text (sent as TemplateBody) and its parsed form."""
    try:
        text = path.read_text()
        parsed = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"cannot read the operational-role template {path}: {exc}") from exc
    if not isinstance(parsed, dict) or not isinstance(parsed.get("Resources"), dict):
        raise TemplateError(f"{path}: expected a CloudFormation template with Resources")
    return text, parsed


def parameter_values(template: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, str]:
    """Defaults overlaid with ``given``; a parameter with neither is an error."""
    declared = template.get("Parameters", {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise TemplateError(
            f"unknown stack parameter(s) {', '.join(unknown)}: expected {', '.join(declared)}"
        )
    values: dict[str, str] = {}
    for name, spec in declared.items():
        if name in given:
            values[name] = given[name]
        elif "Default" in spec:
            values[name] = str(spec["Default"])
        else:
            raise TemplateError(f"stack parameter {name} has no value and no default")
    return values


class _Renderer:
    def __init__(self, template: Mapping[str, Any], params: Mapping[str, str], pseudo: Pseudo):
        self.params = dict(params)
        self.params.update(
            {
                "AWS::AccountId": pseudo.account_id,
                "AWS::Region": pseudo.region,
                "AWS::Partition": pseudo.partition,
                "AWS::StackName": pseudo.stack_name,
            }
        )
        self.conditions = template.get("Conditions", {})
        self._decided: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._decided:
            if name not in self.conditions:
                raise TemplateError(f"unknown condition {name}")
            self._decided[name] = bool(self.value(self.conditions[name]))
        return self._decided[name]

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name not in self.params:
            raise TemplateError(f"Ref {name}: not a parameter or supported pseudo parameter")
        return self.params[name]

    def sub(self, text: str, variables: Mapping[str, Any] | None = None) -> str:
        local = {k: str(self.value(v)) for k, v in (variables or {}).items()}

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            return local[name] if name in local else str(self.ref(name))

        return _SUB_RE.sub(one, text)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(x) for x in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::Sub":
                if isinstance(arg, str):
                    return self.sub(arg)
                if isinstance(arg, list) and len(arg) == 2 and isinstance(arg[1], dict):
                    return self.sub(str(arg[0]), arg[1])
                raise TemplateError("Fn::Sub: expected a string or [string, variables]")
            if key == "Fn::If":
                name, yes, no = arg
                return self.value(yes if self.condition(name) else no)
            if key == "Fn::Equals":
                left, right = (self.value(x) for x in arg)
                return left == right
            if key == "Fn::Not":
                return not self.value(arg[0])
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                raise TemplateError(f"{key}: not resolved by the renderer")
        out = {k: self.value(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not _NO_VALUE}


def render(
    template: Mapping[str, Any], params: Mapping[str, str], pseudo: Pseudo | None = None
) -> list[RenderedRole]:
    """The roles the stack creates for ``params`` (full values, see
    :func:`parameter_values`), in template order."""
    renderer = _Renderer(template, params, pseudo or Pseudo())
    roles = []
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::IAM::Role":
            continue
        if "Condition" in resource and not renderer.condition(resource["Condition"]):
            continue
        props = renderer.value(resource.get("Properties", {}))
        policies = {p["PolicyName"]: p["PolicyDocument"] for p in props.get("Policies", [])}
        roles.append(
            RenderedRole(
                logical_id,
                str(props.get("RoleName", logical_id)),
                props.get("AssumeRolePolicyDocument", {}),
                policies,
            )
        )
    return roles
