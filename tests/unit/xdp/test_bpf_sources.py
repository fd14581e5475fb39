"""Every BPF source of the xdp and geneve programs ships as package data (an installed
wheel compiles them), and the shared include folder holds no program's own headers."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from geneve.dataplane import BPF_DIR as GENEVE_BPF_DIR
from xdp.loader import BPF_DIR, INCLUDE_DIR

ROOT = Path(__file__).resolve().parents[3]
INCLUDE = re.compile(r'^#include\s+"([^"]+)"', re.MULTILINE)


def _shipped(package: str, path: Path) -> bool:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    relative = path.relative_to(ROOT / package).as_posix()
    return any(fnmatch.fnmatch(relative, g) for g in data["package-data"].get(package, []))


def test_every_bpf_source_is_package_data() -> None:
    for package, folder in (("xdp", BPF_DIR.parent), ("geneve", GENEVE_BPF_DIR.parent)):
        sources = [*folder.rglob("*.bpf.c"), *folder.rglob("*.h")]
        assert sources
        assert [s for s in sources if not _shipped(package, s)] == []


def test_shared_headers_include_only_shared_headers() -> None:
    shared = INCLUDE_DIR / "spectra"
    for header in shared.glob("*.h"):
        for name in INCLUDE.findall(header.read_text()):
            assert (shared / name).is_file(), f"{header.name} includes {name}"


def test_programs_take_shared_headers_from_the_include_folder() -> None:
    shared = {h.name for h in (INCLUDE_DIR / "spectra").glob("*.h")}
    for folder in (BPF_DIR, GENEVE_BPF_DIR):
        assert shared.isdisjoint(h.name for h in folder.glob("*.h"))
        for source in folder.glob("*.[ch]"):
            for name in INCLUDE.findall(source.read_text()):
                assert (folder / name).is_file() or (INCLUDE_DIR / name).is_file(), name


def test_flow_flags_match_the_program() -> None:
    """``FLOW_F_*`` of ``maps.h`` and of :mod:`xdp.records` are the same bits."""
    from xdp import records

    text = (BPF_DIR / "maps.h").read_text()
    in_c = {
        m[1]: 1 << int(m[2]) for m in re.finditer(r"#define (FLOW_F_\w+) \(1U << (\d+)\)", text)
    }
    in_py = {n: getattr(records, n) for n in dir(records) if n.startswith("FLOW_F_")}
    assert in_c == in_py and len(in_c) >= 3
