"""GENEVE (RFC 8926) and AWS Gateway Load Balancer support.

* the codec, reference model and test oracle: :class:`GeneveHeader`,
  :class:`GeneveOption`, the AWS option registry (:data:`AWS_OPTIONS`, class 0x0108),
  :func:`validate`, :func:`encapsulate` / :func:`decapsulate`, :class:`InnerFlow`;
* the data plane for the agent: :class:`Gwlb` (load / attach / detach / counters,
  pins under ``/sys/fs/bpf/spectra/<instance>/gwlb/``) and :class:`GwlbReason`;
* the health-check responder: :class:`HealthResponder`.

AWS GWLB: https://docs.aws.amazon.com/elasticloadbalancing/latest/gateway/introduction.html
Importing runs nothing.
"""

from geneve.attach import AttachPlan
from geneve.aws import AWS_OPTION_CLASS, AWS_OPTIONS, GwlbTlvs, validate
from geneve.codec import GENEVE_PORT, GeneveHeader, GeneveOption
from geneve.dataplane import Gwlb, GwlbBuild, Mode
from geneve.encap import Decapsulated, decapsulate, encapsulate
from geneve.errors import (
    BadVersionError,
    GeneveError,
    GwlbError,
    MalformedError,
    MissingGwlbOptionError,
    TruncatedError,
    UnknownCriticalOptionError,
)
from geneve.flowkey import InnerFlow
from geneve.health import HealthResponder
from geneve.reasons import GwlbReason

__all__ = [
    "AWS_OPTIONS",
    "AWS_OPTION_CLASS",
    "GENEVE_PORT",
    "AttachPlan",
    "BadVersionError",
    "Decapsulated",
    "GeneveError",
    "GeneveHeader",
    "GeneveOption",
    "Gwlb",
    "GwlbBuild",
    "GwlbError",
    "GwlbReason",
    "GwlbTlvs",
    "HealthResponder",
    "InnerFlow",
    "MalformedError",
    "MissingGwlbOptionError",
    "Mode",
    "TruncatedError",
    "UnknownCriticalOptionError",
    "decapsulate",
    "encapsulate",
    "validate",
]
