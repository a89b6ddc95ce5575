"""An independent numpy reading of shared/ROUTING.md.

`route(spec, bias, x, exact=True)` follows the contract in float32 with the project's exp
definition (see Sources/CMoEKernels/moe_token.h: Cody-Waite + Cephes polynomial, no FMA,
16-lane softmax sum) so that ids and weights can be compared bit for bit. With `exact=False`
it computes the same routing in float64 with numpy's exp: the mathematical answer, used to
bound the float32 result's error.

The added schemes ("Added schemes" in shared/ROUTING.md): scorings `sqrtsoftplus` (float32 as
moe_token.h's mrk_sqrtsoftplus_f) and `none`, `renorm_epsilon`, hash routing (`table` = tid2eid
with `token_ids`), padding masks, expert placement (`route(..., placement=...)`) and load
counting (`expert_load`). Presets `deepseek-v4`, `deepseek-v4-flash` and `deepseek-v4-hash`
(V4_PRESETS; `synthetic_table` is the hash preset's tid2eid).
"""
import numpy as np

F = np.float32
LOG2E = F(1.44269504088896341)
LN2_HI = F(0.693359375)
LN2_LO = F(-2.12194440e-4)
MAGIC = F(12582912.0)
POLY = [F(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                       1.6666665459e-1, 5.0000001201e-1)]
ONE = F(1)

PRESETS = {
    # name: (method, E, k, G, Gk, scoring, renormalize, rsf, biased)
    "deepseek-v3": ("biased_grouped_topk", 256, 8, 8, 4, "sigmoid", True, 2.5, True),
    "kimi-k2": ("biased_grouped_topk", 384, 8, 1, 1, "sigmoid", True, 2.827, True),
    "glm-4.5": ("biased_grouped_topk", 160, 8, 1, 1, "sigmoid", True, 2.5, True),
    "glm-4.5-air": ("biased_grouped_topk", 128, 8, 1, 1, "sigmoid", True, 1.0, True),
    "minimax-m2": ("biased_topk", 256, 8, 1, 1, "sigmoid", True, 1.0, True),
    "deepseek-v2": ("grouped_topk", 160, 6, 8, 3, "softmax", False, 16.0, False),
    "deepseek-v2-lite": ("softmax_topk", 64, 6, 1, 1, "softmax", False, 1.0, False),
    "qwen3-moe": ("softmax_topk", 128, 8, 1, 1, "softmax", True, 1.0, False),
    "mixtral-8x7b": ("softmax_topk", 8, 2, 1, 1, "softmax", True, 1.0, False),
    "gpt-oss-120b": ("topk_softmax", 128, 4, 1, 1, "softmax", False, 1.0, False),
    "llama-4-maverick": ("llama4_top1", 128, 1, 1, 1, "sigmoid", False, 1.0, False),
}

# The protocol-2 presets (same columns), kept apart from PRESETS so that the suites that start
# a daemon with every PRESETS entry, or feed them to moe-route-eval, stay as they were.
# Their natural gate dtype is fp32 (DeepSeek-V4's gate computes in fp32).
V4_PRESETS = {
    "deepseek-v4": ("biased_topk", 384, 6, 1, 1, "sqrtsoftplus", True, 2.5, True),
    "deepseek-v4-flash": ("biased_topk", 256, 6, 1, 1, "sqrtsoftplus", True, 2.5, True),
    "deepseek-v4-hash": ("biased_topk", 384, 6, 1, 1, "sqrtsoftplus", True, 2.5, False),
}
ALL_PRESETS = {**PRESETS, **V4_PRESETS}
HASH_PRESETS = {"deepseek-v4-hash"}
DEEPSEEK_V4_VOCAB = 129280


def synthetic_bias(count):
    """Presets.syntheticBias: splitmix64-derived values in [-0.1, 0.1), rounded to float32."""
    m = (1 << 64) - 1
    out = []
    for i in range(count):
        z = ((i + 1) * 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        z ^= z >> 31
        out.append(((z >> 40) / 16777216.0 - 0.5) * 0.2)
    return np.array(out, dtype=np.float64).astype(np.float32)


def splitmix64(i):
    """splitmix64's output for each input i (uint64 array): the state after i + 1 steps from 0,
    as in synthetic_bias; vectorised with numpy's wrapping uint64 arithmetic."""
    z = (np.asarray(i, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def synthetic_table(vocab=DEEPSEEK_V4_VOCAB, top_k=6, num_experts=384):
    """TokenTable.synthetic: tid2eid [vocab, top_k] int32, row t = (base + j * step) mod E for
    j < k, base = splitmix64(t) mod E, step = 1 + splitmix64(t + 2^32) mod (E // k)."""
    t = np.arange(vocab, dtype=np.uint64)
    e = np.uint64(num_experts)
    base = splitmix64(t) % e
    step = np.uint64(1) + splitmix64(t + np.uint64(1 << 32)) % np.uint64(num_experts // top_k)
    j = np.arange(top_k, dtype=np.uint64)
    return ((base[:, None] + j[None, :] * step[:, None]) % e).astype(np.int32)


_TABLES = {}


def preset_table(name):
    """The tid2eid table of a hash preset (built once per process), or None."""
    if name not in HASH_PRESETS:
        return None
    if name not in _TABLES:
        _, e, k, *_ = ALL_PRESETS[name]
        _TABLES[name] = synthetic_table(DEEPSEEK_V4_VOCAB, k, e)
        _TABLES[name].flags.writeable = False
    return _TABLES[name]


def natural_gate_dtype(name):
    """The gate dtype a preset gets when none is named: fp32 for DeepSeek-V4, else bf16."""
    return "fp32" if name.startswith("deepseek-v4") else "bf16"


def preset_spec(name, gate_dtype="bf16"):
    """A preset as a spec dict; gate_dtype None: the preset's natural one. A hash preset's spec
    has hash_vocab > 0 (its table: preset_table(name))."""
    method, e, k, g, gk, scoring, renorm, rsf, biased = ALL_PRESETS[name]
    return dict(name=name, method=method, num_experts=e, top_k=k, num_expert_group=g,
                topk_group=gk, scoring=scoring, renormalize=renorm, routed_scaling_factor=rsf,
                gate_dtype=gate_dtype or natural_gate_dtype(name), bias=synthetic_bias(e) if biased else None,
                renorm_epsilon=0.0, hash_vocab=DEEPSEEK_V4_VOCAB if name in HASH_PRESETS else 0)


# ---- dtypes -----------------------------------------------------------------------------
def to_bf16_bits(x):
    """float32 -> bf16 bit patterns, round to nearest even; NaN stays (quiet) NaN."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), r)


def from_bf16_bits(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_trip(x, dtype):
    x = np.asarray(x, dtype=np.float32)
    if dtype == "fp32":
        return x
    if dtype == "fp16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)
    return from_bf16_bits(to_bf16_bits(x))


def encode(x, dtype):
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "fp32":
        return x.tobytes()
    if dtype == "fp16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).tobytes()
    return to_bf16_bits(x).tobytes()


# ---- the contract's exp and sigmoid, float32 ---------------------------------------------
def exp_parts(t):
    t = np.asarray(t, dtype=np.float32)
    nan = np.isnan(t)
    t = np.where(t < F(-104), F(-104), t)
    n = (t * LOG2E + MAGIC) - MAGIC
    r = (t - n * LN2_HI) - n * LN2_LO
    p = POLY[0]
    for c in POLY[1:]:
        p = p * r + c
    hi = ONE + r
    lo = ((ONE - hi) + r) + p * (r * r)
    e = hi + lo
    e_lo = (hi - e) + lo
    ni = np.where(nan, 0, n).astype(np.int32)
    n1 = -((-ni) // 2)  # C division truncates toward zero; ni <= 0
    n2 = ni - n1
    s1 = ((n1 + 127).astype(np.uint32) << 23).view(np.float32)
    s2 = ((n2 + 127).astype(np.uint32) << 23).view(np.float32)
    res = (e * s1) * s2
    lo_out = (e_lo * s1) * s2
    return np.where(nan, np.float32(np.nan), res), np.where(nan, F(0), lo_out)


def exp32(t):
    return exp_parts(t)[0]


def sigmoid32(x):
    x = np.asarray(x, dtype=np.float32)
    t, tl = exp_parts(-np.abs(x))
    d = ONE + t
    de = (ONE - d) + t
    neg = x < 0
    s0 = np.where(neg, t, ONE) / d
    cnum = np.where(neg, tl, F(0)) - s0 * (de + tl)
    inv = np.where(neg, ONE - s0, s0)
    return s0 + cnum * inv


# ---- sqrt(softplus(x)), float32 as moe_token.h's mrk_sqrtsoftplus_f ------------------------
LOG_POLY = [F(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                           1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                           3.3333331174e-1)]
SQRT_HALF_UP = F(1.41421356)


def log_reduced32(m, e):
    """mrk_log_reduced: log(m) for m in [sqrt(1/2), sqrt(2)] plus e * ln 2 (e is 0 or 1)."""
    f = m - ONE
    z = f * f
    y = LOG_POLY[0]
    for c in LOG_POLY[1:]:
        y = y * f + c
    y = y * f
    y = y * z
    y = y + e * LN2_LO
    y = y - F(0.5) * z
    return (f + y) + e * LN2_HI


def sqrtsoftplus32(x):
    """sqrt(softplus(x)) in float32, bit for bit as mrk_sqrtsoftplus_f (no FMA)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        a = np.abs(x)
        t, tl = exp_parts(-a)
        u = ONE + t
        c = (t - (u - ONE)) + tl
        big = u > SQRT_HALF_UP
        m = np.where(big, u * F(0.5), u)
        l = log_reduced32(m, np.where(big, ONE, F(0))) + c / u
        sp = np.where(x > F(0), x + l, l)
        mid = np.sqrt(sp)
        low = exp32(F(0.5) * x)
        high = np.sqrt(x)
    return np.where(x > F(20), high, np.where(x < F(-17.5), low, mid)).astype(np.float32)


def sqrtsoftplus64(x):
    """The mathematical sqrt(softplus(x)) in float64 (softplus(x) = x for x > 20)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.sqrt(np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))))


def elementwise_score(scoring, x, exact=True):
    """An element-wise scoring function (sigmoid, sqrtsoftplus, none) on float32/float64 x."""
    if scoring == "sigmoid":
        return sigmoid32(x) if exact else 1 / (1 + np.exp(-x))
    if scoring == "sqrtsoftplus":
        return sqrtsoftplus32(x) if exact else sqrtsoftplus64(x)
    if scoring == "none":
        return x.copy()
    raise ValueError(f"scoring {scoring!r} is not element-wise")


def softmax32(x):
    t, e_count = x.shape
    m = np.max(x, axis=1, keepdims=True)
    e = exp32(x - m)
    pad = (-e_count) % 16
    lanes_src = np.concatenate([e, np.zeros((t, pad), np.float32)], axis=1).reshape(t, -1, 16)
    lanes = np.zeros((t, 16), np.float32)
    for j in range(lanes_src.shape[1]):
        lanes = lanes + lanes_src[:, j, :]
    w = 8
    while w >= 1:
        lanes = np.concatenate([lanes[:, :w] + lanes[:, w:2 * w], lanes[:, 2 * w:]], axis=1)
        w //= 2
    return e / lanes[:, :1]


def softmax64(x):
    m = np.max(x, axis=1, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=1, keepdims=True)


# ---- routing -------------------------------------------------------------------------------
def finish_weights(w, spec, dt):
    """mrk_finish_weights: optional renormalisation (sum in column order; skipped when <= 0, or
    with renorm_epsilon > 0 always w / (sum + eps)), then rsf."""
    t_count, k = w.shape
    if spec["renormalize"]:
        s = np.zeros(t_count, dt)
        for j in range(k):
            s = s + w[:, j]
        eps = dt(np.float32(spec.get("renorm_epsilon", 0.0) or 0.0))
        if eps > 0:
            w = w / (s + eps)[:, None]
        else:
            w = np.where(s[:, None] > 0, w / np.where(s > 0, s, 1)[:, None], w)
    return w * dt(spec["routed_scaling_factor"])


def check_token_ids(token_ids, vocab, mask=None):
    """(first bad token, its id) among the unmasked tokens, or None: what TOKEN_ID names."""
    tid = np.asarray(token_ids).astype(np.int64)
    bad = (tid < 0) | (tid >= vocab)
    if mask is not None:
        bad &= np.asarray(mask) == 0
    if not bad.any():
        return None
    t = int(np.argmax(bad))
    return t, int(tid[t])


def place(ids, replicas):
    """Logical ids [T, k] (-1: padding) -> physical ids: token t choosing logical e gets
    replicas[e][t mod len(replicas[e])]; columns keep their order."""
    counts = np.array([len(r) for r in replicas], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])[:-1]
    flat = np.concatenate([np.asarray(r, np.int64) for r in replicas])
    t = np.arange(ids.shape[0], dtype=np.int64)[:, None]
    e = np.where(ids >= 0, ids, 0).astype(np.int64)
    phys = flat[offsets[e] + t % counts[e]]
    return np.where(ids >= 0, phys, ids).astype(np.int32)


def expert_load(ids, num_experts):
    """Tokens per logical expert in logical ids [T, k] (padding rows, -1, not counted)."""
    ids = np.asarray(ids).reshape(-1)
    return np.bincount(ids[ids >= 0], minlength=num_experts).astype(np.uint64)


def route(spec, bias, x, exact=True, token_ids=None, table=None, mask=None, placement=None):
    """x: [T, E] float32 (already as the request dtype holds it). bias: float32 values as the
    request sees them, or None (unused by hash routing). Returns (weights [T,k]
    float32/float64, ids [T,k] int32, nonfinite).

    table: a hash-routed layer's tid2eid [vocab, k] with token_ids [T] (ValueError naming the
    first token outside the table, as TOKEN_ID would). mask: [T] 0/1, 1 = padding row (ids -1,
    weights 0, logits not read nor counted). placement: replicas per logical expert (ids become
    physical ids). ``spec["renorm_epsilon"]`` > 0: w / (sum + eps)."""
    dt = np.float32 if exact else np.float64
    t_count = x.shape[0]
    keep = np.ones(t_count, bool) if mask is None else np.asarray(mask).reshape(-1) == 0
    nonfinite = int(np.count_nonzero(~np.isfinite(x[keep])))
    x = x.astype(dt)
    if table is not None:
        if token_ids is None:
            raise ValueError("a hash-routed layer needs token ids")
        bad = check_token_ids(token_ids, table.shape[0], None if mask is None else ~keep)
        if bad is not None:
            raise ValueError(f"token_ids[{bad[0]}] = {bad[1]} is outside the table (vocab {table.shape[0]})")
        tid = np.where(keep, np.asarray(token_ids).astype(np.int64), 0)
        ids = table[tid].astype(np.int32)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if spec["scoring"] == "softmax":
                w = np.take_along_axis(softmax32(x) if exact else softmax64(x), ids, axis=1)
            else:
                w = elementwise_score(spec["scoring"], np.take_along_axis(x, ids, axis=1), exact)
            w = np.where(np.isfinite(w), w, dt(0)).astype(dt)
            w = finish_weights(w, spec, dt)
    else:
        w, ids = _route_scored(spec, bias, x, dt, exact)
    if mask is not None:
        ids = np.where(keep[:, None], ids, -1).astype(np.int32)
        w = np.where(keep[:, None], w, dt(0))
    if placement is not None:
        ids = place(ids, placement)
    return w.astype(dt), ids, nonfinite


def _route_scored(spec, bias, x, dt, exact):
    method, k = spec["method"], spec["top_k"]
    t_count, e_count = x.shape
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if method in ("topk_softmax", "llama4_top1"):
            score = x.copy()
        elif spec["scoring"] == "softmax":
            score = softmax32(x) if exact else softmax64(x)
        else:
            score = elementwise_score(spec["scoring"], x, exact)
    score = np.where(np.isfinite(score), score, dt(0)).astype(dt)
    key = score + bias.astype(dt) if bias is not None else score.copy()

    g = spec.get("num_expert_group", 1)
    if method in ("grouped_topk", "biased_grouped_topk") and g > 1:
        p = e_count // g
        grouped = np.sort(key.reshape(t_count, g, p), axis=2)[:, :, ::-1]
        gscore = grouped[:, :, 0] + grouped[:, :, 1] if method == "biased_grouped_topk" else grouped[:, :, 0]
        order = np.argsort(-gscore, axis=1, kind="stable")
        keep = np.zeros((t_count, g), bool)
        np.put_along_axis(keep, order[:, :spec["topk_group"]], True, axis=1)
        key = np.where(np.repeat(keep, p, axis=1), key, -np.inf).astype(dt)

    ids = np.argsort(-key, axis=1, kind="stable")[:, :k].astype(np.int32)
    chosen = np.take_along_axis(key, ids, axis=1)
    rsf = dt(spec["routed_scaling_factor"])
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if method == "topk_softmax":
            e = exp32(chosen - chosen[:, :1]) if exact else np.exp(chosen - chosen[:, :1])
            s = np.zeros(t_count, dt)
            for j in range(k):
                s = s + e[:, j]
            w = (e / s[:, None]) * rsf
        elif method == "llama4_top1":
            w = (sigmoid32(chosen) if exact else 1 / (1 + np.exp(-chosen))) * rsf
        else:
            w = finish_weights(np.take_along_axis(score, ids, axis=1), spec, dt)
    return w.astype(dt), ids
