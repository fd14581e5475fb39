"""IP sets: named lists of IPv4 CIDRs that rules may match instead of one CIDR.

A set is the shape of a threat-intelligence blocklist (AWS Network Firewall "IP set
references", https://docs.aws.amazon.com/network-firewall/latest/developerguide/
rule-groups-ip-set-references.html): thousands to hundreds of thousands of prefixes of
mixed lengths.  Its CIDRs are carried in the document (``cidrs``) or read from a file
the document names (``file``: one CIDR per line, ``#`` comments and blank lines
ignored), read when the document is validated, so a bad file fails validation and
nothing is applied; a bad line is reported as ``rules.ip_sets.<name>.file[<line>]``
(1-based line number).  Within one set no two CIDRs may overlap (a duplicate or a prefix
inside another is an authoring mistake that nftables interval sets refuse too); the
error names the index (or file line) of both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, PrivateAttr, StringConstraints, model_validator

from control.config.issues import Issue, Issues, fail
from control.config.types import StrictModel
from xdp.prefixes import Prefix, overlaps, parse_prefix, prefix_str

# nft set names and our own references: short, no quoting needed.
IpSetName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,30}$")]
MAX_SET_CIDRS = 1_000_000


def read_cidr_file(path: Path) -> tuple[list[Prefix], list[int], list[Issue]]:
    """The CIDRs of a set file with their line numbers, or issues at ``("file", line)``
    (rendered ``file[line]``)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [], [Issue(("file",), str(path), f"cannot read: {exc}")]
    nets: list[Prefix] = []
    lines: list[int] = []
    issues: list[Issue] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            nets.append(parse_prefix(line))
            lines.append(lineno)
        except ValueError as exc:
            issues.append(Issue(("file", lineno), line, f"line {lineno}: {exc}"))
    return nets, lines, issues


def _overlap_msg(other: str, prefix: Prefix) -> str:
    return f"overlaps {other} {prefix_str(prefix)}: expected CIDRs that do not overlap within a set"


class IpSet(StrictModel):
    """A named list of IPv4 CIDRs: ``cidrs`` in the document, or ``file`` (absolute path)."""

    cidrs: list[str] | None = Field(
        default=None, max_length=MAX_SET_CIDRS, description="IPv4 CIDRs like 192.0.2.0/24"
    )
    file: str | None = Field(
        default=None,
        pattern=r"^/[^\x00\n]*$",
        description="absolute path of a file with one CIDR per line (# comments)",
    )
    _prefixes: tuple[Prefix, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _load(self) -> IpSet:
        if (self.cidrs is None) == (self.file is None):
            raise fail(("cidrs",), None, 'expected exactly one of "cidrs" or "file"')
        if self.cidrs is not None:
            nets, issues = [], []
            for i, text in enumerate(self.cidrs):
                try:
                    nets.append(parse_prefix(text))
                except ValueError as exc:
                    issues.append(Issue(("cidrs", i), text, str(exc)))
            if issues:
                raise Issues(issues[:20])  # indexes below refer to parsed CIDRs only
            for i, j in overlaps(nets):
                issues.append(Issue(("cidrs", i), self.cidrs[i], _overlap_msg(f"[{j}]", nets[j])))
        else:
            nets, lines, issues = read_cidr_file(Path(str(self.file)))
            if len(nets) > MAX_SET_CIDRS:
                issues.append(
                    Issue(("file",), len(nets), f"expected at most {MAX_SET_CIDRS} CIDRs")
                )
            for i, j in overlaps(nets):
                msg = f"line {lines[i]}: " + _overlap_msg(f"line {lines[j]}", nets[j])
                issues.append(Issue(("file", lines[i]), prefix_str(nets[i]), msg))
        if issues:
            raise Issues(issues[:20])  # the first few; a broken file may have thousands
        self._prefixes = tuple(nets)
        return self

    @property
    def prefixes(self) -> tuple[Prefix, ...]:
        """The set's CIDRs as (address, length) pairs, in document (or file) order."""
        return self._prefixes
