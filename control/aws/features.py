"""Which operational role each AWS service the product calls belongs to: the one table.

The operational-role stack (``deploy/cloudformation/operational-roles.yaml``) creates one
role per feature, ``<name>-cross-account-role<N>``, each with only that feature's
permissions, each only when the feature is enabled.  The session factory
(:mod:`control.aws.session`) picks the role of a client's service from
:data:`SERVICE_FEATURES`; a service missing from it has no operational role and is
refused.  :func:`enabled_features` says which features a config document needs, for the
change sets that keep the stack in step with the document (:mod:`control.aws.changeset`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from control.config.document import ConfigDocument


class Feature(IntEnum):
    """A feature's role number N in ``<name>-cross-account-role<N>``."""

    CORE = 1
    BEDROCK = 2
    OBSERVABILITY = 3
    EDGE = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def parameter(self) -> str:
        """The stack parameter that turns the feature's role on."""
        return f"Enable{self.name.capitalize()}"


SERVICE_FEATURES: Mapping[str, Feature] = {
    # core: the route takeover (ReplaceRoute/CreateRoute and its Describe checks), config
    # document writes to the SSM store, change sets of the operational stack itself
    "ec2": Feature.CORE,
    "ssm": Feature.CORE,
    "cloudformation": Feature.CORE,
    # core: live resize (`spectra aws resize`): the AZ's Auto Scaling group and launch
    # template, the lease item's hand-over request
    "autoscaling": Feature.CORE,
    "dynamodb": Feature.CORE,
    # bedrock: the AI gateway signs Converse / ConverseStream with this role
    "bedrock-runtime": Feature.BEDROCK,
    # observability: CloudWatch metrics and logs, shipped log objects, SNS notifications
    "cloudwatch": Feature.OBSERVABILITY,
    "logs": Feature.OBSERVABILITY,
    "s3": Feature.OBSERVABILITY,  # flow and firewall log objects, AI audit anchors
    "sns": Feature.OBSERVABILITY,
    # edge: Gateway Load Balancer target groups, ACM certificates of the TLS listeners
    "elbv2": Feature.EDGE,
    "acm": Feature.EDGE,
}
"""boto3 service name -> the feature whose role calls it (every operational client)."""


class UnknownService(ValueError):
    """A service that no operational role is for."""


def feature_of(service: str) -> Feature:
    """The feature whose role calls ``service``; :class:`UnknownService` if none."""
    try:
        return SERVICE_FEATURES[service]
    except KeyError:
        raise UnknownService(
            f"no operational role is for {service!r}: expected one of "
            f"{', '.join(sorted(SERVICE_FEATURES))} (control.aws.features.SERVICE_FEATURES)"
        ) from None


def role_name(deployment: str, feature: Feature) -> str:
    """``<deployment>-cross-account-role<N>``, as the stack names it."""
    return f"{deployment}-cross-account-role{int(feature)}"


def enabled_features(doc: ConfigDocument) -> frozenset[Feature]:
    """The features ``doc`` uses, hence the roles its stack must have.

    core is always on (config writes, the takeover, staging these change sets); bedrock
    when a route goes to a bedrock provider that has no static keys of its own;
    observability with CloudWatch metrics, an SNS topic for takeovers, shipped flow or
    firewall logs or AI audit anchors in S3; edge with TLS
    listeners (ACM certificates), the Gateway Load Balancer or L4 listeners synced
    with an ELBv2 target group."""
    found = {Feature.CORE}
    routed = {route.provider for route in doc.ai.routes}
    for name in routed:
        provider = doc.ai.providers[name]
        if provider.kind == "bedrock" and provider.aws_access_key_id is None:
            found.add(Feature.BEDROCK)
    shipped = doc.logging.flow_logs.ships() or doc.logging.firewall_logs.ships()
    anchored = doc.ai.audit.anchor_s3 is not None
    if doc.metrics.cloudwatch or doc.aws.notify.sns_topic_arn or shipped or anchored:
        found.add(Feature.OBSERVABILITY)
    target_groups = doc.load_balancer.enabled and any(
        listener.target_group_arn for listener in doc.load_balancer.listeners
    )
    if (doc.tls.enabled and doc.tls.listeners) or doc.gwlb.enabled or target_groups:
        found.add(Feature.EDGE)
    return frozenset(found)
