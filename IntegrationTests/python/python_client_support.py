"""What the Python-client suites (test_python_client*.py) share: the daemon they run against
(started with the RouterDaemon of conftest.py) and request data in every dtype."""
import numpy as np

import routing_reference as ref

PRESETS = list(ref.PRESETS)
DTYPES = ["fp32", "bf16", "fp16"]

# Extra layers from a config file (ids 0..3), then every preset (bf16 gate, clamp) by name.
CONFIG = """\
layers:
  - {preset: deepseek-v3, name: deepseek-v3-fp32, gate_dtype: fp32}
  - {preset: deepseek-v3, name: deepseek-v3-fp16, gate_dtype: fp16}
  - {preset: deepseek-v3, name: deepseek-v3-reject, nonfinite: reject}
  - {preset: qwen3-moe, name: qwen3-moe-reject, nonfinite: reject}
"""
MAX_REGISTRATIONS = 8
MAX_TOKENS = 20000


def start_router(routerd_binary, routerd_class, tmp_dir, *extra):
    config = tmp_dir / "layers.yaml"
    config.write_text(CONFIG)
    args = ["--config", str(config)]
    for p in PRESETS:
        args += ["--preset", p]
    args += ["--max-registrations", str(MAX_REGISTRATIONS), "--max-tokens", str(MAX_TOKENS), *extra]
    return routerd_class(routerd_binary, args, tmp_dir)


def logits(tokens, experts, seed=0):
    """Random fp32 logits with hard rows first: all equal (ties), huge magnitudes (|x| > 88,
    exp saturation), repeated values, tiny values."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((tokens, experts)) * 3).astype(np.float32)
    if tokens >= 4:
        x[0] = 0.0
        x[1] = rng.choice([-120.0, 95.0, 0.5], size=experts)
        x[2] = np.repeat(rng.standard_normal(max(1, experts // 4)), 4)[:experts] if experts >= 4 else 1.0
        x[3] = rng.standard_normal(experts) * 1e-6
    return x


def encode(x, dtype):
    """(what a host passes to route(), the dtype argument): fp16 as float16, bf16 as uint16 bits."""
    if dtype == "fp32":
        return x, None
    if dtype == "fp16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16), None
    return ref.to_bf16_bits(x), "bf16"


def reference(layer, x, dtype):
    """The contract's answer for fp32 logits `x` sent as `dtype` to `layer` (a moe_router.Layer)."""
    bias = None if layer.bias is None else ref.round_trip(layer.bias, dtype)
    w, ids, nonfinite = ref.route(layer.spec(), bias, ref.round_trip(x, dtype))
    return w.astype(np.float32), ids.astype(np.int32), nonfinite


def assert_bit_exact(result, want_w, want_ids, what=""):
    w, ids = result
    assert w.dtype == np.float32 and ids.dtype == np.int32
    assert w.shape == want_w.shape and ids.shape == want_ids.shape, what
    np.testing.assert_array_equal(ids, want_ids, err_msg=f"ids differ {what}")
    np.testing.assert_array_equal(w.view(np.uint32), want_w.view(np.uint32), err_msg=f"weights differ bitwise {what}")
