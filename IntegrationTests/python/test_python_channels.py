"""The Python client's shared-memory channel (issue 18): inline ROUTEs on an ipc connection go
through the C client library's channel (moe_router._native, ctypes) with the same results bit for
bit and the same exceptions as the pyzmq path; ``RouteResult.path`` says which path served each;
the opt-outs (``Client(channel=False)``, MOE_ROUTER_CHANNEL=0); what stays on ZeroMQ (shared-memory
routes, tcp, protocol 1, a missing library: a warning, not an error); threads; closing; and a
micro-benchmark of the Python-over-C cost of a 1-token route (printed; only channel < ZeroMQ is
asserted)."""
import ctypes
import dataclasses
import gc
import os
import pathlib
import subprocess
import threading
import time
import warnings

import numpy as np
import pytest

import routing_reference as ref
from daemon_helpers import free_port, wait_until
from moe_router import (BadMaskError, Client, NonfiniteInputError, SizeMismatchError, TokenIdError,
                        UnknownLayerError, _native)
from python_client_support import assert_bit_exact, encode, logits, reference

ROOT = pathlib.Path(__file__).resolve().parents[2]
DS = "deepseek-v3"
HASH = "deepseek-v4-hash"
VOCAB = ref.DEEPSEEK_V4_VOCAB

CONFIG = """\
layers:
  - {preset: deepseek-v3}
  - {preset: deepseek-v3, name: deepseek-v3-fp32, gate_dtype: fp32}
  - {preset: deepseek-v3, name: deepseek-v3-fp16, gate_dtype: fp16}
  - {preset: deepseek-v3, name: deepseek-v3-reject, nonfinite: reject}
  - {preset: deepseek-v4-hash}
"""


@pytest.fixture(scope="module")
def library():
    """libmoerouter as the package finds it (built here with `make clientlib` when it is the
    repository's own)."""
    if not os.environ.get("MOE_ROUTER_LIB"):
        p = subprocess.run(["make", "-s", "clientlib"], cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    _native._reset_for_tests()
    return _native.load()


@pytest.fixture(scope="module")
def daemon(routerd_binary, routerd_class, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pychannels")
    (tmp / "layers.yaml").write_text(CONFIG)
    d = routerd_class(routerd_binary, ["--config", str(tmp / "layers.yaml")], tmp)
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def chan(daemon, library):
    with Client(daemon.endpoint, channel=True) as c:
        assert c.channel and c.channel_error is None and c.info.supports_channels
        yield c


@pytest.fixture(scope="module")
def zmq_client(daemon):
    with Client(daemon.endpoint, channel=False) as c:
        assert not c.channel
        yield c


def same(a, b, what=""):
    """Two RouteResults with the same outputs (bit for bit) and the same report."""
    assert a.weights.dtype == b.weights.dtype == np.float32 and a.ids.dtype == b.ids.dtype == np.int32, what
    assert a.weights.shape == b.weights.shape and a.ids.shape == b.ids.shape, what
    np.testing.assert_array_equal(a.weights.view(np.uint32), b.weights.view(np.uint32), err_msg=what)
    np.testing.assert_array_equal(a.ids, b.ids, err_msg=what)
    for f in ("tokens", "nonfinite_count", "fallback_cast", "masked_tokens", "placement_epoch", "hash_routed"):
        assert getattr(a, f) == getattr(b, f), (f, what)


# ---- the library -----------------------------------------------------------------------------
def test_route_info_layout_matches_the_header(tmp_path, library):
    src = tmp_path / "layout.c"
    fields = [f for f, _ in _native.RouteInfo._fields_]
    src.write_text('#include <stdio.h>\n#include <stddef.h>\n#include "moe_router_client.h"\nint main(void) {\n'
                   '    printf("%zu", sizeof(moe_route_info));\n'
                   + "".join(f'    printf(" %zu", offsetof(moe_route_info, {f}));\n' for f in fields)
                   + "    return 0;\n}\n")
    subprocess.run(["cc", "-std=c11", "-I", str(ROOT / "Include"), str(src), "-o", str(tmp_path / "layout")],
                   check=True)
    got = [int(v) for v in subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True,
                                          check=True).stdout.split()]
    assert got == [ctypes.sizeof(_native.RouteInfo)] + [getattr(_native.RouteInfo, f).offset for f in fields]


def test_library_search_order(monkeypatch, library):
    monkeypatch.delenv("MOE_ROUTER_LIB", raising=False)
    built = ROOT / "build" / "lib" / "libmoerouter.so.1"
    if built.exists():
        assert _native.candidates()[0] == str(built)  # this package is an editable checkout
    monkeypatch.setenv("MOE_ROUTER_LIB", "/nonexistent/libmoerouter.so.1")
    assert _native.candidates() == ["/nonexistent/libmoerouter.so.1"]  # only that one


def test_an_installed_library_is_found_without_the_repository(monkeypatch, tmp_path):
    """An installed package (no repository around it) finds `make install`'s library under its
    prefix even where the linker's cache does not list it."""
    monkeypatch.delenv("MOE_ROUTER_LIB", raising=False)
    monkeypatch.setattr(_native, "_repo_library", lambda: None)
    monkeypatch.setattr(_native.ctypes.util, "find_library", lambda name: None)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libmoerouter.so.1").write_bytes(b"")
    monkeypatch.setattr(_native.sys, "prefix", str(tmp_path))
    assert _native.candidates()[0] == str(tmp_path / "lib" / "libmoerouter.so.1")


# ---- same answers ----------------------------------------------------------------------------
@pytest.mark.parametrize("layer_name", [DS, "deepseek-v3-fp32", "deepseek-v3-fp16"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_deepseek_v3_bit_identical(chan, zmq_client, layer_name, dtype):
    layer = chan.layer(layer_name)
    # 1..64 tokens go through per-shape staging arrays; 300 (300 KiB of fp32) past them.
    for tokens in (1, 2, 7, 64, 300, 1):
        x = logits(tokens, layer.num_experts, seed=tokens)
        data, declared = encode(x, dtype)
        for _ in range(2):  # the second call takes the fast path of a shape seen before
            r = chan.route(layer, data, dtype=declared)
            z = zmq_client.route(layer, data, dtype=declared)
            assert r.path == "channel" and z.path == "zmq"
            same(r, z, f"{layer_name} {dtype} {tokens}")
            assert_bit_exact(r, *reference(layer, x, dtype)[:2], f"{layer_name} {dtype} {tokens}")


def test_one_dimensional_logits_and_out_arrays(chan, zmq_client):
    layer = chan.layer(DS)
    x = logits(1, layer.num_experts, seed=5)[0]
    r1, r2 = chan.route(layer, x), chan.route(layer, x)
    assert r1.weights.shape == (1, layer.top_k) and r1.path == r2.path == "channel"
    same(r1, zmq_client.route(layer, x))
    w, ids = np.full((1, layer.top_k), np.nan, np.float32), np.full((1, layer.top_k), -7, np.int32)
    r = chan.route(layer, x, out=(w, ids))
    assert r.weights is w and r.ids is ids and r.path == "channel"
    same(r, r1)
    # A returned array is the caller's: later routes of the same shape never write into it.
    keep_w, keep_ids = r1.weights.copy(), r1.ids.copy()
    y = logits(1, layer.num_experts, seed=6)
    r3 = chan.route(layer, y)
    assert not np.shares_memory(r3.weights, r1.weights) and not np.shares_memory(r3.ids, r1.ids)
    np.testing.assert_array_equal(r1.weights, keep_w)
    np.testing.assert_array_equal(r1.ids, keep_ids)
    # Non-contiguous logits and a read-only array take the same path.
    wide = np.repeat(logits(3, layer.num_experts, seed=8), 2, axis=1)[:, ::2]
    ro = logits(3, layer.num_experts, seed=8)
    ro.flags.writeable = False
    for arr in (wide, wide, ro, ro):
        same(chan.route(layer, arr), zmq_client.route(layer, np.ascontiguousarray(arr)))


def test_returned_arrays_are_never_written_again(chan, zmq_client):
    """Small routes return arrays from a pool that are reused only once nothing refers to them:
    results kept in a list, a view kept past its result, and a result dropped at once."""
    layer = chan.layer(DS)
    xs = [logits(2, layer.num_experts, seed=40 + i) for i in range(12)]
    wants = [zmq_client.route(layer, x) for x in xs]
    kept = [chan.route(layer, x) for x in xs]  # more than the pool holds
    views = []
    for x, want in zip(xs, wants):
        r = chan.route(layer, x)
        views.append((r.weights[1], r.ids[:, :3], memoryview(r.ids), want))
        del r
        chan.route(layer, xs[0])  # dropped at once: its arrays may serve the next call
    for r, want in zip(kept, wants):
        assert r.path == "channel"
        same(r, want)
    for w_row, ids_cols, mv, want in views:
        np.testing.assert_array_equal(w_row.view(np.uint32), want.weights[1].view(np.uint32))
        np.testing.assert_array_equal(ids_cols, want.ids[:, :3])
        np.testing.assert_array_equal(np.frombuffer(mv, np.int32).reshape(want.ids.shape), want.ids)


def test_masks_bit_identical(chan, zmq_client):
    layer = chan.layer(DS)
    x = logits(9, layer.num_experts, seed=11)
    for mask in ([0, 1, 0, 0, 1, 1, 0, 0, 1], np.zeros(9, bool), np.ones(9, np.uint8)):
        r = chan.route(layer, x, mask=mask)
        z = zmq_client.route(layer, x, mask=mask)
        assert r.path == "channel"
        same(r, z, f"mask {mask}")
        m = np.asarray(mask, np.uint8)
        assert r.masked_tokens == m.sum() and (r.ids[m == 1] == -1).all()


@pytest.mark.parametrize("id_type", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_deepseek_v4_hash_with_token_ids(chan, zmq_client, id_type, dtype):
    layer = chan.layer(HASH)
    assert layer.hash_routed
    rng = np.random.default_rng(3)
    for tokens in (1, 16):
        x = logits(tokens, layer.num_experts, seed=tokens)
        data, declared = encode(x, dtype)
        tid = rng.integers(0, VOCAB, tokens).astype(id_type)
        mask = (np.arange(tokens) % 5 == 4).astype(np.uint8)
        for m in (None, mask):
            r = chan.route(layer, data, dtype=declared, token_ids=tid, mask=m)
            z = zmq_client.route(layer, data, dtype=declared, token_ids=tid, mask=m)
            assert r.path == "channel" and r.hash_routed
            same(r, z, f"hash {np.dtype(id_type)} {dtype} {tokens}")
            want_w, want_ids, _ = ref.route(layer.spec(), None, ref.round_trip(x, dtype), token_ids=tid,
                                            table=ref.preset_table(HASH), mask=m)
            assert_bit_exact(r, want_w.astype(np.float32), want_ids.astype(np.int32), "hash reference")


# ---- same errors -----------------------------------------------------------------------------
def error_of(fn):
    with pytest.raises(Exception) as e:
        fn()
    return e.value


def both_raise(chan, zmq_client, cls, call):
    """`call(client)` raises `cls` on both paths with the same message and fields; the channel
    serves the next route."""
    a, b = error_of(lambda: call(chan)), error_of(lambda: call(zmq_client))
    assert type(a) is type(b) is cls, (a, b)
    assert a.message == b.message and a.status == b.status, (a.message, b.message)
    for f in ("token", "count"):
        assert getattr(a, f, None) == getattr(b, f, None), f
    layer = chan.layer(DS)
    assert chan.route(layer, logits(1, layer.num_experts)).path == "channel"
    return a


def test_errors_are_the_same_on_both_paths(chan, zmq_client):
    ds = chan.layer(DS)
    x = logits(4, ds.num_experts)
    ghost = dataclasses.replace(ds, id=999)  # a layer the daemon does not have: its answer
    e = both_raise(chan, zmq_client, UnknownLayerError, lambda c: c.route(ghost, x))
    assert "999" in e.message
    for _ in range(2):  # the second time through the fast path's staging arrays
        e = both_raise(chan, zmq_client, SizeMismatchError, lambda c: c.route(ds, logits(2, ds.num_experts + 1)))
        assert "num_experts=256" in e.message
    both_raise(chan, zmq_client, BadMaskError, lambda c: c.route(ds, x, mask=np.array([0, 2, 0, 1], np.uint8)))
    h = chan.layer(HASH)
    hx = logits(3, h.num_experts)
    e = both_raise(chan, zmq_client, TokenIdError, lambda c: c.route(h, hx, token_ids=np.array([1, VOCAB, 2])))
    assert e.token == 1
    both_raise(chan, zmq_client, TokenIdError, lambda c: c.route(h, hx))  # no token ids at all
    bad = logits(3, ds.num_experts)
    bad[2, 7] = np.nan
    for _ in range(2):
        e = both_raise(chan, zmq_client, NonfiniteInputError, lambda c: c.route("deepseek-v3-reject", bad))
        assert e.token == 2 and e.count == 1


# ---- what takes which path -------------------------------------------------------------------
def test_opt_out_by_flag_and_environment(daemon, library, monkeypatch):
    layer_x = logits(1, 256)
    with Client(daemon.endpoint, channel=False) as c:
        assert not c.channel and c.route(DS, layer_x).path == "zmq"
    monkeypatch.setenv("MOE_ROUTER_CHANNEL", "0")
    with Client(daemon.endpoint) as c:
        assert not c.channel and "MOE_ROUTER_CHANNEL" in c.channel_error
        assert c.route(DS, layer_x).path == "zmq"
    with Client(daemon.endpoint, channel=True) as c:  # the flag wins over the environment
        assert c.route(DS, layer_x).path == "channel"
    monkeypatch.setenv("MOE_ROUTER_CHANNEL", "1")
    with Client(daemon.endpoint) as c:
        assert c.channel and c.route(DS, layer_x).path == "channel"


def test_shared_memory_routes_stay_on_zeromq(chan, zmq_client):
    layer = chan.layer(DS)
    x = logits(5, layer.num_experts, seed=21)
    with chan.session(layer, max_tokens=8) as s:
        s.input[:5] = x
        r = s.route(5)
        assert r.path == "zmq"
        same(r, zmq_client.route(layer, x))
        # Logits that are a view of this client's shared memory go by reference (ZeroMQ) ...
        assert chan.route(layer, s.input[:5]).path == "zmq"
        # ... and other inline logits still use the channel while a session is open.
        assert chan.route(layer, x).path == "channel"
        buf = chan.shared_buffer(1 << 16)
        w_out = buf.array(np.float32, (5, layer.top_k))
        ids_out = buf.array(np.int32, (5, layer.top_k), offset=4096)
        r = chan.route(layer, x, out=(w_out, ids_out))
        assert r.path == "zmq" and r.weights is w_out
        same(r, zmq_client.route(layer, x))
        buf.close()


def test_protocol_1_and_tcp_stay_on_zeromq(routerd_binary, routerd_class, tmp_path, library):
    port = free_port()
    d = routerd_class(routerd_binary, ["--preset", DS, "--tcp", f"tcp://127.0.0.1:{port}"], tmp_path)
    try:
        x = logits(2, 256)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not worth a warning: the user asked for these
            with Client(d.endpoint, protocol=1) as c:
                assert not c.channel and c.route(DS, x).path == "zmq"
            with Client(f"tcp://127.0.0.1:{port}") as c:
                assert not c.channel and "ipc" in c.channel_error and c.route(DS, x).path == "zmq"
            with Client(d.endpoint) as c:
                assert c.route(DS, x).path == "channel"
    finally:
        d.stop()


def test_missing_library_falls_back_with_a_warning(daemon, zmq_client, monkeypatch):
    monkeypatch.setenv("MOE_ROUTER_LIB", "/nonexistent/libmoerouter.so.1")
    _native._reset_for_tests()
    try:
        with Client(daemon.endpoint) as c:
            assert c.channel  # decided at the first route
            x = logits(3, 256, seed=4)
            with pytest.warns(RuntimeWarning, match="/nonexistent/libmoerouter.so.1"):
                r = c.route(DS, x)
            assert r.path == "zmq" and not c.channel and "nonexistent" in c.channel_error
            same(r, zmq_client.route(DS, x))
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # once per client
                assert c.route(DS, x).path == "zmq"
    finally:
        _native._reset_for_tests()  # the next load reads the environment again (restored by monkeypatch)


# ---- threads and lifetime ----------------------------------------------------------------------
def test_threads_sharing_a_channel_client(chan, zmq_client):
    layers = [chan.layer(n) for n in (DS, "deepseek-v3-fp32", HASH)]
    work = []
    for t in range(6):
        layer = layers[t % 3]
        xs = [logits(1 + 5 * t, layer.num_experts, seed=100 * t + r) for r in range(20)]
        tid = np.arange(1 + 5 * t, dtype=np.int64) * 97 if layer.hash_routed else None
        work.append((layer, xs, tid, [zmq_client.route(layer, x, token_ids=tid) for x in xs]))
    errors = []
    barrier = threading.Barrier(len(work))

    def body(t):
        try:
            layer, xs, tid, wants = work[t]
            barrier.wait()
            for x, want in zip(xs, wants):
                r = chan.route(layer, x, token_ids=tid)
                assert r.path == "channel"
                same(r, want, f"thread {t}")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((t, e))
    threads = [threading.Thread(target=body, args=(t,)) for t in range(len(work))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads) and not errors, errors


def test_close_and_finalizer_release_the_channel(daemon, zmq_client, library):
    base = zmq_client.stats().registrations
    c = Client(daemon.endpoint)
    assert c.route(DS, logits(1, 256)).path == "channel"
    assert zmq_client.stats().registrations == base + 1  # the channel's segment
    c.close()  # unregisters the channel's segment before it returns
    assert zmq_client.stats().registrations == base
    with pytest.raises(Exception, match="closed"):
        c.route(DS, logits(1, 256))
    c = Client(daemon.endpoint)
    assert c.route(DS, logits(1, 256)).path == "channel"
    assert zmq_client.stats().registrations == base + 1
    del c  # the finalizer closes the C client's connection; the daemon releases it when it sees that
    gc.collect()
    assert wait_until(lambda: zmq_client.stats().registrations == base)


# ---- the cost ---------------------------------------------------------------------------------
BENCH_C = r"""
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "moe_router_client.h"
static long long now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                                return t.tv_sec * 1000000000LL + t.tv_nsec; }
static int cmp(const void *a, const void *b) { long long x = *(const long long *)a, y = *(const long long *)b;
                                                return (x > y) - (x < y); }
/* bench ENDPOINT LAYER N WARMUP: the median of N back-to-back 1-token moe_route_ex calls. */
int main(int argc, char **argv) {
    if (argc < 5) return 2;
    int n = atoi(argv[3]), warm = atoi(argv[4]);
    moe_client *c;
    moe_layer_info L;
    if (moe_connect(argv[1], 5000, &c) || moe_find_layer(c, argv[2], &L)) return 1;
    static float x[4096], w[256];
    static int32_t ids[256];
    moe_route_info info;
    for (uint32_t i = 0; i < L.num_experts; i++) x[i] = (float)((i * 2654435761u) % 1000) / 250.0f - 2.0f;
    long long *t = malloc(sizeof(long long) * (size_t)n);
    for (int i = 0; i < warm + n; i++) {
        long long t0 = now_ns();
        int st = moe_route_ex(c, L.layer_id, MOE_DTYPE_FP32, 1, x, L.num_experts * 4, NULL, 0, NULL, w, ids,
                              L.top_k, &info);
        long long t1 = now_ns();
        if (st) { fprintf(stderr, "%s\n", moe_last_error(c)); return 1; }
        if (i >= warm) t[i - warm] = t1 - t0;
    }
    qsort(t, (size_t)n, sizeof *t, cmp);
    printf("%d %lld\n", moe_last_route_path(c), t[n / 2]);
    moe_close(c);
    return 0;
}
"""


def test_micro_benchmark_python_over_c(daemon, library, tmp_path):
    """Median of back-to-back 1-token deepseek-v3 routes: the C client (a C loop), moe_route_ex
    through ctypes (a tight Python loop), Client.route over the channel and over ZeroMQ, in
    alternating rounds. Printed; only 'the channel is faster than ZeroMQ' is asserted."""
    exe = tmp_path / "bench"
    subprocess.run(["cc", "-O2", "-std=c11", "-I", str(ROOT / "Include"), "-x", "c", "-", "-x", "none", library.path,
                    f"-Wl,-rpath,{os.path.dirname(os.path.abspath(library.path))}", "-o", str(exe)],
                   input=BENCH_C, text=True, check=True)
    n, warm = 4000, 400
    rounds = {"c": [], "ctypes": [], "python": [], "python-zmq": []}

    def median_ns(fn, count):
        ts = []
        for _ in range(warm + count):
            t = time.perf_counter_ns()
            fn()
            ts.append(time.perf_counter_ns() - t)
        return float(np.median(ts[warm:]))

    with Client(daemon.endpoint) as c, Client(daemon.endpoint, channel=False) as z:
        layer = c.layer(DS)
        x = ((np.arange(layer.num_experts, dtype=np.uint64) * 2654435761 % 1000) / 250.0 - 2.0).astype(np.float32)
        x = x.reshape(1, -1)
        assert c.route(layer, x).path == "channel"
        nat = c._native
        w, ids = np.empty((1, layer.top_k), np.float32), np.empty((1, layer.top_k), np.int32)
        args = (nat.handle, layer.id, 0, ctypes.c_uint64(1), ctypes.c_void_p(x.ctypes.data), ctypes.c_size_t(x.nbytes),
                None, 0, None, ctypes.c_void_p(w.ctypes.data), ctypes.c_void_p(ids.ctypes.data),
                ctypes.c_size_t(layer.top_k), nat.info_ref)
        raw = nat.raw
        for _ in range(5):
            out = subprocess.run([str(exe), daemon.endpoint, DS, str(n), str(warm)], capture_output=True, text=True,
                                 check=True).stdout.split()
            assert out[0] == "1", "the C loop did not use a channel"
            rounds["c"].append(float(out[1]))
            rounds["ctypes"].append(median_ns(lambda: raw(*args), n))
            rounds["python"].append(median_ns(lambda: c.route(layer, x), n))
            rounds["python-zmq"].append(median_ns(lambda: z.route(layer, x), n // 4))
        assert c.route(layer, x).path == "channel"
    med = {k: float(np.median(v)) for k, v in rounds.items()}
    print("\n1-token deepseek-v3 route, median of back-to-back calls (us), per round:")
    for k, v in rounds.items():
        print(f"  {k:11s} " + "  ".join(f"{t / 1000:7.2f}" for t in v) + f"   median {med[k] / 1000:7.2f}")
    for ref_name in ("c", "ctypes"):
        d = [(p - r) / 1000 for p, r in zip(rounds["python"], rounds[ref_name])]
        print(f"  Client.route over the channel minus {ref_name}, per round: " + "  ".join(f"{v:+.2f}" for v in d)
              + f"   median {float(np.median(d)):+.2f} us")
    assert med["python"] < med["python-zmq"]
