"""The Python client against a real moe-routerd: layers, every preset in every dtype inline and
via shared memory (bit-exact vs routing_reference), lifecycle, and the example script."""
import dataclasses
import os
import pathlib
import subprocess
import sys
import zlib

import numpy as np
import pytest

import moe_router
import routing_reference as ref
from moe_router import Client, DType, Method, Nonfinite, Scoring
from python_client_support import (DTYPES, MAX_REGISTRATIONS, MAX_TOKENS, PRESETS, assert_bit_exact, encode, logits,
                                   reference, start_router)

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def daemon(routerd_binary, routerd_class, tmp_path_factory):
    d = start_router(routerd_binary, routerd_class, tmp_path_factory.mktemp("pyclient"))
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def client(daemon):
    with Client(daemon.endpoint) as c:
        yield c


def shm_names():
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"moe-router-py-{os.getpid()}-"))


# ---- HELLO / LIST_LAYERS / STATS / PING -----------------------------------------------------
def test_hello_reports_the_daemon(client):
    s = client.server
    assert s.protocol_version == moe_router.PROTOCOL_VERSION and s.shm_allowed
    assert s.layer_count == 4 + len(PRESETS)
    assert s.max_registrations == MAX_REGISTRATIONS and s.max_tokens == MAX_TOKENS
    assert s.daemon_version.startswith("moe-routerd") and s.backend
    assert client.hello() == s
    assert client.ping() > 0


@pytest.mark.parametrize("name", PRESETS)
def test_layers_carry_the_full_preset_spec(client, name):
    method, e, k, g, gk, scoring, renorm, rsf, biased = ref.PRESETS[name]
    layer = client.layer(name)
    assert client.layer(layer.id) is layer
    assert layer.method is Method[method.upper()] and layer.scoring is Scoring[scoring.upper()]
    assert (layer.num_experts, layer.top_k, layer.num_expert_group, layer.topk_group) == (e, k, g, gk)
    assert layer.renormalize == renorm
    assert layer.routed_scaling_factor == np.float32(rsf)
    assert layer.gate_dtype is DType.BF16 and layer.nonfinite is Nonfinite.CLAMP
    if biased:
        assert layer.bias.dtype == np.float32 and not layer.bias.flags.writeable
        # The stored bias is the synthetic bias rounded to the gate dtype, widened exactly.
        np.testing.assert_array_equal(layer.bias, ref.round_trip(ref.synthetic_bias(e), "bf16"))
    else:
        assert layer.bias is None and not layer.has_bias


def test_config_layers_keep_their_gate_dtype_and_policy(client):
    assert client.layer("deepseek-v3-fp32").gate_dtype is DType.FP32
    assert client.layer("deepseek-v3-fp16").gate_dtype is DType.FP16
    assert client.layer("deepseek-v3-reject").nonfinite is Nonfinite.REJECT
    fp32 = client.layer("deepseek-v3-fp32")
    np.testing.assert_array_equal(fp32.bias, ref.synthetic_bias(256))
    assert [l.id for l in client.layers()] == list(range(4 + len(PRESETS)))


def test_stats_count_routes(client):
    before = client.stats()
    client.route("mixtral-8x7b", np.zeros((3, 8), np.float32))
    after = client.stats()
    assert after.routes >= before.routes + 1 and after.tokens >= before.tokens + 3
    assert after.backend == client.server.backend


# ---- ROUTE: every preset, every dtype, inline and shm, bit-exact ----------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PRESETS)
def test_route_inline_matches_reference(client, name, dtype):
    layer = client.layer(name)
    x = logits(64, layer.num_experts, seed=zlib.crc32(f"{name}/{dtype}".encode()))
    data, declared = encode(x, dtype)
    want_w, want_ids, _ = reference(layer, x, dtype)
    r = client.route(name, data, dtype=declared)
    assert_bit_exact(r, want_w, want_ids, f"{name}/{dtype}/inline")
    assert r.tokens == 64 and r.nonfinite_count == 0
    assert r.fallback_cast == (layer.has_bias and dtype != "bf16")
    w, ids = r  # unpacks like a pair
    assert w is r.weights and ids is r.ids
    w[0, 0] = 0  # results are the caller's own arrays


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PRESETS)
def test_route_shm_session_matches_reference(client, name, dtype):
    layer = client.layer(name)
    x = logits(48, layer.num_experts, seed=7 + zlib.crc32(f"{name}/{dtype}".encode()))
    data, _ = encode(x, dtype)
    want_w, want_ids, _ = reference(layer, x, dtype)
    with client.session(name, max_tokens=64, dtype=dtype) as s:
        s.input[:48] = data.view(s.input.dtype)
        s.weights[:] = -1
        s.ids[:] = -1
        r = s.route(48)
        assert_bit_exact(r, want_w, want_ids, f"{name}/{dtype}/shm")
        # The result arrays are the session's own shared views, written in place.
        assert np.shares_memory(r.weights, s.weights) and np.shares_memory(r.ids, s.ids)
        assert (s.ids[48:] == -1).all() and (s.weights[48:] == -1).all()
        assert r.fallback_cast == (layer.has_bias and dtype != "bf16")
        # Reuse: a second, smaller batch through the same buffers.
        y = logits(5, layer.num_experts, seed=99)
        want_w2, want_ids2, _ = reference(layer, y, dtype)
        assert_bit_exact(s.route(logits=encode(y, dtype)[0]), want_w2, want_ids2, f"{name}/{dtype}/shm reuse")


@pytest.mark.parametrize("gate", ["deepseek-v3-fp32", "deepseek-v3-fp16", "deepseek-v3"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gate_dtype_fallback_is_reported_and_exact(client, gate, dtype):
    layer = client.layer(gate)
    x = logits(32, 256, seed=5)
    want_w, want_ids, _ = reference(layer, x, dtype)
    data, declared = encode(x, dtype)
    r = client.route(layer, data, dtype=declared)
    assert_bit_exact(r, want_w, want_ids, f"{gate}/{dtype}")
    assert r.fallback_cast == (layer.has_bias and layer.gate_dtype.label != dtype)


def test_shared_buffer_views_mix_with_inline(client):
    """Logits in shm with inline outputs, and inline logits with outputs written into shm."""
    layer = client.layer("deepseek-v3")
    x = logits(16, 256, seed=3)
    want_w, want_ids, _ = reference(layer, x, "fp32")
    with client.shared_buffer(1 << 16) as buf:
        inp = buf.array(np.float32, (16, 256), offset=0)
        inp[:] = x
        assert_bit_exact(client.route(layer, inp), want_w, want_ids, "shm in, inline out")
        w = buf.array(np.float32, (16, 8), offset=16384)
        ids = buf.array(np.int32, (16, 8), offset=16384 + 512)
        r = client.route(layer, x.copy(), out=(w, ids))
        assert r.weights is w and r.ids is ids
        assert_bit_exact(r, want_w, want_ids, "inline in, shm out")
    # Plain numpy `out` arrays are filled from the answer.
    w2, ids2 = np.empty((16, 8), np.float32), np.empty((16, 8), np.int32)
    r = client.route(layer, x, out=(w2, ids2))
    assert r.weights is w2
    assert_bit_exact((w2, ids2), want_w, want_ids, "inline into out=")


def test_clamp_layer_counts_nonfinite_input(client):
    layer = client.layer("deepseek-v3")
    x = logits(8, 256, seed=11)
    x[5, 3] = np.nan
    x[6, 100] = np.inf
    x[6, 101] = -np.inf
    want_w, want_ids, nonfinite = reference(layer, x, "fp32")
    r = client.route(layer, x)
    assert r.nonfinite_count == nonfinite == 3
    assert_bit_exact(r, want_w, want_ids, "nonfinite clamp")


def test_one_dimensional_logits_are_one_token(client):
    layer = client.layer("qwen3-moe")
    x = logits(1, 128, seed=2)
    w, ids = client.route(layer, x[0])
    assert w.shape == (1, 8)
    assert_bit_exact((w, ids), *reference(layer, x, "fp32")[:2])


def test_non_contiguous_logits_are_accepted(client):
    layer = client.layer("mixtral-8x7b")
    x = logits(10, 16, seed=4)[:, ::2]
    assert not x.flags.c_contiguous
    assert_bit_exact(client.route(layer, x), *reference(layer, np.ascontiguousarray(x), "fp32")[:2])


def test_zero_tokens(client):
    w, ids = client.route("mixtral-8x7b", np.zeros((0, 8), np.float32))
    assert w.shape == (0, 2) and ids.shape == (0, 2)


def test_torch_tensors_when_torch_is_importable(client):
    torch = pytest.importorskip("torch")
    layer = client.layer("deepseek-v3")
    x = logits(8, 256, seed=8)
    for dtype, tdtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        t = torch.from_numpy(x).to(tdtype)
        assert_bit_exact(client.route(layer, t), *reference(layer, x, dtype)[:2], f"torch {dtype}")
    with client.session(layer, 8, dtype="bf16") as s:
        s.input_tensor()[:] = torch.from_numpy(x).to(torch.bfloat16)
        assert_bit_exact(s.route(8), *reference(layer, x, "bf16")[:2], "torch session")


def test_torch_stays_optional():
    code = "import sys, moe_router; assert 'torch' not in sys.modules, 'moe_router imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- lifecycle -------------------------------------------------------------------------------
def test_close_unregisters_everything(daemon, client):
    base = client.stats()
    c = Client(daemon.endpoint)
    s1 = c.session("deepseek-v3", 128)
    s2 = c.session("kimi-k2", 16, dtype="bf16")
    b = c.shared_buffer(4096)
    assert shm_names() == [], "segment names must be unlinked right after registration"
    mid = client.stats()
    assert mid.registrations == base.registrations + 3
    assert mid.mapped_bytes >= base.mapped_bytes + s1.buffer.size + s2.buffer.size + 4096
    weights = s1.weights
    c.close()
    assert c.closed and s1.buffer.closed and s2.buffer.closed and b.closed
    after = client.stats()
    assert after.registrations == base.registrations and after.mapped_bytes == base.mapped_bytes
    weights[:] = 1.0  # a view kept past close() is still valid memory, just no longer shared
    with pytest.raises(moe_router.ClientArgumentError):
        c.ping()
    c.close()  # idempotent


def test_context_manager_closes_and_buffers_close_alone(daemon, client):
    base = client.stats().registrations
    with Client(daemon.endpoint) as c:
        with c.session("glm-4.5", 4) as s:
            assert client.stats().registrations == base + 1
            assert s.route(4).ids.shape == (4, 8)
        assert client.stats().registrations == base
        s.close()  # idempotent
        c.session("glm-4.5", 4)
        assert client.stats().registrations == base + 1
    assert client.stats().registrations == base


def test_default_endpoint_follows_the_c_client(monkeypatch):
    for var in ("MOE_ROUTER_ENDPOINT", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert moe_router.default_endpoint() == f"ipc:///tmp/moe-router-{os.getuid()}/routerd.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert moe_router.default_endpoint() == "ipc:///run/user/7/moe-router/routerd.sock"
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/moe-router:/run/other")
    assert moe_router.default_endpoint() == "ipc:///run/moe-router/routerd.sock"
    monkeypatch.setenv("MOE_ROUTER_ENDPOINT", "tcp://127.0.0.1:5555")
    assert moe_router.default_endpoint() == "tcp://127.0.0.1:5555"


def test_default_endpoint_is_used(daemon, monkeypatch):
    monkeypatch.setenv("MOE_ROUTER_ENDPOINT", daemon.endpoint)
    with Client() as c:
        assert c.endpoint == daemon.endpoint and c.layer("mixtral-8x7b").num_experts == 8


def test_stale_layer_object_is_refused_by_the_daemon(client):
    ghost = dataclasses.replace(client.layer("mixtral-8x7b"), id=999)
    with pytest.raises(moe_router.UnknownLayerError) as e:
        client.route(ghost, np.zeros((1, 8), np.float32))
    assert "999" in e.value.message


# ---- the example -----------------------------------------------------------------------------
def test_example_script_runs(daemon):
    script = ROOT / "examples" / "python" / "route.py"
    out = subprocess.run([sys.executable, script, daemon.endpoint], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deepseek-v3" in out.stdout and "inline and shm results identical" in out.stdout
