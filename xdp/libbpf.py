"""Typed ctypes wrapper over the few libbpf.so.1 (libbpf 1.1) calls the data plane needs.

bcc compiles and loads the programs; everything after that (pinning, adopting pins,
map access by fd, XDP attach/detach, BPF_PROG_TEST_RUN) goes through these calls so a
restarted agent can work on pinned objects without bcc.  Signatures follow
``/usr/include/bpf/bpf.h`` and ``libbpf.h`` of libbpf 1.1.
"""

from __future__ import annotations

import ctypes
import errno
import os
from functools import cache
from typing import Any

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2


class LibbpfError(OSError):
    """A libbpf call failed; ``call`` names it and ``errno`` says why."""

    def __init__(self, call: str, err: int, detail: str = "") -> None:
        where = f" ({detail})" if detail else ""
        super().__init__(err, f"{call}{where}: {os.strerror(err)} [errno {err}]")
        self.call = call


class BpfTestRunOpts(ctypes.Structure):
    """``struct bpf_test_run_opts`` of libbpf 1.1 (bpf.h)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class BpfMapBatchOpts(ctypes.Structure):
    """``struct bpf_map_batch_opts`` of libbpf 1.1 (bpf.h)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class BpfMapInfo(ctypes.Structure):
    """Leading fields of ``struct bpf_map_info`` (linux/bpf.h); the kernel fills at
    most ``sizeof`` of what it is given."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
RingBufferSampleFn = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t
)


@cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    vp, c_int, c_u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
    signatures: dict[str, tuple[list[type], type | None]] = {
        "bpf_obj_pin": ([c_int, ctypes.c_char_p], c_int),
        "bpf_obj_get": ([ctypes.c_char_p], c_int),
        "bpf_map_update_elem": ([c_int, vp, vp, ctypes.c_uint64], c_int),
        "bpf_map_lookup_elem": ([c_int, vp, vp], c_int),
        "bpf_map_delete_elem": ([c_int, vp], c_int),
        "bpf_map_get_next_key": ([c_int, vp, vp], c_int),
        "bpf_map_update_batch": ([c_int, vp, vp, ctypes.POINTER(c_u32), vp], c_int),
        "bpf_map_delete_batch": ([c_int, vp, ctypes.POINTER(c_u32), vp], c_int),
        "bpf_prog_test_run_opts": ([c_int, ctypes.POINTER(BpfTestRunOpts)], c_int),
        "bpf_xdp_attach": ([c_int, c_int, c_u32, vp], c_int),
        "bpf_xdp_detach": ([c_int, c_u32, vp], c_int),
        "bpf_xdp_query_id": ([c_int, c_int, ctypes.POINTER(c_u32)], c_int),
        "libbpf_num_possible_cpus": ([], c_int),
        "bpf_obj_get_info_by_fd": ([c_int, vp, ctypes.POINTER(c_u32)], c_int),
        "ring_buffer__new": ([c_int, RingBufferSampleFn, vp, vp], vp),
        "ring_buffer__poll": ([vp, c_int], c_int),
        "ring_buffer__consume": ([vp], c_int),
        "ring_buffer__free": ([vp], None),
    }
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    return lib


def _check(call: str, ret: int, detail: str = "") -> int:
    """libbpf 1.x returns -errno (and sets errno); turn a failure into LibbpfError."""
    if ret < 0:
        err = -ret if ret != -1 else (ctypes.get_errno() or errno.EPERM)
        raise LibbpfError(call, err, detail)
    return ret


def obj_pin(fd: int, path: str) -> None:
    _check("bpf_obj_pin", _lib().bpf_obj_pin(fd, path.encode()), path)


def obj_get(path: str) -> int:
    """Open a pinned map or program; the caller owns (and closes) the fd."""
    return _check("bpf_obj_get", _lib().bpf_obj_get(path.encode()), path)


def map_update(fd: int, key: ctypes._CData, value: ctypes._CData, flags: int = BPF_ANY) -> None:
    ret = _lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), flags)
    _check("bpf_map_update_elem", ret)


def map_lookup(fd: int, key: ctypes._CData, value: ctypes._CData) -> bool:
    """Fill ``value``; False when the key is absent."""
    ret = _lib().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if ret == -errno.ENOENT:
        return False
    _check("bpf_map_lookup_elem", ret)
    return True


def map_lookup_raw(fd: int, key: bytes, value: ctypes._CData) -> bool:
    """:func:`map_lookup` with the key as packed bytes (no ctypes key object)."""
    ret = _lib().bpf_map_lookup_elem(fd, key, ctypes.byref(value))
    if ret == -errno.ENOENT:
        return False
    _check("bpf_map_lookup_elem", ret)
    return True


def map_delete(fd: int, key: ctypes._CData) -> bool:
    """False when the key was absent."""
    ret = _lib().bpf_map_delete_elem(fd, ctypes.byref(key))
    if ret == -errno.ENOENT:
        return False
    _check("bpf_map_delete_elem", ret)
    return True


def map_delete_raw(fd: int, key: bytes) -> bool:
    """:func:`map_delete` with the key as packed bytes; False when it was absent."""
    ret = _lib().bpf_map_delete_elem(fd, key)
    if ret == -errno.ENOENT:
        return False
    _check("bpf_map_delete_elem", ret)
    return True


def map_get_next_key(fd: int, key: ctypes._CData | None, next_key: ctypes._CData) -> bool:
    """Fill ``next_key`` with the key after ``key`` (the first when None); False at the end."""
    ret = _lib().bpf_map_get_next_key(
        fd, None if key is None else ctypes.byref(key), ctypes.byref(next_key)
    )
    if ret == -errno.ENOENT:
        return False
    _check("bpf_map_get_next_key", ret)
    return True


def map_update_batch(fd: int, keys: ctypes.Array[Any], values: ctypes.Array[Any]) -> None:
    """BPF_MAP_UPDATE_BATCH of every (key, value) pair: one syscall for the lot (the
    kernel's generic batch, which LPM tries and hashes support since 5.6)."""
    count = ctypes.c_uint32(len(keys))
    if not count.value:
        return
    opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts))
    ret = _lib().bpf_map_update_batch(fd, keys, values, ctypes.byref(count), ctypes.byref(opts))
    _check("bpf_map_update_batch", ret, f"{count.value} of {len(keys)} written")


def map_delete_batch(fd: int, keys: ctypes.Array[Any]) -> None:
    """BPF_MAP_DELETE_BATCH of every key (all must exist)."""
    count = ctypes.c_uint32(len(keys))
    if not count.value:
        return
    opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts))
    ret = _lib().bpf_map_delete_batch(fd, keys, ctypes.byref(count), ctypes.byref(opts))
    _check("bpf_map_delete_batch", ret, f"{count.value} of {len(keys)} deleted")


def prog_test_run(prog_fd: int, opts: BpfTestRunOpts) -> None:
    opts.sz = ctypes.sizeof(BpfTestRunOpts)
    _check("bpf_prog_test_run_opts", _lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)))


def xdp_attach(ifindex: int, prog_fd: int, flags: int) -> None:
    ret = _lib().bpf_xdp_attach(ifindex, prog_fd, flags, None)
    _check("bpf_xdp_attach", ret, f"ifindex {ifindex}, flags {flags:#x}")


def xdp_detach(ifindex: int, flags: int) -> None:
    ret = _lib().bpf_xdp_detach(ifindex, flags, None)
    _check("bpf_xdp_detach", ret, f"ifindex {ifindex}, flags {flags:#x}")


def xdp_query_id(ifindex: int, flags: int) -> int:
    """Id of the XDP program attached in the mode ``flags`` selects; 0 when none."""
    prog_id = ctypes.c_uint32(0)
    ret = _lib().bpf_xdp_query_id(ifindex, flags, ctypes.byref(prog_id))
    _check("bpf_xdp_query_id", ret, f"ifindex {ifindex}, flags {flags:#x}")
    return prog_id.value


def map_info(fd: int) -> BpfMapInfo:
    info = BpfMapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    ret = _lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
    _check("bpf_obj_get_info_by_fd", ret, f"fd {fd}")
    return info


class BpfObjHead(ctypes.Structure):
    """The two fields ``struct bpf_prog_info`` and ``struct bpf_map_info`` start with."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32)]


def obj_id(fd: int) -> int:
    """Kernel id of the program or map behind ``fd`` (what ``bpf_xdp_query_id`` reports)."""
    head = BpfObjHead()
    size = ctypes.c_uint32(ctypes.sizeof(head))
    ret = _lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(head), ctypes.byref(size))
    _check("bpf_obj_get_info_by_fd", ret, f"fd {fd}")
    return int(head.id)


def num_possible_cpus() -> int:
    return _check("libbpf_num_possible_cpus", _lib().libbpf_num_possible_cpus())


class RingBuffer:
    """A BPF ring buffer map read through libbpf's ``ring_buffer`` (one map): each
    :meth:`poll` hands the records written since the last one to ``on_sample`` as
    bytes.  The callback object is kept alive with the ring buffer."""

    def __init__(self, map_fd: int, on_sample: Any) -> None:
        def trampoline(_ctx: int | None, data: int | None, size: int) -> int:
            on_sample(ctypes.string_at(data or 0, size))
            return 0

        self._fn = RingBufferSampleFn(trampoline)
        ctypes.set_errno(0)
        self._rb: int | None = _lib().ring_buffer__new(map_fd, self._fn, None, None)
        if not self._rb:
            raise LibbpfError("ring_buffer__new", ctypes.get_errno() or errno.EINVAL)

    def poll(self, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` for records and consume them; how many."""
        if self._rb is None:
            return 0
        ret = _lib().ring_buffer__poll(self._rb, timeout_ms)
        if ret == -errno.EINTR:
            return 0
        return _check("ring_buffer__poll", ret)

    def close(self) -> None:
        if self._rb is not None:
            _lib().ring_buffer__free(self._rb)
            self._rb = None
