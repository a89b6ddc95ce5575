"""The C client library (libmoerouter, clients/c) through ctypes: the shared-memory channel path
for inline ROUTEs on ipc connections (docs/PROTOCOL.md, "Channels: ROUTE through shared memory").

The library is looked up once per process: ``$MOE_ROUTER_LIB`` (that file only, when set); else,
when this package is an editable checkout of the repository, its ``build/lib/libmoerouter.so.1``
(``make clientlib``); else ``ctypes.util.find_library("moerouter")`` (the linker's cache); else
``lib/libmoerouter.so.1`` under this Python's prefix, /usr/local and /usr (where ``make install
PREFIX=...`` puts it, found even before ``ldconfig`` has run). ``load()`` returns the bound
library or raises ``NativeUnavailable`` saying why.

Per-call cost is what matters here (a 1-token route over a channel takes a few microseconds):

- ``moe_route_ex`` is called through a second function object of the same symbol *without*
  argtypes, with every 64-bit argument a ctypes object made once (c_void_p / c_uint64 /
  c_size_t) and every 32-bit one a small Python int: converting 13 arguments through argtypes
  costs ~0.6 µs more per call. The declared prototype (``route_ex``) is kept for other uses.
- Numpy's ways of reading an array's address (``arr.ctypes.data``, ``__array_interface__``)
  cost ~0.8 µs each, more than copying a small array. So small requests go through a Stage made
  once per request shape, whose arrays' addresses are known: the logits are copied in, and the
  outputs land in a (weights, ids) pair that nobody else references, which is then returned
  (see Stage). A returned array is never written by a later call while anything refers to it.
  Larger requests pass the caller's array addresses directly.
"""
import ctypes
import ctypes.util
import os
import struct
import sys
from pathlib import Path

import numpy as np

ROUTE_PATH_ZMQ = 0
ROUTE_PATH_CHANNEL = 1

# Requests up to these sizes go through per-shape staging arrays (copying them costs less than
# reading a numpy array's address); larger ones pass the caller's memory.
STAGE_INPUT_BYTES = 16 << 10
STAGE_OUTPUT_BYTES = 64 << 10
STAGE_SHAPES = 16  # staging entries kept per client (the table is emptied past that)


class RouteInfo(ctypes.Structure):
    """``moe_route_info`` of Include/moe_router_client.h, field for field."""
    _fields_ = [
        ("tokens", ctypes.c_uint64),
        ("nonfinite_count", ctypes.c_uint64),
        ("first_nonfinite_token", ctypes.c_uint64),
        ("compute_ns", ctypes.c_uint64),
        ("masked_tokens", ctypes.c_uint64),
        ("placement_epoch", ctypes.c_uint64),
        ("first_bad_token", ctypes.c_uint64),
        ("top_k", ctypes.c_uint32),
        ("fallback_cast", ctypes.c_int32),
        ("hash_routed", ctypes.c_int32),
        ("served_by", ctypes.c_uint32),
        ("reserved2", ctypes.c_uint64 * 4),
    ]


assert ctypes.sizeof(RouteInfo) == 104, ctypes.sizeof(RouteInfo)
assert RouteInfo.top_k.offset == 56 and RouteInfo.reserved2.offset == 72


class RouteCall(ctypes.Structure):
    """``moe_route_call`` of Include/moe_router_client.h: moe_route_ex's arguments in one struct,
    passed to ``moe_route_prepared`` (two arguments to convert per call instead of thirteen)."""
    _fields_ = [
        ("layer_id", ctypes.c_uint32),
        ("token_id_bytes", ctypes.c_uint32),
        ("dtype", ctypes.c_int),
        ("reserved", ctypes.c_uint32),
        ("tokens", ctypes.c_uint64),
        ("input", ctypes.c_void_p),
        ("input_bytes", ctypes.c_size_t),
        ("token_ids", ctypes.c_void_p),
        ("mask", ctypes.c_void_p),
        ("weights", ctypes.c_void_p),
        ("ids", ctypes.c_void_p),
        ("out_count", ctypes.c_size_t),
        ("info", ctypes.POINTER(RouteInfo)),
    ]


assert ctypes.sizeof(RouteCall) == 88 and RouteCall.info.offset == 80, ctypes.sizeof(RouteCall)
# The same bytes read in one call (much cheaper than eleven attribute reads).
INFO = struct.Struct("=7Q I i i I 4Q")
assert INFO.size == ctypes.sizeof(RouteInfo)


class NativeUnavailable(Exception):
    """The C client library could not be found or loaded (the message says why)."""


def _repo_library():
    """build/lib/libmoerouter.so.1 of the repository this package is checked out in, or None
    (an installed package has no repository around it)."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "clients" / "c" / "moe_router_client.c").is_file():
        return None
    lib = repo / "build" / "lib" / "libmoerouter.so.1"
    return lib if lib.is_file() else None


def candidates():
    """Where the library is looked for, in order (see the module docstring)."""
    explicit = os.environ.get("MOE_ROUTER_LIB")
    if explicit:
        return [explicit]
    out = []
    repo = _repo_library()
    if repo is not None:
        out.append(str(repo))
    found = ctypes.util.find_library("moerouter")
    if found:
        out.append(found)
    for prefix in (sys.prefix, "/usr/local", "/usr"):
        lib = Path(prefix) / "lib" / "libmoerouter.so.1"
        if lib.is_file() and str(lib) not in out:
            out.append(str(lib))
    return out


class Library:
    """libmoerouter with the prototypes of the functions used here."""

    def __init__(self, path):
        self.path = path
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise NativeUnavailable(f"cannot load {path}: {e}") from e
        missing = [n for n in ("moe_connect", "moe_close", "moe_last_error", "moe_route_ex", "moe_protocol_version",
                               "moe_set_channel", "moe_last_route_path") if not hasattr(lib, n)]
        if missing:
            raise NativeUnavailable(f"{path} has no {', '.join(missing)} (a library without channel support)")
        c_void_p, c_int = ctypes.c_void_p, ctypes.c_int
        self.connect = lib.moe_connect
        self.connect.argtypes = [ctypes.c_char_p, c_int, ctypes.POINTER(c_void_p)]
        self.connect.restype = c_int
        self.close = lib.moe_close
        self.close.argtypes = [c_void_p]
        self.close.restype = None
        self.last_error = lib.moe_last_error
        self.last_error.argtypes = [c_void_p]
        self.last_error.restype = ctypes.c_char_p
        self.protocol_version = lib.moe_protocol_version
        self.protocol_version.argtypes = [c_void_p]
        self.protocol_version.restype = c_int
        self.set_channel = lib.moe_set_channel
        self.set_channel.argtypes = [c_void_p, c_int]
        self.set_channel.restype = c_int
        self.last_route_path = lib.moe_last_route_path
        self.last_route_path.argtypes = [c_void_p]
        self.last_route_path.restype = c_int
        # int moe_route_ex(moe_client *, uint32_t layer_id, moe_dtype, uint64_t tokens, const void *input,
        #                  size_t input_bytes, const void *token_ids, uint32_t token_id_bytes, const uint8_t *mask,
        #                  float *weights, int32_t *ids, size_t out_count, moe_route_info *info)
        self.route_ex = lib.moe_route_ex
        self.route_ex.argtypes = [c_void_p, ctypes.c_uint32, c_int, ctypes.c_uint64, c_void_p, ctypes.c_size_t,
                                  c_void_p, ctypes.c_uint32, c_void_p, c_void_p, c_void_p, ctypes.c_size_t,
                                  ctypes.POINTER(RouteInfo)]
        self.route_ex.restype = c_int
        # The same symbol without argtypes, for the hot path: 64-bit arguments are passed as
        # ctypes objects (exact widths), 32-bit ones as ints < 2**31 (passed as C int).
        # (lib[name] is a new function object each time, so its argtypes are its own.)
        self.route_ex_raw = lib["moe_route_ex"]
        self.route_ex_raw.restype = c_int
        self.last_route_path_raw = lib["moe_last_route_path"]
        self.last_route_path_raw.restype = c_int
        # moe_route_prepared (a library from before it: None, and the hot path calls route_ex_raw)
        self.route_prepared_raw = lib["moe_route_prepared"] if hasattr(lib, "moe_route_prepared") else None
        if self.route_prepared_raw is not None:
            self.route_prepared_raw.restype = c_int
        self._lib = lib


_loaded = None  # (Library or None, why not)


def load():
    """The process's Library (loaded on first use), or NativeUnavailable. Not retried: the
    answer holds for the process, as a changed $MOE_ROUTER_LIB would not be seen anyway once
    loaded."""
    global _loaded
    if _loaded is None:
        paths = candidates()
        errors = []
        lib = None
        for p in paths:
            try:
                lib = Library(p)
                break
            except NativeUnavailable as e:
                errors.append(str(e))
        if lib is None:
            why = "; ".join(errors) if errors else ("libmoerouter not found ($MOE_ROUTER_LIB unset, no repository "
                                                    "build/lib, ctypes.util.find_library('moerouter') found nothing)")
            _loaded = (None, why)
        else:
            _loaded = (lib, None)
    lib, why = _loaded
    if lib is None:
        raise NativeUnavailable(why)
    return lib


def _reset_for_tests():
    global _loaded
    _loaded = None


def address(arr):
    """The address of a C-contiguous array's first byte (writable arrays by the cheaper route)."""
    if arr.flags.writeable:
        return ctypes.addressof(ctypes.c_char.from_buffer(arr))
    return arr.ctypes.data


def _pool_usable():
    """Whether a reference count tells that nobody else holds an array: true under the GIL
    (a free-threaded build counts references differently, and there outputs are copied)."""
    gil = getattr(sys, "_is_gil_enabled", None)
    return gil is None or gil()


class Stage:
    """Staging arrays for one request shape (the caller's logits shape and dtype, the layer's
    top_k), with the ctypes arguments of moe_route_ex that name them. ``wire``: the DType.

    ``call(logits, layer_id)`` (the hot path; under the owning Client's lock) copies the logits
    in, routes, and returns a RouteResult, or the status (an int) when the route failed
    (moe_route_info then holds the error's fields).

    Outputs: the library writes them into one of up to POOL (weights, ids) pairs that nobody
    but this Stage references (the arrays' reference counts say so: a caller holding a returned
    array, a view of it, a tensor made from it or a memoryview of it holds a reference), and
    that pair is returned as is; so a returned array is never written again while anything can
    see it, and a host that drops its results before the next route gets the same arrays back
    without allocating. When every pair is held, the outputs go to a private pair and are
    returned as copies."""
    __slots__ = ("input", "wire", "tokens", "k", "scratch", "pool", "call", "_in_args", "_tail", "_info_ptr")

    POOL = 4

    def __init__(self, tokens, row, in_dtype, wire, k, native, result_type):
        self.tokens, self.k, self.wire = tokens, k, wire
        self.input = np.empty((tokens, row), in_dtype)
        # moe_route_ex's arguments after layer_id: (dtype, tokens, input, input_bytes, token_ids,
        # token_id_bytes, mask, weights, ids, out_count, info)
        self._in_args = (int(wire), ctypes.c_uint64(tokens),
                         ctypes.c_void_p(address(self.input)) if self.input.nbytes else None,
                         ctypes.c_size_t(self.input.nbytes), None, 0, None)
        self._tail = (ctypes.c_size_t(tokens * k), native.info_ref)
        self._info_ptr = ctypes.pointer(native.info)
        self.scratch = self._pair()
        self.pool = []
        self.call = self._bind(native, result_type)

    def _pair(self):
        """(weights, ids, moe_route_ex's arguments after layer_id writing into them, the same as
        a moe_route_call, and a reference to that for moe_route_prepared)."""
        w = np.empty((self.tokens, self.k), np.float32)
        i = np.empty((self.tokens, self.k), np.int32)
        ptrs = tuple(ctypes.c_void_p(address(a)) if a.nbytes else None for a in (w, i))
        args = self._in_args + ptrs + self._tail
        call = RouteCall(layer_id=0, dtype=int(self.wire), tokens=self.tokens,
                         input=address(self.input) if self.input.nbytes else None,
                         input_bytes=self.input.nbytes, weights=address(w) if w.nbytes else None,
                         ids=address(i) if i.nbytes else None, out_count=self.tokens * self.k, info=self._info_ptr)
        return w, i, args, call, ctypes.byref(call)

    def _bind(self, native, result_type):
        # Everything the call needs as closure cells: no attribute lookups per call.
        inp, tokens, scratch, pool, size, make = self.input, self.tokens, self.scratch, self.pool, self.POOL, self._pair
        raw, path_raw, handle, info, unpack = native.raw, native.path_raw, native.handle, native.info, INFO.unpack_from
        prepared = native.prepared
        refs = sys.getrefcount
        use_pool = _pool_usable()
        probe = (np.empty(1), None)
        free = refs(probe[0])  # the count of an array only its pair holds, read as below

        def call(logits, layer_id):
            pair = None
            if use_pool:
                for p in pool:
                    if refs(p[0]) == free and refs(p[1]) == free:
                        pair = p
                        break
                else:
                    if len(pool) < size:
                        pair = make()
                        pool.append(pair)
            inp[...] = logits
            p = pair or scratch
            if prepared is not None:
                p[3].layer_id = layer_id
                st = prepared(handle, p[4])
            else:
                st = raw(handle, layer_id, *p[2])
            if st:
                return st
            i = unpack(info)
            # moe_route_info.served_by (2 = channel) saves a second foreign call; 0: an older library
            path = (ROUTE_PATH_CHANNEL if i[10] == 2 else ROUTE_PATH_ZMQ) if i[10] else path_raw(handle)
            if pair is None:
                w, ids = scratch[0].copy(), scratch[1].copy()
            else:
                w, ids = pair[0], pair[1]
            return result_type(w, ids, tokens, i[1], i[8] != 0, i[3], i[4], i[5], i[9] != 0,
                               "channel" if path == ROUTE_PATH_CHANNEL else "zmq")
        return call


class NativeClient:
    """One moe_client (its own ZeroMQ connection and channel) on ``endpoint``. Not thread-safe:
    the owning Client serializes calls under its lock.

    ``stages`` maps (logits shape, logits dtype, top_k, the dtype argument) to a Stage: the
    Client's fast path finds a request shape seen before there without checking the logits again
    (the call that made the Stage did)."""

    def __init__(self, lib, endpoint, timeout_ms):
        self.lib = lib
        handle = ctypes.c_void_p()
        st = lib.connect(endpoint.encode(), int(timeout_ms), ctypes.byref(handle))
        if st != 0 or not handle.value:
            raise NativeUnavailable(f"moe_connect({endpoint}) answered status {st}")
        self.handle = handle
        self.info = RouteInfo()
        self.info_ref = ctypes.byref(self.info)
        self.stages = {}
        self.raw = lib.route_ex_raw
        self.prepared = lib.route_prepared_raw
        self.path_raw = lib.last_route_path_raw

    def enable_channel(self):
        return self.lib.set_channel(self.handle, 1)

    def last_error(self):
        raw = self.lib.last_error(self.handle)
        return raw.decode("utf-8", "replace") if raw else ""

    def stage(self, stage_key, arr, wire, k, result_type):
        """The Stage of ``stage_key`` for ``arr`` (made now if needed), or None when the request
        is too large to stage."""
        stage = self.stages.get(stage_key)
        if stage is None:
            if arr.nbytes > STAGE_INPUT_BYTES or arr.shape[0] * k * 4 > STAGE_OUTPUT_BYTES:
                return None
            if len(self.stages) >= STAGE_SHAPES:
                self.stages.clear()
            stage = self.stages[stage_key] = Stage(arr.shape[0], arr.shape[1], arr.dtype, wire, k, self,
                                                   result_type)
        return stage

    def route(self, layer_id, wire, arr, k, token_ids, mask, out):
        """moe_route_ex of ``arr`` (C-contiguous [tokens, E] of DType ``wire``), token ids and
        mask (C-contiguous int32/int64 and uint8, or None), into ``out`` (a checked (weights,
        ids) pair) or new arrays, passing the arrays' memory. Returns (status, weights, ids,
        info, path): info is INFO's tuple, path a ROUTE_PATH_*."""
        tokens = arr.shape[0]
        layer_id = layer_id if layer_id < 0x80000000 else ctypes.c_uint32(layer_id)
        if out is None:
            weights, ids = np.empty((tokens, k), np.float32), np.empty((tokens, k), np.int32)
        else:
            weights, ids = out
        tid_ptr, tid_bytes, mask_ptr = None, 0, None
        if token_ids is not None:
            tid_ptr, tid_bytes = ctypes.c_void_p(address(token_ids)), token_ids.dtype.itemsize
        if mask is not None:
            mask_ptr = ctypes.c_void_p(address(mask))
        st = self.raw(self.handle, layer_id, int(wire), ctypes.c_uint64(tokens),
                      ctypes.c_void_p(address(arr)) if arr.nbytes else None, ctypes.c_size_t(arr.nbytes),
                      tid_ptr, tid_bytes, mask_ptr, ctypes.c_void_p(address(weights)) if weights.nbytes else None,
                      ctypes.c_void_p(address(ids)) if ids.nbytes else None, ctypes.c_size_t(tokens * k),
                      self.info_ref)
        i = INFO.unpack_from(self.info)
        return st, weights, ids, i, (ROUTE_PATH_CHANNEL if i[10] == 2 else ROUTE_PATH_ZMQ) if i[10] else self.path_raw(self.handle)

    def retire(self):
        """Closes the channel and unregisters its segment now (a round trip), so the daemon's
        registration count drops before close() returns; the connection stays open."""
        if self.handle is not None and self.handle.value:
            self.lib.set_channel(self.handle, 0)

    def close(self):
        """moe_close (the daemon releases what the connection held when it sees it go)."""
        h, self.handle = self.handle, None
        if h is not None and h.value:
            self.lib.close(h)
