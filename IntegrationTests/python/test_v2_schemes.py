"""Protocol version 2's routing schemes through the Python client against a real moe-routerd,
bit for bit against routing_reference.py: the DeepSeek-V4 presets (sqrtsoftplus; hash routing
with int32 and int64 token ids), a scoring-none layer, renorm_epsilon layers, a hash layer with
its own table, padding masks (inline and in shared memory), and the version-1 path of the same
client giving the same answers."""
import numpy as np
import pytest

import routing_reference as ref
from moe_router import BadVersionError, Client, DType, Method, Scoring, TokenIdError
from python_client_support import DTYPES, assert_bit_exact, encode, logits, reference

HASH = "deepseek-v4-hash"
VOCAB = ref.DEEPSEEK_V4_VOCAB
CUSTOM_VOCAB = 1000

CONFIG = """\
layers:
  - {preset: deepseek-v4}
  - {preset: deepseek-v4-flash}
  - {preset: deepseek-v4-hash}
  - {preset: deepseek-v4, name: deepseek-v4-bf16, gate_dtype: bf16}
  - {preset: deepseek-v3}
  - name: none-layer
    method: biased_topk
    num_experts: 64
    top_k: 4
    scoring: none
    renormalize: true
    routed_scaling_factor: 1.5
    gate_dtype: fp32
    bias_file: none-bias.bin
  - name: eps-layer
    method: biased_topk
    num_experts: 256
    top_k: 8
    scoring: sigmoid
    renormalize: true
    renorm_epsilon: 1.0e-3
    routed_scaling_factor: 2.0
    gate_dtype: bf16
    bias_file: eps-bias.bin
  - name: none-eps-layer
    method: softmax_topk
    num_experts: 32
    top_k: 4
    scoring: none
    renormalize: true
    renorm_epsilon: 1.0e-4
    gate_dtype: fp32
  - {preset: minimax-m2, name: minimax-eps, renorm_epsilon: 1.0e-20}
  - {preset: deepseek-v4-hash, name: hash-custom, tid2eid_file: custom-table.bin}
"""


def custom_table():
    """A tid2eid of 1000 rows for 384 experts: 6 distinct experts per row, from a seeded rng."""
    rng = np.random.default_rng(77)
    return np.stack([rng.choice(384, size=6, replace=False) for _ in range(CUSTOM_VOCAB)]).astype(np.int32)


def write_config(tmp):
    (tmp / "none-bias.bin").write_bytes((ref.synthetic_bias(64) * np.float32(5)).astype("<f4").tobytes())
    (tmp / "eps-bias.bin").write_bytes(ref.synthetic_bias(256).astype("<f4").tobytes())
    (tmp / "custom-table.bin").write_bytes(custom_table().astype("<i4").tobytes())
    (tmp / "layers.yaml").write_text(CONFIG)
    return tmp / "layers.yaml"


@pytest.fixture(scope="module")
def daemon(routerd_binary, routerd_class, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v2schemes")
    d = routerd_class(routerd_binary, ["--config", str(write_config(tmp))], tmp)
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def client(daemon):
    with Client(daemon.endpoint) as c:
        yield c


@pytest.fixture(scope="module")
def client_v1(daemon):
    with Client(daemon.endpoint, protocol=1) as c:
        yield c


def hash_reference(layer, x, dtype, token_ids, table, mask=None):
    spec = layer.spec()
    w, ids, nonfinite = ref.route(spec, None, ref.round_trip(x, dtype), token_ids=token_ids, table=table, mask=mask)
    return w.astype(np.float32), ids, nonfinite


# ---- the layers as listed -------------------------------------------------------------------
def test_hello_negotiates_version_2_and_reports_limits(client, client_v1):
    assert client.protocol == 2 and client.server.protocol_version == 2
    info = client.info
    assert info.supports_mask and info.supports_token_ids and info.supports_placement and info.supports_expert_load
    assert info.control_allowed, "the suite runs as the daemon's uid (or root)"
    assert info.max_segment_bytes >= 1 << 30 and info.max_registrations_per_uid >= 1
    assert info.heartbeat_timeout_ms > info.heartbeat_ivl_ms > 0 and info.max_physical_experts >= 384
    assert client_v1.protocol == 1 and client_v1.info is None and client_v1.server.protocol_version == 1


@pytest.mark.parametrize("name", list(ref.V4_PRESETS))
def test_v4_presets_carry_their_spec(client, name):
    method, e, k, g, gk, scoring, renorm, rsf, biased = ref.V4_PRESETS[name]
    layer = client.layer(name)
    assert layer.method is Method[method.upper()] and layer.scoring is Scoring.SQRTSOFTPLUS
    assert (layer.num_experts, layer.top_k, layer.num_expert_group, layer.topk_group) == (e, k, g, gk)
    assert layer.renormalize == renorm and layer.routed_scaling_factor == np.float32(rsf)
    assert layer.gate_dtype is DType.FP32, "DeepSeek-V4's natural gate dtype"
    assert layer.renorm_epsilon == 0 and layer.placement_epoch == 0 and layer.num_physical == 0
    if name == HASH:
        assert layer.hash_vocab == VOCAB and layer.hash_routed and layer.bias is None
    else:
        assert layer.hash_vocab == 0 and not layer.hash_routed
        np.testing.assert_array_equal(layer.bias, ref.synthetic_bias(e))


def test_config_layers_carry_scoring_and_epsilon(client):
    assert client.layer("none-layer").scoring is Scoring.NONE
    assert client.layer("eps-layer").renorm_epsilon == np.float32(1e-3)
    assert client.layer("none-eps-layer").renorm_epsilon == np.float32(1e-4)
    assert client.layer("minimax-eps").renorm_epsilon == np.float32(1e-20)
    assert client.layer("hash-custom").hash_vocab == CUSTOM_VOCAB
    assert client.layer("deepseek-v4-bf16").gate_dtype is DType.BF16


def test_version_1_listing_has_no_v2_fields(client_v1):
    layer = client_v1.layer(HASH)
    assert layer.hash_vocab == 0 and layer.scoring is Scoring.SQRTSOFTPLUS
    assert client_v1.stats().hash_routes is None


# ---- scored layers ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["deepseek-v4", "deepseek-v4-flash", "deepseek-v4-bf16", "none-layer", "eps-layer",
                                  "none-eps-layer", "minimax-eps"])
def test_scored_layers_bit_exact(client, name, dtype):
    layer = client.layer(name)
    x = logits(64, layer.num_experts, seed=len(name))
    want_w, want_ids, nonfinite = reference(layer, x, dtype)
    sent, dt = encode(x, dtype)
    r = client.route(layer, sent, dtype=dt)
    assert_bit_exact(r, want_w, want_ids, f"{name} {dtype}")
    assert r.nonfinite_count == nonfinite and not r.hash_routed and r.masked_tokens == 0 and r.placement_epoch == 0
    assert r.fallback_cast == (layer.bias is not None and dtype != layer.gate_dtype.label)


@pytest.mark.parametrize("name", ["deepseek-v4", "none-layer", "eps-layer"])
def test_scored_layers_bit_exact_in_shared_memory(client, name):
    layer = client.layer(name)
    x = logits(300, layer.num_experts, seed=3)
    x[7, 3] = np.nan
    want_w, want_ids, nonfinite = reference(layer, x, "fp32")
    with client.session(layer, 512) as s:
        s.input[:300] = x
        r = s.route(300)
        assert_bit_exact(r, want_w, want_ids, name)
        assert r.nonfinite_count == nonfinite == 1


def test_eps_changes_weights_and_is_never_skipped(client):
    """none-eps-layer: all-negative logits give a negative sum, which the contract's
    renormalisation would skip; with an epsilon it divides anyway."""
    layer = client.layer("none-eps-layer")
    x = -np.abs(logits(8, 32, seed=9)) - np.float32(0.5)
    w, ids = client.route(layer, x)
    want_w, want_ids, _ = reference(layer, x, "fp32")
    assert_bit_exact((w, ids), want_w, want_ids)
    raw = np.take_along_axis(x, ids, axis=1)
    assert not np.array_equal(w, raw), "renormalised"
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-3)


# ---- hash routing -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("id_type", [np.int32, np.int64])
def test_hash_preset_bit_exact(client, id_type, dtype):
    layer = client.layer(HASH)
    rng = np.random.default_rng(int(np.dtype(id_type).itemsize) * 10 + DTYPES.index(dtype))
    x = logits(96, 384, seed=4)
    x[10, :] = np.nan  # counted, scores clamped
    tid = rng.integers(0, VOCAB, size=96).astype(id_type)
    tid[:3] = [0, VOCAB - 1, 0]
    want_w, want_ids, nonfinite = hash_reference(layer, x, dtype, tid, ref.preset_table(HASH))
    sent, dt = encode(x, dtype)
    r = client.route(layer, sent, dtype=dt, token_ids=tid)
    assert_bit_exact(r, want_w, want_ids, f"hash {np.dtype(id_type)} {dtype}")
    assert r.hash_routed and not r.fallback_cast and r.nonfinite_count == nonfinite == 384
    np.testing.assert_array_equal(r.ids[0], r.ids[2])


def test_hash_token_ids_as_list_and_torch(client):
    torch = pytest.importorskip("torch")
    layer = client.layer(HASH)
    x = logits(5, 384, seed=5)
    ids_list = [1, 2, 3, 129279, 42]
    want_w, want_ids, _ = hash_reference(layer, x, "fp32", np.array(ids_list), ref.preset_table(HASH))
    assert_bit_exact(client.route(layer, x, token_ids=ids_list), want_w, want_ids, "list")
    assert_bit_exact(client.route(layer, torch.from_numpy(x), token_ids=torch.tensor(ids_list)), want_w, want_ids, "torch")
    assert_bit_exact(client.route(layer, x, token_ids=torch.tensor(ids_list, dtype=torch.int32)), want_w, want_ids)


def test_hash_layer_with_its_own_table(client):
    layer = client.layer("hash-custom")
    x = logits(40, 384, seed=6)
    tid = np.random.default_rng(6).integers(0, CUSTOM_VOCAB, size=40)
    want_w, want_ids, _ = hash_reference(layer, x, "fp32", tid, custom_table())
    r = client.route(layer, x, token_ids=tid)
    assert_bit_exact(r, want_w, want_ids)
    assert r.hash_routed
    with pytest.raises(TokenIdError) as e:
        client.route(layer, x[:2], token_ids=[5, CUSTOM_VOCAB])
    assert e.value.token == 1


@pytest.mark.parametrize("id_dtype", ["int32", "int64"])
def test_hash_in_shared_memory(client, id_dtype):
    layer = client.layer(HASH)
    x = logits(200, 384, seed=7)
    tid = np.random.default_rng(7).integers(0, VOCAB, size=200)
    want_w, want_ids, _ = hash_reference(layer, x, "fp32", tid, ref.preset_table(HASH))
    with client.session(layer, 256, token_ids=id_dtype) as s:
        assert s.token_ids.dtype == np.dtype(id_dtype) and s.mask is None
        s.input[:200] = x
        s.token_ids[:200] = tid
        r = s.route(200)
        assert_bit_exact(r, want_w, want_ids, "shm")
        assert r.hash_routed
        # route(token_ids=...) copies into the session's buffer first
        r = s.route(logits=x[:50], token_ids=tid[:50][::-1].copy())
        w2, ids2, _ = hash_reference(layer, x[:50], "fp32", tid[:50][::-1], ref.preset_table(HASH))
        assert_bit_exact(r, w2, ids2, "copied")
    with client.session(layer, 16) as s:  # a hash layer's session gets int64 token ids by default
        assert s.token_ids is not None and s.token_ids.dtype == np.int64


def test_hash_layer_needs_token_ids(client, client_v1):
    layer = client.layer(HASH)
    x = logits(4, 384)
    with pytest.raises(TokenIdError):
        client.route(layer, x)
    with pytest.raises(TokenIdError) as e:
        client_v1.route(HASH, x)
    assert "token" in e.value.message
    with pytest.raises(TokenIdError) as e:
        client.route(layer, x, token_ids=[0, 1, VOCAB, -1])
    assert e.value.token == 2 and str(VOCAB) in e.value.message


def test_scored_layer_ignores_token_ids(client):
    layer = client.layer("deepseek-v4")
    x = logits(6, 384, seed=8)
    want_w, want_ids, _ = reference(layer, x, "fp32")
    r = client.route(layer, x, token_ids=np.full(6, 10**12, np.int64))
    assert_bit_exact(r, want_w, want_ids)
    assert not r.hash_routed


# ---- padding masks -----------------------------------------------------------------------------
def masked_case(tokens, experts, seed):
    rng = np.random.default_rng(seed)
    x = logits(tokens, experts, seed=seed)
    mask = rng.random(tokens) < 0.3
    mask[0], mask[-1] = True, False
    x[mask, 0] = np.nan  # padding rows are not read: not counted
    return x, mask


@pytest.mark.parametrize("name", ["deepseek-v4", "deepseek-v3", "eps-layer", HASH])
def test_mask_inline(client, name):
    layer = client.layer(name)
    x, mask = masked_case(50, layer.num_experts, seed=len(name))
    tid = None
    if layer.hash_routed:
        tid = np.random.default_rng(1).integers(0, VOCAB, size=50)
        tid[mask] = -3  # padding rows' token ids are not read either
        want_w, want_ids, nonfinite = hash_reference(layer, x, "fp32", tid, ref.preset_table(HASH), mask=mask)
    else:
        bias = None if layer.bias is None else ref.round_trip(layer.bias, "fp32")
        want_w, want_ids, nonfinite = ref.route(layer.spec(), bias, x, mask=mask)
    r = client.route(layer, x, token_ids=tid, mask=mask)
    assert_bit_exact(r, want_w.astype(np.float32), want_ids, name)
    assert r.masked_tokens == int(mask.sum()) and r.nonfinite_count == nonfinite == 0
    assert (r.ids[mask] == -1).all() and (r.weights[mask] == 0).all()
    # unmasked rows are routed as they would be alone
    alone = client.route(layer, x[~mask], token_ids=None if tid is None else tid[~mask])
    np.testing.assert_array_equal(r.ids[~mask], alone.ids)
    np.testing.assert_array_equal(r.weights[~mask].view(np.uint32), alone.weights.view(np.uint32))


def test_mask_as_uint8_torch_and_all_padding(client):
    layer = client.layer("deepseek-v4")
    x = logits(4, 384)
    r = client.route(layer, x, mask=np.array([1, 0, 1, 0], np.uint8))
    assert r.masked_tokens == 2 and (r.ids[[0, 2]] == -1).all()
    r = client.route(layer, x, mask=np.ones(4, bool))
    assert r.masked_tokens == 4 and (r.ids == -1).all() and (r.weights == 0).all()
    torch = pytest.importorskip("torch")
    r = client.route(layer, torch.from_numpy(x), mask=torch.tensor([False, True, False, False]))
    assert r.masked_tokens == 1 and (r.ids[1] == -1).all() and (r.ids[0] >= 0).all()


@pytest.mark.parametrize("name", ["deepseek-v4", HASH])
def test_mask_in_shared_memory(client, name):
    layer = client.layer(name)
    x, mask = masked_case(120, layer.num_experts, seed=21)
    tid = np.random.default_rng(2).integers(0, VOCAB, size=120) if layer.hash_routed else None
    if tid is not None:
        want_w, want_ids, _ = hash_reference(layer, x, "fp32", tid, ref.preset_table(HASH), mask=mask)
    else:
        want_w, want_ids, _ = ref.route(layer.spec(), layer.bias, x, mask=mask)
    with client.session(layer, 128, mask=True) as s:
        s.input[:120] = x
        s.mask[:120] = mask
        if tid is not None:
            s.token_ids[:120] = tid
        r = s.route(120)
        assert_bit_exact(r, want_w.astype(np.float32), want_ids, "shm mask")
        assert r.masked_tokens == int(mask.sum())
        # The views are the session's own: the answer landed in shared memory.
        assert np.shares_memory(r.ids, s.ids)
    # Only the mask in shared memory, everything else inline.
    with client.shared_buffer(4096) as buf:
        m = buf.array(np.uint8, 120)
        m[:] = mask
        r = client.route(layer, x, token_ids=tid, mask=m)
        assert_bit_exact(r, want_w.astype(np.float32), want_ids, "mask by reference")


# ---- the version-1 path against the version-2 daemon --------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["deepseek-v3", "deepseek-v4"])
def test_version_1_path_matches_version_2(client, client_v1, name, dtype):
    x = logits(64, client.layer(name).num_experts, seed=12)
    sent, dt = encode(x, dtype)
    r2 = client.route(name, sent, dtype=dt)
    r1 = client_v1.route(name, sent, dtype=dt)
    np.testing.assert_array_equal(r1.ids, r2.ids)
    np.testing.assert_array_equal(r1.weights.view(np.uint32), r2.weights.view(np.uint32))
    assert (r1.nonfinite_count, r1.fallback_cast) == (r2.nonfinite_count, r2.fallback_cast)
    assert r1.masked_tokens == 0 and r1.placement_epoch == 0 and not r1.hash_routed
    want_w, want_ids, _ = reference(client.layer(name), x, dtype)
    assert_bit_exact(r1, want_w, want_ids)
    with client_v1.session(name, 64, dtype) as s:
        s.input[:] = sent
        r = s.route()
        np.testing.assert_array_equal(r.ids, r2.ids)


def test_version_1_path_refuses_v2_features(client_v1):
    x = logits(2, 256)
    for call in (lambda: client_v1.route("deepseek-v3", x, mask=[0, 1]),
                 lambda: client_v1.route("deepseek-v3", x, token_ids=[1, 2]),
                 lambda: client_v1.set_placement("deepseek-v3", [[e] for e in range(256)]),
                 lambda: client_v1.clear_placement("deepseek-v3"),
                 lambda: client_v1.expert_load("deepseek-v3"),
                 lambda: client_v1.session("deepseek-v3", 4, mask=True)):
        with pytest.raises(BadVersionError) as e:
            call()
        assert "protocol version 2" in e.value.message and "protocol=1" in e.value.message


def test_stats_count_v2_work(client):
    before = client.stats()
    assert before.hash_routes is not None and before.max_registrations_per_uid >= 1
    client.route(HASH, logits(3, 384), token_ids=[1, 2, 3], mask=[0, 1, 0])
    after = client.stats()
    assert after.hash_routes == before.hash_routes + 1
    assert after.masked_tokens == before.masked_tokens + 1


def test_routing_function_passes_token_ids(client):
    torch = pytest.importorskip("torch")
    from moe_router.integrations import routing_function
    fn = routing_function(client, HASH)
    x = logits(7, 384, seed=13)
    tid = torch.arange(7, dtype=torch.int64) * 1234
    weights, ids = fn(None, torch.from_numpy(x), 6, True, token_ids=tid)
    want_w, want_ids, _ = hash_reference(client.layer(HASH), x, "fp32", tid.numpy(), ref.preset_table(HASH))
    assert_bit_exact((weights.numpy(), ids.numpy()), want_w, want_ids)
    with pytest.raises(TokenIdError):
        fn(None, torch.from_numpy(x), 6, True)


@pytest.mark.parametrize("backend", ["cpu-generic", "cpu-avx512"])
def test_every_cpu_kernel_bit_exact(start_daemon, tmp_path, backend):
    """The same layers on each CPU kernel (the default daemon runs the fastest one only), with
    and without padding rows, large enough batches to take the parallel path too."""
    d = start_daemon("--config", str(write_config(tmp_path)), "--backend", backend)
    with Client(d.endpoint, timeout_ms=30000) as c:
        if c.server.backend != backend:
            pytest.skip(f"{backend} is not available here ({c.server.backend})")
        for name in ["deepseek-v4", "deepseek-v4-flash", "none-layer", "eps-layer", "none-eps-layer", "minimax-eps",
                     HASH]:
            layer = c.layer(name)
            for tokens, dtype in ((33, "fp32"), (4000, "bf16")):
                x, mask = masked_case(tokens, layer.num_experts, seed=tokens)
                tid = np.random.default_rng(tokens).integers(0, VOCAB, size=tokens) if layer.hash_routed else None
                for m in (None, mask):
                    held = ref.round_trip(x, dtype)
                    if tid is not None:
                        want_w, want_ids, _ = ref.route(layer.spec(), None, held, token_ids=tid,
                                                        table=ref.preset_table(HASH), mask=m)
                    else:
                        bias = None if layer.bias is None else ref.round_trip(layer.bias, dtype)
                        want_w, want_ids, _ = ref.route(layer.spec(), bias, held, mask=m)
                    sent, dt = encode(x, dtype)
                    r = c.route(layer, sent, dtype=dt, token_ids=tid, mask=m)
                    assert_bit_exact(r, want_w.astype(np.float32), want_ids,
                                     f"{backend} {name} {tokens} {dtype} mask={m is not None}")
