"""The Gateway Load Balancer template: GWLB, GENEVE target group, endpoint service,
one endpoint per zone and the routes through them."""

from __future__ import annotations

from typing import Any

from cfnspec.base import (
    GENEVE_PORT,
    NO_VALUE,
    RTB,
    SUBNET,
    THIRD,
    ZONES,
    equals,
    header,
    iff,
    output,
    per_zone,
    ref,
    sub,
    tags,
    when,
)
from cfnspec.params import fleet_parameters, switch, third_zone_required, vpc_id_parameter, zone_ids


def gwlb() -> dict[str, Any]:
    params: dict[str, Any] = {
        "Name": fleet_parameters()["Name"],
        "ZoneCount": fleet_parameters()["ZoneCount"],
        "VpcId": vpc_id_parameter(),
        "HealthCheckPort": fleet_parameters()["HealthCheckPort"],
        "HealthCheckProtocol": {
            "Type": "String",
            "AllowedValues": ["TCP", "HTTP"],
            "Default": "TCP",
            "Description": "gwlb.health_check.protocol of the appliances' document",
        },
        "HealthCheckPath": {
            "Type": "String",
            "Default": "/healthz",
            "AllowedPattern": r"^/\S*$",
            "ConstraintDescription": "HealthCheckPath: a path starting with /",
        },
        "CreateRoutes": switch(
            "true: 0.0.0.0/0 of each protected route table -> its zone's "
            "GWLB endpoint (fails if the table already has a default route)"
        ),
    }
    params.update(
        zone_ids(
            "ApplianceSubnet", SUBNET, "the GWLB's subnet in the zone (the appliances' subnet)"
        )
    )
    params.update(zone_ids("EndpointSubnet", SUBNET, "the GWLB endpoint's subnet in the zone"))
    params.update(
        zone_ids("ProtectedRouteTable", RTB, "the route table whose traffic the endpoint inspects")
    )
    rules = {
        "ThirdZoneGiven": {
            "RuleCondition": equals(ref("ZoneCount"), "3"),
            "Assertions": third_zone_required(
                ["ApplianceSubnet", "EndpointSubnet", "ProtectedRouteTable"]
            ),
        }
    }
    resources: dict[str, Any] = {
        "LoadBalancer": {
            "Type": "AWS::ElasticLoadBalancingV2::LoadBalancer",
            "Properties": {
                "Type": "gateway",  # no Name: 32 characters at most, CloudFormation names it
                "Subnets": per_zone(lambda z: ref(f"ApplianceSubnet{z}")),
                "LoadBalancerAttributes": [
                    {"Key": "load_balancing.cross_zone.enabled", "Value": "false"}
                ],
                "Tags": tags(sub("${Name}-gwlb")),
            },
        },
        "TargetGroup": {
            "Type": "AWS::ElasticLoadBalancingV2::TargetGroup",
            "Properties": {
                "Protocol": "GENEVE",  # no Name: 32 characters at most
                "Port": GENEVE_PORT,
                "TargetType": "instance",
                "VpcId": ref("VpcId"),
                "HealthCheckProtocol": ref("HealthCheckProtocol"),
                "HealthCheckPort": ref("HealthCheckPort"),
                "HealthCheckPath": iff("HttpHealthCheck", ref("HealthCheckPath"), NO_VALUE),
                "HealthCheckIntervalSeconds": 10,
                "HealthyThresholdCount": 3,
                "UnhealthyThresholdCount": 3,
                "TargetGroupAttributes": [
                    {"Key": "deregistration_delay.timeout_seconds", "Value": "30"}
                ],
                "Tags": tags(sub("${Name}-appliances")),
            },
        },
        "Listener": {
            "Type": "AWS::ElasticLoadBalancingV2::Listener",
            "Properties": {
                "LoadBalancerArn": ref("LoadBalancer"),
                "DefaultActions": [{"Type": "forward", "TargetGroupArn": ref("TargetGroup")}],
            },
        },
        "EndpointService": {
            "Type": "AWS::EC2::VPCEndpointService",
            "Properties": {
                "GatewayLoadBalancerArns": [ref("LoadBalancer")],
                "AcceptanceRequired": False,
            },
        },
    }
    outputs: dict[str, Any] = {
        "TargetGroupArn": output(
            ref("TargetGroup"),
            "give it to the fleet stack as GwlbTargetGroupArn",
            "GwlbTargetGroupArn",
        ),
        "LoadBalancerArn": output(ref("LoadBalancer"), "the Gateway Load Balancer"),
        "EndpointServiceName": output(
            sub("com.amazonaws.vpce.${AWS::Region}.${EndpointService}"),
            "the endpoint service: other VPCs' GWLB endpoints use this name",
        ),
    }
    for i, z in enumerate(ZONES):
        block = {
            f"Endpoint{z}": {
                "Type": "AWS::EC2::VPCEndpoint",
                "Properties": {
                    "VpcId": ref("VpcId"),
                    "VpcEndpointType": "GatewayLoadBalancer",
                    "ServiceName": sub("com.amazonaws.vpce.${AWS::Region}.${EndpointService}"),
                    "SubnetIds": [ref(f"EndpointSubnet{z}")],
                },
            },
        }
        resources.update({k: when(i, v) for k, v in block.items()})
        resources[f"Route{z}"] = {
            "Type": "AWS::EC2::Route",
            "Condition": "CreateRoutesC" if i == 2 else "CreateRoutesAB",
            "Properties": {
                "RouteTableId": ref(f"ProtectedRouteTable{z}"),
                "DestinationCidrBlock": "0.0.0.0/0",
                "VpcEndpointId": ref(f"Endpoint{z}"),
            },
        }
        outputs[f"Endpoint{z}"] = when(i, output(ref(f"Endpoint{z}"), f"zone {z}: GWLB endpoint"))
    return {
        **header(
            "Cloud Spectra Gateway: a Gateway Load Balancer (GENEVE) in front of the "
            "appliance fleet, its endpoint service, one endpoint per zone and the routes "
            "through them"
        ),
        "Parameters": params,
        "Rules": rules,
        "Conditions": {
            THIRD: equals(ref("ZoneCount"), "3"),
            "HttpHealthCheck": equals(ref("HealthCheckProtocol"), "HTTP"),
            "CreateRoutesAB": equals(ref("CreateRoutes"), "true"),
            "CreateRoutesC": {"Fn::And": [{"Condition": THIRD}, {"Condition": "CreateRoutesAB"}]},
        },
        "Resources": resources,
        "Outputs": outputs,
    }
