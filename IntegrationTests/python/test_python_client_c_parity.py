"""The Python and C clients (build/lib/libmoerouter.so, through ctypes) give byte-identical
outputs for the same request, inline and via shared memory, and agree on layers, biases and
status names."""
import ctypes
import pathlib
import subprocess

import numpy as np
import pytest

import moe_router as mr
from moe_router import Client
from moe_router import _wire as w
from daemon_helpers import stop_process
from python_client_support import DTYPES, PRESETS, encode, logits, start_router

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIB = ROOT / "build" / "lib" / "libmoerouter.so"


class RouteResult(ctypes.Structure):
    _fields_ = [("nonfinite_count", ctypes.c_uint64), ("first_nonfinite_token", ctypes.c_uint64),
                ("fallback_cast", ctypes.c_int), ("compute_ns", ctypes.c_uint64)]


class Segment(ctypes.Structure):
    _fields_ = [("handle", ctypes.c_uint64), ("base", ctypes.c_void_p), ("size", ctypes.c_uint64), ("fd", ctypes.c_int)]


@pytest.fixture(scope="module")
def lib():
    if not LIB.exists():
        subprocess.run(["make", "-C", str(ROOT), "clientlib"], check=True, capture_output=True)
    c = ctypes.CDLL(str(LIB))
    c.moe_connect.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    c.moe_close.argtypes = [ctypes.c_void_p]
    c.moe_last_error.argtypes = [ctypes.c_void_p]
    c.moe_last_error.restype = ctypes.c_char_p
    c.moe_status_name.restype = ctypes.c_char_p
    c.moe_find_layer.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    c.moe_layer_bias.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32]
    c.moe_route.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p,
                            ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(RouteResult)]
    c.moe_segment_create.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(Segment)]
    c.moe_segment_destroy.argtypes = [ctypes.c_void_p, ctypes.POINTER(Segment)]
    c.moe_route_shm.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64, ctypes.POINTER(Segment),
                                ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
                                ctypes.POINTER(RouteResult)]
    return c


@pytest.fixture(scope="module")
def daemon(routerd_binary, routerd_class, tmp_path_factory):
    d = start_router(routerd_binary, routerd_class, tmp_path_factory.mktemp("pycparity"))
    yield d
    assert d.stop() == 0


class CClient:
    def __init__(self, lib, endpoint):
        self.lib = lib
        self.ptr = ctypes.c_void_p()
        self.check(lib.moe_connect(endpoint.encode(), 5000, ctypes.byref(self.ptr)), "connect")

    def check(self, status, what):
        if status != 0:
            err = self.lib.moe_last_error(self.ptr).decode() if self.ptr else ""
            raise AssertionError(f"C {what}: {self.lib.moe_status_name(status).decode()}: {err}")

    def layer_info(self, name):
        raw = ctypes.create_string_buffer(w.LAYER_INFO.size)
        self.check(self.lib.moe_find_layer(self.ptr, name.encode(), raw), "find_layer")
        return raw

    def route(self, layer_id, dtype, data, k):
        tokens = data.shape[0]
        wts, ids = np.empty((tokens, k), np.float32), np.empty((tokens, k), np.int32)
        res = RouteResult()
        self.check(self.lib.moe_route(self.ptr, layer_id, dtype, tokens, data.ctypes.data, data.nbytes, wts.ctypes.data,
                                      ids.ctypes.data, tokens * k, ctypes.byref(res)), "route")
        return wts, ids, res

    def route_shm(self, layer_id, dtype, data, k, info):
        tokens = data.shape[0]
        seg = Segment()
        out = tokens * k * 4
        self.check(self.lib.moe_segment_create(self.ptr, data.nbytes + 2 * out + 64, ctypes.byref(seg)), "segment")
        try:
            ctypes.memmove(seg.base, data.ctypes.data, data.nbytes)
            res = RouteResult()
            self.check(self.lib.moe_route_shm(self.ptr, layer_id, dtype, tokens, ctypes.byref(seg), info, 0, data.nbytes,
                                              data.nbytes + out, ctypes.byref(res)), "route_shm")
            wts = ctypes.string_at(seg.base + data.nbytes, out)
            ids = ctypes.string_at(seg.base + data.nbytes + out, out)
        finally:
            self.check(self.lib.moe_segment_destroy(self.ptr, ctypes.byref(seg)), "segment_destroy")
        return wts, ids, res

    def close(self):
        self.lib.moe_close(self.ptr)


@pytest.fixture(scope="module")
def clients(lib, daemon):
    c = CClient(lib, daemon.endpoint)
    py = Client(daemon.endpoint)
    yield c, py
    py.close()
    c.close()


def test_status_names_agree(lib):
    for s in mr.Status:
        assert lib.moe_status_name(int(s)).decode() == s.c_name


@pytest.mark.parametrize("name", PRESETS + ["deepseek-v3-fp32", "deepseek-v3-fp16"])
def test_layers_and_biases_agree(clients, name):
    c, py = clients
    layer = py.layer(name)
    info = w.LAYER_INFO.unpack(c.layer_info(name).raw)
    assert info["layer_id"] == layer.id and w.cstr(info["name"]) == layer.name
    assert (info["num_experts"], info["top_k"], info["method"], info["gate_dtype"]) == \
        (layer.num_experts, layer.top_k, int(layer.method), int(layer.gate_dtype))
    assert np.float32(info["routed_scaling_factor"]) == np.float32(layer.routed_scaling_factor)
    if layer.has_bias:
        bias = np.empty(layer.num_experts, np.float32)
        c.check(c.lib.moe_layer_bias(c.ptr, layer.id, bias.ctypes.data, layer.num_experts), "layer_bias")
        assert bias.tobytes() == layer.bias.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PRESETS + ["deepseek-v3-fp32"])
def test_python_and_c_outputs_are_byte_identical(clients, name, dtype):
    c, py = clients
    layer = py.layer(name)
    x = logits(40, layer.num_experts, seed=len(name) * 31 + len(dtype))
    x[7, 3] = np.nan  # a clamped non-finite value too
    data, declared = encode(x, dtype)
    wire = int(mr.DType[dtype.upper()])
    k = layer.top_k
    cw, cids, cres = c.route(layer.id, wire, data, k)
    pr = py.route(name, data, dtype=declared)
    assert pr.weights.tobytes() == cw.tobytes() and pr.ids.tobytes() == cids.tobytes()
    assert (pr.nonfinite_count, pr.fallback_cast) == (cres.nonfinite_count, bool(cres.fallback_cast))
    # Shared memory on both sides.
    sw, sids, _ = c.route_shm(layer.id, wire, data, k, c.layer_info(name))
    with py.session(name, 40, dtype) as s:
        ps = s.route(logits=data)
        assert ps.weights.tobytes() == sw == cw.tobytes()
        assert ps.ids.tobytes() == sids == cids.tobytes()


def test_c_client_timeout_then_recovery(lib, routerd_binary, routerd_class, tmp_path):
    """The C client waits at most its timeout (MOE_ERR_CLIENT_TIMEOUT = 101), and the late answer
    to the timed-out request is recognised by its id and dropped, so the next call works."""
    import os
    import signal
    import time
    d = routerd_class(routerd_binary, ["--preset", "mixtral-8x7b"], tmp_path)
    lib.moe_ping.argtypes = [ctypes.c_void_p]
    handle = ctypes.c_void_p()
    assert lib.moe_connect(d.endpoint.encode(), 300, ctypes.byref(handle)) == 0
    try:
        assert lib.moe_ping(handle) == 0
        stop_process(d.pid)
        try:
            t0 = time.monotonic()
            assert lib.moe_ping(handle) == 101
            assert 0.25 <= time.monotonic() - t0 < 3
            assert b"300 ms" in lib.moe_last_error(handle)
        finally:
            os.kill(d.pid, signal.SIGCONT)
        assert lib.moe_ping(handle) == 0
    finally:
        lib.moe_close(handle)
    assert d.stop() == 0
