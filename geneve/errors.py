"""Typed errors of the GENEVE (RFC 8926) / AWS GWLB codec and the GWLB data plane.

Every decode failure is a :class:`GeneveError` subclass that says what was wrong, at
which byte offset, and what is accepted, so tests and the lab simulator can tell a
truncated header from a policy rejection (AWS GWLB contract: all three class-0x0108
options present, unknown critical options dropped).
"""

from __future__ import annotations


class GeneveError(ValueError):
    """A GENEVE packet or header could not be decoded or encoded."""


class TruncatedError(GeneveError):
    """The buffer ends before the header or option it announces."""

    def __init__(self, what: str, need: int, have: int) -> None:
        super().__init__(f"{what}: needs {need} bytes, only {have} present")
        self.need = need
        self.have = have


class BadVersionError(GeneveError):
    """The GENEVE version field is not 0 (the only version RFC 8926 defines)."""

    def __init__(self, version: int) -> None:
        super().__init__(f"GENEVE version {version}: only version 0 is accepted (RFC 8926 3.4)")
        self.version = version


class MalformedError(GeneveError):
    """A length or field is inconsistent (option runs past opt_len, wrong AWS TLV size)."""


class MissingGwlbOptionError(GeneveError):
    """One of the three AWS GWLB options (class 0x0108 types 1, 2, 3) is absent."""

    def __init__(self, missing: tuple[str, ...]) -> None:
        super().__init__(
            f"GWLB option(s) {', '.join(missing)} missing: class 0x0108 types 1 "
            "(endpoint id), 2 (attachment id) and 3 (flow cookie) are all required"
        )
        self.missing = missing


class UnknownCriticalOptionError(GeneveError):
    """An option with the critical bit set is not one this implementation understands."""

    def __init__(self, option_class: int, option_type: int) -> None:
        super().__init__(
            f"critical option class {option_class:#06x} type {option_type:#04x} is not "
            "understood; RFC 8926 3.5 requires dropping the packet"
        )
        self.option_class = option_class
        self.option_type = option_type


class GwlbError(RuntimeError):
    """Loading, attaching or configuring the GWLB data plane failed."""
