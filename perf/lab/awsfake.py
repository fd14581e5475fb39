"""moto, completed where the gateway relies on AWS behaviour moto does not model.

The lab and the tests hold the VPC in a moto server. Three behaviours the gateway's
failover depends on are missing or different in moto 5.2; :func:`patch` supplies them
the way the EC2 and Auto Scaling API references describe them:

* ``AssociateAddress`` with ``NetworkInterfaceId`` and ``PrivateIpAddress``: moto ignores
  the private IP and reports the ENI's primary one; here the Elastic IP is associated
  with the private IP asked for (a secondary IP -- the NAT address);
* ``AssignPrivateIpAddresses`` with ``AllowReassignment``: moto leaves the address on the
  ENI that held it too; here it moves (AWS: "reassigned from one network interface to
  another"), and without ``AllowReassignment`` an address held elsewhere is refused;
* ``CompleteLifecycleAction`` and ``RecordLifecycleActionHeartbeat`` do not exist in moto:
  here they are accepted for a hook of the group and an instance in it, recorded in
  :data:`LIFECYCLE_ACTIONS` (and readable from the server's process), and a ``CONTINUE``
  of a launch hook leaves the instance ``InService``, an ``ABANDON`` marks it
  ``Terminating``.

``python -m perf.lab.awsfake --host H --port P`` runs a patched moto server (the lab's);
tests that run moto in-process call :func:`patch` before starting it.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from moto.autoscaling.exceptions import ValidationError
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.responses import EmptyResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.elastic_ip_addresses import ElasticAddress
from moto.ec2.responses.elastic_ip_addresses import ElasticIPAddresses
from moto.ec2.responses.elastic_network_interfaces import ElasticNetworkInterfaces

LIFECYCLE_ACTIONS: list[dict[str, str]] = []
_lock = threading.Lock()
_patched = False


def _eip_private_ip(self: ElasticAddress) -> str | None:
    wanted = getattr(self, "spectra_private_ip", None)
    if self.eni is None:
        return None
    held = {p["PrivateIpAddress"] for p in self.eni.private_ip_addresses}
    return wanted if wanted in held else self.eni.private_ip_address


def _associate_address(original: Any) -> Any:
    def associate(self: ElasticIPAddresses) -> Any:
        result = original(self)
        private_ip = self._get_param("PrivateIpAddress")
        allocation = self._get_param("AllocationId")
        if private_ip and allocation:
            (eip,) = self.ec2_backend.address_by_allocation([allocation])
            eip.spectra_private_ip = private_ip
        return result

    return associate


def _assign_private_ip_addresses(original: Any) -> Any:
    def assign(self: ElasticNetworkInterfaces) -> Any:
        eni_id = self._get_param("NetworkInterfaceId")
        wanted = set(self._get_param("PrivateIpAddresses", []))
        reassign = str(self._get_param("AllowReassignment", "false")).lower() == "true"
        subnet = self.ec2_backend.get_network_interface(eni_id).subnet.id
        for other in self.ec2_backend.enis.values():
            if other.id == eni_id or other.subnet.id != subnet:
                continue
            held = {p["PrivateIpAddress"] for p in other.private_ip_addresses} & wanted
            if held and not reassign:
                raise EC2ClientError(
                    "InvalidParameterValue",
                    f"{sorted(held)} already assigned to {other.id} (AllowReassignment not set)",
                )
            if held:
                other.private_ip_addresses = [
                    p for p in other.private_ip_addresses if p["PrivateIpAddress"] not in held
                ]
        return original(self)

    return assign


def _lifecycle(kind: str) -> Any:
    def action(self: AutoScalingResponse) -> Any:
        group_name = self._get_param("AutoScalingGroupName")
        hook_name = self._get_param("LifecycleHookName")
        instance_id = self._get_param("InstanceId")
        backend = self.autoscaling_backend
        hooks = backend.describe_lifecycle_hooks(as_name=group_name, lifecycle_hook_names=[])
        hook = next((h for h in hooks if h.name == hook_name), None)
        if hook is None:
            raise ValidationError(f"No Lifecycle Hook found: {hook_name} on {group_name}")
        group = backend.autoscaling_groups[group_name]
        state = next((s for s in group.instance_states if s.instance.id == instance_id), None)
        if state is None:
            raise ValidationError(f"Instance {instance_id} is not in {group_name}")
        record = {
            "action": kind,
            "group": group_name,
            "hook": hook_name,
            "transition": hook.lifecycle_transition or "",
            "instance": instance_id,
            "result": self._get_param("LifecycleActionResult") or "",
        }
        with _lock:
            LIFECYCLE_ACTIONS.append(record)
        if kind == "complete" and record["transition"].endswith("EC2_INSTANCE_LAUNCHING"):
            state.lifecycle_state = "InService" if record["result"] == "CONTINUE" else "Terminating"
        return EmptyResult()

    return action


def patch() -> None:
    """Apply the completions to this process's moto (idempotent)."""
    global _patched
    with _lock:
        if _patched:
            return
        ElasticAddress.private_ip_address = property(_eip_private_ip)  # type: ignore[assignment,method-assign]
        ElasticIPAddresses.associate_address = _associate_address(  # type: ignore[method-assign]
            ElasticIPAddresses.associate_address
        )
        ElasticNetworkInterfaces.assign_private_ip_addresses = _assign_private_ip_addresses(  # type: ignore[method-assign]
            ElasticNetworkInterfaces.assign_private_ip_addresses
        )
        AutoScalingResponse.complete_lifecycle_action = _lifecycle("complete")  # type: ignore[attr-defined]
        AutoScalingResponse.record_lifecycle_action_heartbeat = _lifecycle("heartbeat")  # type: ignore[attr-defined]
        _patched = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.lab.awsfake", description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    patch()
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
