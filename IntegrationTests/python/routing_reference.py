"""An independent numpy reading of shared/ROUTING.md.

`route(spec, bias, x, exact=True)` follows the contract in float32 with the project's exp
definition (see Sources/CMoEKernels/moe_token.h: Cody-Waite + Cephes polynomial, no FMA,
16-lane softmax sum) so that ids and weights can be compared bit for bit. With `exact=False`
it computes the same routing in float64 with numpy's exp: the mathematical answer, used to
bound the float32 result's error.
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


def preset_spec(name, gate_dtype="bf16"):
    method, e, k, g, gk, scoring, renorm, rsf, biased = PRESETS[name]
    return dict(name=name, method=method, num_experts=e, top_k=k, num_expert_group=g,
                topk_group=gk, scoring=scoring, renormalize=renorm, routed_scaling_factor=rsf,
                gate_dtype=gate_dtype, bias=synthetic_bias(e) if biased else None)


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
def route(spec, bias, x, exact=True):
    """x: [T, E] float32 (already as the request dtype holds it). bias: float32 values as the
    request sees them, or None. Returns (weights [T,k] float32/float64, ids [T,k] int32, nonfinite)."""
    dt = np.float32 if exact else np.float64
    method, k = spec["method"], spec["top_k"]
    t_count, e_count = x.shape
    nonfinite = int(np.count_nonzero(~np.isfinite(x)))
    x = x.astype(dt)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if method in ("topk_softmax", "llama4_top1"):
            score = x.copy()
        elif spec["scoring"] == "softmax":
            score = softmax32(x) if exact else softmax64(x)
        else:
            score = sigmoid32(x) if exact else 1 / (1 + np.exp(-x))
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
    if method == "topk_softmax":
        e = exp32(chosen - chosen[:, :1]) if exact else np.exp(chosen - chosen[:, :1])
        s = np.zeros(t_count, dt)
        for j in range(k):
            s = s + e[:, j]
        w = (e / s[:, None]) * rsf
    elif method == "llama4_top1":
        w = (sigmoid32(chosen) if exact else 1 / (1 + np.exp(-chosen))) * rsf
    else:
        w = np.take_along_axis(score, ids, axis=1)
        if spec["renormalize"]:
            s = np.zeros(t_count, dt)
            for j in range(k):
                s = s + w[:, j]
            w = np.where(s[:, None] > 0, w / np.where(s > 0, s, 1)[:, None], w)
        w = w * rsf
    return w.astype(dt), ids, nonfinite
