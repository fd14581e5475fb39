"""The built-in inspector: NFQUEUE consumer, packet and stream handling, and a
documented subset of the Suricata rule language (see :mod:`nfq.engine.rules`).

Public surface: :func:`load_rules` / :class:`RuleError` (parse and reject), :class:`Ruleset`
(compiled, Hyperscan multi-pattern), :class:`Inspector` (per-packet decisions, no I/O
besides the alert sink) and :func:`serve` (the NFQUEUE loop). Importing runs nothing.
"""

from nfq.engine.detect import Decision, Inspector
from nfq.engine.matcher import Ruleset
from nfq.engine.rules import Rule, RuleError, load_rules, parse_rule

__all__ = ["Decision", "Inspector", "Rule", "RuleError", "Ruleset", "load_rules", "parse_rule"]
