"""A moto server for the CloudFormation tests, with what moto 5.2's CloudFormation lacks
and the fleet templates use, modelled here on the test side (never in the product):

* ``Fn::Cidr`` (moto leaves it unresolved): the first ``count`` subnets of ``cidrBits``
  host bits of the block, as CloudFormation's intrinsic function reference says;
* ``AWS::EC2::NetworkInterface``: moto ignores ``GroupSet``, ``Tags``,
  ``SecondaryPrivateIpAddressCount`` and ``SourceDestCheck``, and does not answer
  ``Fn::GetAtt ... SecondaryPrivateIpAddresses``;
* ``AWS::EC2::EIP``: moto ignores ``Tags`` (the instance role's conditions need them);
* ``AWS::EC2::SecurityGroup``: moto needs ``FromPort``/``ToPort`` even for protocol
  ``-1`` (all traffic), where CloudFormation ignores them;
* ``AWS::AutoScaling::AutoScalingGroup``: moto ignores ``LifecycleHookSpecificationList``;
* ``AWS::ElasticLoadBalancingV2::Listener``: moto takes only HTTP(S) listeners with a
  port; a Gateway Load Balancer's has neither, so it is skipped as unimplemented.

Run as ``python tests/unit/deploy/motocfn.py HOST PORT`` (a subprocess: moto's warnings
about resource types it does not implement must not meet pytest's ``error`` filter).
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any


def patch() -> None:
    from moto.cloudformation import parsing
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.elastic_network_interfaces import NetworkInterface
    from moto.ec2.models.security_groups import SecurityGroup

    original_sg = SecurityGroup.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create_sg(cls: Any, name: str, cfn: Any, *args: Any, **kwargs: Any) -> Any:
        for rule in cfn["Properties"].get("SecurityGroupIngress", []):
            rule.setdefault("FromPort", -1)
            rule.setdefault("ToPort", -1)
        return original_sg(cls, name, cfn, *args, **kwargs)

    SecurityGroup.create_from_cloudformation_json = classmethod(create_sg)  # type: ignore[method-assign,assignment]

    from moto.autoscaling.models import FakeAutoScalingGroup, autoscaling_backends

    original_asg = FakeAutoScalingGroup.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create_asg(
        cls: Any, name: str, cfn: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> Any:
        group = original_asg(cls, name, cfn, account_id, region_name, **kwargs)
        backend = autoscaling_backends[account_id][region_name]
        for hook in cfn["Properties"].get("LifecycleHookSpecificationList", []):
            backend.create_lifecycle_hook(
                hook["LifecycleHookName"],
                group.name,
                hook["LifecycleTransition"],
                int(hook.get("HeartbeatTimeout", 3600)),
                hook.get("DefaultResult", "ABANDON"),
            )
        return group

    FakeAutoScalingGroup.create_from_cloudformation_json = classmethod(create_asg)  # type: ignore[method-assign,assignment]

    # treated as a type moto does not implement (the tests list it): see the module doc
    parsing.get_model_map().pop("AWS::ElasticLoadBalancingV2::Listener", None)

    from moto.ec2.models.elastic_ip_addresses import ElasticAddress

    original_eip = ElasticAddress.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create_eip(
        cls: Any, name: str, cfn: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> Any:
        eip = original_eip(cls, name, cfn, account_id, region_name, **kwargs)
        tags = {t["Key"]: t["Value"] for t in cfn["Properties"].get("Tags", [])}
        if tags:
            ec2_backends[account_id][region_name].create_tags([eip.allocation_id], tags)
        return eip

    ElasticAddress.create_from_cloudformation_json = classmethod(create_eip)  # type: ignore[method-assign,assignment]

    original = parsing.clean_json

    def clean_json(resource_json: Any, resources_map: Any) -> Any:
        if isinstance(resource_json, dict) and "Fn::Cidr" in resource_json:
            block, count, bits = (original(v, resources_map) for v in resource_json["Fn::Cidr"])
            net = ipaddress.ip_network(block)
            subnets = net.subnets(new_prefix=net.max_prefixlen - int(bits))
            return [str(s) for _, s in zip(range(int(count)), subnets, strict=False)]
        return original(resource_json, resources_map)

    parsing.clean_json = clean_json

    def create(
        cls: Any, name: str, cfn: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> Any:
        props = cfn["Properties"]
        backend = ec2_backends[account_id][region_name]
        eni = backend.create_network_interface(
            backend.get_subnet(props["SubnetId"]),
            props.get("PrivateIpAddress"),
            group_ids=props.get("GroupSet", []),
            description=props.get("Description"),
            tags={t["Key"]: t["Value"] for t in props.get("Tags", [])},
        )
        count = int(props.get("SecondaryPrivateIpAddressCount", 0))
        if count:
            backend.assign_private_ip_addresses(eni.id, secondary_ips_count=count)
        eni.source_dest_check = str(props.get("SourceDestCheck", True)).lower() == "true"
        return eni

    original_att = NetworkInterface.get_cfn_attribute

    def get_cfn_attribute(self: Any, attribute_name: str) -> Any:
        if attribute_name == "SecondaryPrivateIpAddresses":
            return [p["PrivateIpAddress"] for p in self.private_ip_addresses if not p["Primary"]]
        return original_att(self, attribute_name)

    NetworkInterface.create_from_cloudformation_json = classmethod(create)  # type: ignore[method-assign,assignment]
    NetworkInterface.get_cfn_attribute = get_cfn_attribute  # type: ignore[method-assign]


if __name__ == "__main__":
    patch()
    from moto.server import main

    main(["--host", sys.argv[1], "--port", sys.argv[2]])
