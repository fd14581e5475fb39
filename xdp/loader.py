"""Compile, load, pin, adopt, attach and detach the XDP programs of ``xdp/bpf``.

bcc compiles ``spectra.bpf.c`` once per process and build configuration
(:class:`BuildOptions` -> ``-D`` flags, never string substitution).  Programs and maps
are pinned under ``/sys/fs/bpf/spectra/<instance>/{progs,maps}/<name>`` so forwarding
survives the agent; :func:`adopt` reopens the pins without a compiler.

Headers shared with the GWLB programs (parsing, checksums, the GENEVE wire format, the
GWLB flow state and outer-header builder) live in :data:`INCLUDE_DIR`, included as
``"spectra/<name>.h"``; every Spectra BPF loader passes it with ``-I`` next to its own
``bpf/`` folder, which keeps the headers only its program uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from xdp import libbpf

log = logging.getLogger("spectra.xdp")

BPF_DIR = Path(__file__).resolve().parent / "bpf"
MAIN_SOURCE = BPF_DIR / "spectra.bpf.c"
INCLUDE_DIR = Path(__file__).resolve().parent / "include"
# What the pins of this program are built from (see layout_id).
LAYOUT_SOURCES = (BPF_DIR, INCLUDE_DIR / "spectra")
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/spectra")

PROGRAMS = ("xdp_gateway", "xdp_pass_peer", "xdp_drop_all")
MAPS = (
    "flows",
    "tx_ports",
    "stats",
    "deny_stats",
    "config",
    "deny_src",
    "deny_dst",
    "deny_proto",
    "deny_port_any",
    "deny_port",
    "deny_rule_proto",
    "local_addrs",
    "gwlb_flows_link",
    "gwlb_config_link",
    "deny_samples",
    "deny_sample_rate",
    "deny_sample_budget",
)

AttachMode = Literal["native", "generic", "auto"]
_MODE_FLAGS = {"native": libbpf.XDP_FLAGS_DRV_MODE, "generic": libbpf.XDP_FLAGS_SKB_MODE}
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LOG_TAIL_LINES = 12


class LoaderError(RuntimeError):
    """Compiling, loading, pinning or attaching the XDP programs failed."""


class CompileError(LoaderError):
    """bcc/clang rejected the C source."""


class VerifierError(LoaderError):
    """The kernel verifier rejected a program; ``program`` names it, ``log`` is the tail."""

    def __init__(self, program: str, log_tail: str) -> None:
        super().__init__(f"verifier rejected program {program!r}:\n{log_tail}")
        self.program = program
        self.log = log_tail


def _positive(name: str, value: int, upper: int | None = None) -> None:
    if not isinstance(value, int) or value <= 0 or (upper is not None and value > upper):
        bound = f"1..{upper}" if upper is not None else "a positive integer"
        raise ValueError(f"BuildOptions.{name}={value!r}: expected {bound}")


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Compile-time tunables of ``xdp/bpf/maps.h``; each field is one ``-D`` flag."""

    flow_table_size: int = field(default=262144, metadata={"define": "FLOW_TABLE_SIZE"})
    max_deny_rules: int = field(default=4096, metadata={"define": "MAX_DENY_RULES"})
    deny_lpm_size: int = field(default=262144, metadata={"define": "DENY_LPM_SIZE"})
    deny_port_table_size: int = field(default=65536, metadata={"define": "DENY_PORT_TABLE_SIZE"})
    tx_ports_size: int = field(default=4096, metadata={"define": "TX_PORTS_SIZE"})

    def __post_init__(self) -> None:
        for f in fields(self):
            _positive(f.name, getattr(self, f.name))
        if self.max_deny_rules % 64 or self.max_deny_rules > 4096:
            raise ValueError(
                f"BuildOptions.max_deny_rules={self.max_deny_rules!r}: expected a multiple "
                "of 64 in 64..4096 (64 rules a word, at most 64 words)"
            )
        if self.deny_port_table_size < 2:
            raise ValueError("BuildOptions.deny_port_table_size: expected >= 2 (two generations)")

    def defines(self) -> dict[str, int]:
        return {f.metadata["define"]: getattr(self, f.name) for f in fields(self)}

    def cflags(self) -> list[str]:
        flags = [f"-I{BPF_DIR}", f"-I{INCLUDE_DIR}", "-Wno-compare-distinct-pointer-types"]
        flags += [f"-D{name}={value}" for name, value in self.defines().items()]
        return flags


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture fd 2 (libbcc prints compiler diagnostics and verifier logs there)."""
    out: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass(slots=True)
class LoadedObjects:
    """Program and map fds of one data-plane instance.

    ``owner`` is the bcc ``BPF`` object when freshly compiled (it owns the fds) or
    None after :func:`adopt` (then these fds are ours to close).
    """

    prog_fds: dict[str, int]
    map_fds: dict[str, int]
    owner: Any = None
    opts: BuildOptions | None = None
    pinned_at: Path | None = None

    def close(self) -> None:
        if self.owner is None:
            for fd in [*self.prog_fds.values(), *self.map_fds.values()]:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.prog_fds.clear()
        self.map_fds.clear()


DEFAULT_OPTIONS = BuildOptions()
_compiled: dict[BuildOptions, LoadedObjects] = {}


def compile_source(
    src_file: Path, cflags: Sequence[str], programs: Sequence[str]
) -> tuple[Any, dict[str, int]]:
    """Compile ``src_file`` with bcc and load ``programs`` as XDP; the common error path
    for every compile (CompileError / VerifierError with the log tail)."""
    from bcc import BPF  # imported here: nothing runs at import time

    with _captured_stderr() as err:
        try:
            bpf = BPF(src_file=str(src_file.resolve()).encode(), cflags=list(cflags))
        except Exception as exc:
            compile_failed: Exception | None = exc
        else:
            compile_failed = None
    if compile_failed is not None:
        raise CompileError(
            f"bcc failed to compile {src_file}:\n{_tail(err[0])}"
        ) from compile_failed
    if err[0].strip():
        log.debug("bcc diagnostics for %s: %s", src_file, err[0].strip())
    prog_fds: dict[str, int] = {}
    for name in programs:
        with _captured_stderr() as err:
            try:
                fn = bpf.load_func(name.encode(), BPF.XDP)
            except Exception:
                fn = None
        if fn is None:
            bpf.cleanup()
            raise VerifierError(name, _tail(err[0]) or "(no verifier log)")
        prog_fds[name] = int(fn.fd)
    return bpf, prog_fds


def compile_programs(opts: BuildOptions = DEFAULT_OPTIONS, *, fresh: bool = False) -> LoadedObjects:
    """Compile and load the data plane; cached per ``opts`` for the process unless
    ``fresh`` (each compile creates its own set of maps)."""
    if not fresh and opts in _compiled:
        return _compiled[opts]
    log.info("compiling %s with %s", MAIN_SOURCE.name, opts)
    bpf, prog_fds = compile_source(MAIN_SOURCE, opts.cflags(), PROGRAMS)
    map_fds = {name: int(bpf.get_table(name.encode()).map_fd) for name in MAPS}
    objects = LoadedObjects(prog_fds=prog_fds, map_fds=map_fds, owner=bpf, opts=opts)
    if not fresh:
        _compiled[opts] = objects
    return objects


def release(objects: LoadedObjects) -> None:
    """Close ``objects`` (pins, if any, keep the programs and maps alive)."""
    if objects.owner is not None:
        for opts, cached in list(_compiled.items()):
            if cached is objects:
                del _compiled[opts]
        objects.owner.cleanup()
    objects.close()
    objects.owner = None


def pin_dir_for(instance: str, root: Path = DEFAULT_PIN_ROOT) -> Path:
    if not _INSTANCE_RE.match(instance):
        raise ValueError(f"instance={instance!r}: expected 1-64 characters of A-Z a-z 0-9 _ . -")
    return root / instance


def layout_id(sources: Sequence[Path] = LAYOUT_SOURCES) -> str:
    """What the pins of a build look like: a hash of the BPF sources in the ``sources``
    folders (programs, map definitions, value layouts; this program's by default).
    Pins of another build (an older release, a changed struct) cannot be adopted:
    their maps would be read and written with the wrong layout."""
    digest = hashlib.sha256()
    for path in sorted(path for folder in sources for path in folder.glob("*.[ch]")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _layout_marker(pin_dir: Path, sources: Sequence[Path]) -> Path:
    # bpffs holds pinned objects and directories only: the marker is a directory.
    return pin_dir / f"layout-{layout_id(sources)}"


def mark_layout(pin_dir: Path, sources: Sequence[Path] = LAYOUT_SOURCES) -> None:
    """Record that the pins under ``pin_dir`` were made by the build of ``sources``."""
    _layout_marker(pin_dir, sources).mkdir(exist_ok=True)


def has_layout(pin_dir: Path, sources: Sequence[Path] = LAYOUT_SOURCES) -> bool:
    """The pins under ``pin_dir`` were made by the build of ``sources``."""
    return _layout_marker(pin_dir, sources).is_dir()


def is_pinned(pin_dir: Path) -> bool:
    """A complete set of pins of this build under ``pin_dir``."""
    return (
        all((pin_dir / "maps" / name).exists() for name in MAPS)
        and all((pin_dir / "progs" / name).exists() for name in PROGRAMS)
        and has_layout(pin_dir)
    )


def pin(objects: LoadedObjects, pin_dir: Path) -> None:
    """Pin every program and map under ``pin_dir/progs`` and ``pin_dir/maps``."""
    for sub, fds in (("progs", objects.prog_fds), ("maps", objects.map_fds)):
        (pin_dir / sub).mkdir(parents=True, exist_ok=True)
        for name, fd in fds.items():
            libbpf.obj_pin(fd, str(pin_dir / sub / name))
    mark_layout(pin_dir)
    objects.pinned_at = pin_dir
    log.info(
        "pinned %d programs and %d maps under %s",
        len(objects.prog_fds),
        len(objects.map_fds),
        pin_dir,
    )


def adopt(pin_dir: Path) -> LoadedObjects:
    """Open the pinned programs and maps of an instance, no compiler involved."""
    if not is_pinned(pin_dir):
        raise LoaderError(
            f"{pin_dir}: no complete set of pins (expected progs/{PROGRAMS} and maps/{MAPS})"
        )
    prog_fds = {name: libbpf.obj_get(str(pin_dir / "progs" / name)) for name in PROGRAMS}
    map_fds = {name: libbpf.obj_get(str(pin_dir / "maps" / name)) for name in MAPS}
    log.info("adopted pins under %s", pin_dir)
    return LoadedObjects(prog_fds=prog_fds, map_fds=map_fds, pinned_at=pin_dir)


def unpin(pin_dir: Path) -> None:
    """Remove the pins, of this build or another (programs stay while attached, maps
    while a program uses them)."""
    for sub in ("progs", "maps"):
        if (pin_dir / sub).is_dir():
            for pinned in (pin_dir / sub).iterdir():
                with contextlib.suppress(FileNotFoundError):
                    pinned.unlink()
        with contextlib.suppress(FileNotFoundError, OSError):
            (pin_dir / sub).rmdir()
    for marker in pin_dir.glob("layout-*"):
        with contextlib.suppress(FileNotFoundError, OSError):
            marker.rmdir()
    with contextlib.suppress(FileNotFoundError, OSError):
        pin_dir.rmdir()


def ifindex_of(ifname_or_index: str | int) -> int:
    if isinstance(ifname_or_index, int):
        return ifname_or_index
    try:
        return socket.if_nametoindex(ifname_or_index)
    except OSError as exc:
        raise LoaderError(
            f"interface {ifname_or_index!r}: no such interface in this netns"
        ) from exc


def attach(ifname_or_index: str | int, prog_fd: int, mode: AttachMode = "auto") -> str:
    """Attach ``prog_fd``; "auto" tries native (driver) XDP and falls back to generic
    (SKB) mode with a warning.  Returns the mode in use: "native" or "generic"."""
    ifindex = ifindex_of(ifname_or_index)
    tried = ["native", "generic"] if mode == "auto" else [mode]
    last: libbpf.LibbpfError | None = None
    for candidate in tried:
        try:
            libbpf.xdp_attach(ifindex, prog_fd, _MODE_FLAGS[candidate])
        except libbpf.LibbpfError as exc:
            last = exc
            if mode == "auto" and candidate == "native":
                log.warning(
                    "native XDP unavailable on %s (%s); falling back to generic mode",
                    ifname_or_index,
                    exc,
                )
            continue
        log.info("attached XDP program fd %d to %s in %s mode", prog_fd, ifname_or_index, candidate)
        return candidate
    raise LoaderError(f"cannot attach XDP to {ifname_or_index!r} in {tried} mode: {last}") from last


def attached_id(ifname_or_index: str | int) -> int:
    """Kernel id of the XDP program on an interface (either mode); 0 when none."""
    ifindex = ifindex_of(ifname_or_index)
    for flags in _MODE_FLAGS.values():
        if prog := libbpf.xdp_query_id(ifindex, flags):
            return prog
    return 0


def attached_mode(ifname_or_index: str | int) -> str | None:
    """ "native", "generic" or None for the XDP program on an interface."""
    ifindex = ifindex_of(ifname_or_index)
    for mode, flags in _MODE_FLAGS.items():
        if libbpf.xdp_query_id(ifindex, flags):
            return mode
    return None


def detach(ifname_or_index: str | int) -> None:
    """Detach whatever XDP program is attached (either mode); no-op when none."""
    mode = attached_mode(ifname_or_index)
    if mode is None:
        return
    libbpf.xdp_detach(ifindex_of(ifname_or_index), _MODE_FLAGS[mode])
    log.info("detached XDP (%s mode) from %s", mode, ifname_or_index)


def map_capacities(map_fds: Mapping[str, int]) -> dict[str, int]:
    return {name: int(libbpf.map_info(fd).max_entries) for name, fd in map_fds.items()}
