"""The lab's AWS endpoint: moto's server, with the few behaviours the VPC lab needs made
to match AWS.

Run as ``python -m perf.lab.vpc.motod --host H --port P --lifecycle-log FILE``. Before
moto's own ``main`` starts, :func:`patch` changes moto (5.2.x) in this process only:

* ``AssignPrivateIpAddresses`` with ``AllowReassignment=true`` moves the address: it
  leaves the ENI that held it (moto adds it to the new ENI and keeps it on the old one);
  without ``AllowReassignment`` an address held by another ENI is refused
  (``InvalidParameterValue``), as AWS does (EC2 API Reference, AssignPrivateIpAddresses).
* ``AssociateAddress`` with ``PrivateIpAddress`` associates the Elastic IP with that
  address (moto always uses the ENI's primary address); ``DescribeAddresses`` reports
  it, and the association follows the address when it is reassigned to another ENI.
* ``CompleteLifecycleAction`` and ``RecordLifecycleActionHeartbeat`` (absent from moto)
  are accepted when the group and the hook exist, and appended as JSON lines to the
  lifecycle log, which tests read (``VpcLab.lifecycle_actions()``); completing the
  launch hook with ``CONTINUE`` puts the instance ``InService``.

Each patch checks that the moto internals it relies on exist and refuses to start
otherwise, naming what moved.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

_log_lock = threading.Lock()


class MotoChanged(RuntimeError):
    """moto's internals no longer have what a lab patch relies on."""


def _need(obj: object, name: str) -> Any:
    value = getattr(obj, name, None)
    if value is None:
        raise MotoChanged(
            f"{getattr(obj, '__name__', obj)}.{name} is gone: update perf.lab.vpc.motod"
        )
    return value


def _patch_reassignment() -> None:
    from moto.ec2.exceptions import InvalidParameterValueError
    from moto.ec2.responses.elastic_network_interfaces import ElasticNetworkInterfaces

    original = _need(ElasticNetworkInterfaces, "assign_private_ip_addresses")

    def assign_private_ip_addresses(self: Any) -> Any:
        eni_id = self._get_param("NetworkInterfaceId")
        wanted = set(self._get_param("PrivateIpAddresses", []))
        reassign = str(self._get_param("AllowReassignment", False)).lower() == "true"
        backend = self.ec2_backend
        subnet = backend.get_network_interface(eni_id).subnet.id  # addresses are per subnet
        for other in backend.enis.values():
            if other.id == eni_id or other.subnet.id != subnet:
                continue
            held = [p for p in other.private_ip_addresses if p["PrivateIpAddress"] in wanted]
            if not held:
                continue
            if not reassign or any(p.get("Primary") for p in held):
                raise InvalidParameterValueError(held[0]["PrivateIpAddress"])
            other.private_ip_addresses = [
                p for p in other.private_ip_addresses if p["PrivateIpAddress"] not in wanted
            ]
        result = original(self)
        eni = backend.get_network_interface(eni_id)
        for eip in backend.addresses:  # an association stays with its private address
            moved = eip.eni is not None and eip.eni is not eni and eip.eni.subnet.id == subnet
            if moved and getattr(eip, "lab_private_ip", None) in wanted:
                eip.eni.public_ip = None
                eip.eni, eip.instance = eni, eni.instance
                eni.public_ip = eip.public_ip
        return result

    ElasticNetworkInterfaces.assign_private_ip_addresses = assign_private_ip_addresses  # type: ignore[method-assign]


def _patch_eip_private_ip() -> None:
    from moto.ec2.models.elastic_ip_addresses import ElasticAddress
    from moto.ec2.responses.elastic_ip_addresses import ElasticIPAddresses

    original = _need(ElasticIPAddresses, "associate_address")
    _need(ElasticAddress, "private_ip_address")

    def associate_address(self: Any) -> Any:
        result = original(self)
        backend = self.ec2_backend
        if self._get_param("AllocationId"):
            eip = backend.address_by_allocation([self._get_param("AllocationId")])[0]
        elif self._get_param("PublicIp"):
            eip = backend.address_by_ip([self._get_param("PublicIp")])[0]
        else:
            return result
        eip.lab_private_ip = self._get_param("PrivateIpAddress")
        return result

    def private_ip_address(self: Any) -> str | None:
        if self.eni is None:
            return None
        wanted = getattr(self, "lab_private_ip", None)
        return str(wanted or self.eni.private_ip_address)

    ElasticIPAddresses.associate_address = associate_address  # type: ignore[method-assign]
    ElasticAddress.private_ip_address = property(private_ip_address)  # type: ignore[method-assign,assignment]


def _patch_lifecycle_actions(log_path: Path) -> None:
    from moto.autoscaling.exceptions import ValidationError
    from moto.autoscaling.responses import AutoScalingResponse
    from moto.core.responses import EmptyResult

    def _record(self: Any, action: str) -> Any:
        group_name = self._get_param("AutoScalingGroupName")
        hook_name = self._get_param("LifecycleHookName")
        instance_id = self._get_param("InstanceId")
        backend = self.autoscaling_backend
        group = backend.autoscaling_groups.get(group_name)
        if group is None:
            raise ValidationError(f"AutoScalingGroup name not found - {group_name}")
        hooks = backend.describe_lifecycle_hooks(group_name, [hook_name])
        if not hooks:
            raise ValidationError(
                f"No Lifecycle Hook found with name {hook_name} for group {group_name}"
            )
        result = self._get_param("LifecycleActionResult")
        entry = {
            "action": action,
            "time": time.time(),
            "group": group_name,
            "hook": hook_name,
            "transition": hooks[0].lifecycle_transition,
            "instance_id": instance_id,
            "token": self._get_param("LifecycleActionToken"),
            "result": result,
        }
        with _log_lock, log_path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        if result == "CONTINUE" and str(hooks[0].lifecycle_transition).endswith("LAUNCHING"):
            for state in group.instance_states:
                if state.instance.id == instance_id:
                    state.lifecycle_state = "InService"
        return EmptyResult()

    def complete_lifecycle_action(self: Any) -> Any:
        return _record(self, "CompleteLifecycleAction")

    def record_lifecycle_action_heartbeat(self: Any) -> Any:
        return _record(self, "RecordLifecycleActionHeartbeat")

    AutoScalingResponse.complete_lifecycle_action = complete_lifecycle_action  # type: ignore[attr-defined]
    AutoScalingResponse.record_lifecycle_action_heartbeat = record_lifecycle_action_heartbeat  # type: ignore[attr-defined]


def patch(lifecycle_log: Path) -> None:
    """Make this process's moto behave as the module doc says."""
    _patch_reassignment()
    _patch_eip_private_ip()
    _patch_lifecycle_actions(lifecycle_log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.lab.vpc.motod")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifecycle-log", type=Path, required=True)
    args = parser.parse_args(argv)
    patch(args.lifecycle_log)
    from moto.server import main as moto_main

    moto_main(["--host", args.host, "--port", str(args.port)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
