"""What every template is built from: the intrinsic functions, tags, names, patterns."""

from __future__ import annotations

from typing import Any

ZONES = ("A", "B", "C")
THIRD = "ThirdZone"
TAG = "spectra:deployment"
AZ_TAG = "spectra:az"
ROLE_TAG = "spectra:role"
LAUNCH_HOOK = "spectra-launch"  # control/config/aws.py Lifecycle defaults
TERMINATE_HOOK = "spectra-terminate"
LEASE_KEY = "lease_key"  # control/aws/lease.py KEY
GENEVE_PORT = 6081
MGMT_CIDR = r"(\d{1,3}\.){3}\d{1,3}/([1-9]|[12][0-9]|3[0-2])"
ZONE = r"[a-z]{2}(-[a-z]+)+-\d{1,2}[a-z]"
RTB = r"rtb-[0-9a-f]{8,17}"
SUBNET = r"subnet-[0-9a-f]{8,17}"


# -- intrinsic functions ---------------------------------------------------------------


def ref(name: str) -> dict[str, Any]:
    return {"Ref": name}


def sub(text: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"Fn::Sub": text if variables is None else [text, variables]}


def att(resource: str, attribute: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [resource, attribute]}


def iff(condition: str, yes: Any, no: Any) -> dict[str, Any]:
    return {"Fn::If": [condition, yes, no]}


def equals(a: Any, b: Any) -> dict[str, Any]:
    return {"Fn::Equals": [a, b]}


def nonempty(param: str) -> dict[str, Any]:
    return {"Fn::Not": [equals(ref(param), "")]}


NO_VALUE = ref("AWS::NoValue")


def arn(service: str, resource: str, *, region: bool = True) -> dict[str, Any]:
    where = "${AWS::Region}:${AWS::AccountId}" if region else "${AWS::AccountId}"
    return sub(f"arn:${{AWS::Partition}}:{service}:{where}:{resource}")


def tags(name: Any, role: str | None = None, zone: Any = None) -> list[dict[str, Any]]:
    out = [{"Key": "Name", "Value": name}, {"Key": TAG, "Value": ref("Name")}]
    if zone is not None:
        out.append({"Key": AZ_TAG, "Value": zone})
    if role is not None:
        out.append({"Key": ROLE_TAG, "Value": role})
    return out


def when(index: int, resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` only when its zone exists (the third needs ``ZoneCount`` 3)."""
    return {"Condition": THIRD, **resource} if index == 2 else resource


def output(value: Any, description: str, export: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"Description": description, "Value": value}
    if export:
        out["Export"] = {"Name": sub(f"${{AWS::StackName}}-{export}")}
    return out


def per_zone(make: Any) -> Any:
    """A list over the zones: two, or three with ``ThirdZone``."""
    return iff(THIRD, [make(z) for z in ZONES], [make(z) for z in ZONES[:2]])


def header(description: str) -> dict[str, Any]:
    return {"AWSTemplateFormatVersion": "2010-09-09", "Description": description}
