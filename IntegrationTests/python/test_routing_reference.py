"""The Swift routing library against an independent numpy reference (routing_reference.py).

All cases go through one run of `moe-route-eval`. Against the float32 contract reference, ids
must be equal and weights equal bit for bit, on every kernel, for random and adversarial
inputs. Against float64 mathematics, ids must be equal and weights within 2e-6 relative error
on random gaussian inputs (the contract's fp32 arithmetic is the only difference).
"""
import json
import subprocess

import numpy as np
import pytest

import routing_reference as ref

DTYPES = ["fp32", "bf16", "fp16"]
KERNELS = ["generic", "avx512"]
KINDS = ["gaussian", "wide", "exact_ties", "near_ties", "all_equal", "group_ties", "huge", "tiny",
         "nonfinite"]
TOKENS = 8


def rows(kind, e_count, groups, seed):
    rng = np.random.default_rng(seed)
    shape = (TOKENS, e_count)
    if kind == "gaussian":
        return rng.standard_normal(shape).astype(np.float32)
    if kind == "wide":
        return (rng.standard_normal(shape) * 8).astype(np.float32)
    if kind == "exact_ties":
        return rng.choice(np.array([-1, 0, 0.5, 1, 1], np.float32), size=shape)
    if kind == "near_ties":
        b = np.float32(0.75)
        vals = np.array([b, np.nextafter(b, np.float32(2)), np.nextafter(b, np.float32(0)),
                         np.nextafter(np.nextafter(b, np.float32(2)), np.float32(2))], np.float32)
        return rng.choice(vals, size=shape)
    if kind == "all_equal":
        return np.full(shape, 0.25, np.float32)
    if kind == "group_ties":
        p = e_count // groups
        j = np.arange(e_count) % p
        return np.tile(((j * 7) % 5 * 0.5).astype(np.float32), (TOKENS, 1))
    if kind == "huge":
        return (rng.choice([-1e4, 1e4], size=shape) * (1 + (np.arange(e_count) % 3) * 0.5)).astype(np.float32)
    if kind == "tiny":
        return (rng.choice([-1e-30, 1e-30], size=shape) * (1 + np.arange(e_count) % 7)).astype(np.float32)
    if kind == "nonfinite":
        x = rng.standard_normal(shape).astype(np.float32)
        r = rng.integers(0, 10, size=shape)
        x[r == 0] = np.nan
        x[r == 1] = np.inf
        x[r == 2] = -np.inf
        return x
    raise ValueError(kind)


def extra_specs():
    def b(n):
        return ref.synthetic_bias(n) * np.float32(3)
    base = dict(num_expert_group=1, topk_group=1, scoring="softmax", renormalize=False,
                routed_scaling_factor=1.0, gate_dtype="fp32", bias=None)
    specs = [
        dict(name="softmax-e24-k5", method="softmax_topk", num_experts=24, top_k=5, renormalize=True),
        dict(name="softmax-k-eq-e", method="softmax_topk", num_experts=12, top_k=12, renormalize=True,
             routed_scaling_factor=1.5),
        dict(name="softmax-e1", method="softmax_topk", num_experts=1, top_k=1),
        dict(name="grouped-e72", method="grouped_topk", num_experts=72, top_k=5, num_expert_group=6,
             topk_group=2, renormalize=True, routed_scaling_factor=2.0),
        dict(name="grouped-sigmoid", method="grouped_topk", num_experts=48, top_k=4, num_expert_group=4,
             topk_group=2, scoring="sigmoid"),
        dict(name="biased-e40", method="biased_grouped_topk", num_experts=40, top_k=6, num_expert_group=4,
             topk_group=2, scoring="sigmoid", renormalize=True, routed_scaling_factor=2.5, bias=b(40)),
        dict(name="biased-softmax", method="biased_grouped_topk", num_experts=64, top_k=6,
             num_expert_group=8, topk_group=3, routed_scaling_factor=1.25, bias=b(64)),
        dict(name="biased-topk-e1000", method="biased_topk", num_experts=1000, top_k=32,
             scoring="sigmoid", renormalize=True, bias=b(1000)),
        dict(name="topk-softmax-e100", method="topk_softmax", num_experts=100, top_k=7,
             routed_scaling_factor=2.0),
        dict(name="llama4-e33-k3", method="llama4_top1", num_experts=33, top_k=3, scoring="sigmoid"),
    ]
    return [{**base, **s} for s in specs]


def all_specs():
    return [ref.preset_spec(n, gate) for n in ref.PRESETS for gate in ("bf16", "fp32")] + extra_specs()


def request_bias(spec, dtype):
    """The bias as a request sees it: stored in the gate dtype, converted again on a mismatch."""
    if spec["bias"] is None:
        return None
    stored = ref.round_trip(spec["bias"], spec["gate_dtype"])
    return stored if dtype == spec["gate_dtype"] else ref.round_trip(stored, dtype)


def write_case(tmp, cases, cid, spec, dtype, x, kernel):
    (tmp / f"{cid}.in").write_bytes(ref.encode(x, dtype))
    case = dict(id=cid, dtype=dtype, tokens=x.shape[0], input=f"{cid}.in", kernel=kernel)
    if spec["name"] in ref.PRESETS:
        case.update(preset=spec["name"], gate_dtype=spec["gate_dtype"])
    else:
        s = {k: v for k, v in spec.items() if k != "bias"}
        if spec["bias"] is not None:
            (tmp / f"{spec['name']}.bias").write_bytes(np.asarray(spec["bias"], np.float32).tobytes())
            s["bias_file"] = f"{spec['name']}.bias"
        case["spec"] = s
    cases.append(case)


def run_eval(route_eval, tmp, cases):
    (tmp / "manifest.json").write_text(json.dumps(dict(cases=cases)))
    subprocess.run([str(route_eval), "--manifest", str(tmp / "manifest.json"), "--out-dir", str(tmp)],
                   check=True, timeout=600)
    return {r["id"]: r for r in map(json.loads, (tmp / "results.jsonl").read_text().splitlines())}


def outputs(tmp, cid, k):
    w = np.fromfile(tmp / f"{cid}.weights.f32", dtype=np.float32).reshape(-1, k)
    ids = np.fromfile(tmp / f"{cid}.ids.i32", dtype=np.int32).reshape(-1, k)
    return w, ids


@pytest.fixture(scope="module")
def matrix(route_eval, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    cases, expected = [], {}
    for si, spec in enumerate(all_specs()):
        for ki, kind in enumerate(KINDS):
            x = rows(kind, spec["num_experts"], spec["num_expert_group"], seed=si * 100 + ki)
            for dtype in DTYPES:
                held = ref.round_trip(x, dtype)
                expected_key = (spec["name"], spec["gate_dtype"], kind, dtype)
                expected[expected_key] = (spec, held, request_bias(spec, dtype))
                for kernel in KERNELS:
                    cid = f"{spec['name']}-{spec['gate_dtype']}-{kind}-{dtype}-{kernel}"
                    write_case(tmp, cases, cid, spec, dtype, x, kernel)
    results = run_eval(route_eval, tmp, cases)
    return tmp, results, expected


def test_every_case_bit_identical_to_contract_reference(matrix):
    tmp, results, expected = matrix
    checked = 0
    failures = []
    for (name, gate, kind, dtype), (spec, held, bias) in expected.items():
        w_ref, ids_ref, nf_ref = ref.route(spec, bias, held, exact=True)
        for kernel in KERNELS:
            cid = f"{name}-{gate}-{kind}-{dtype}-{kernel}"
            r = results[cid]
            if not r["ok"] and r["kind"] == "unsupported_kernel":
                continue
            assert r["ok"], r
            w, ids = outputs(tmp, cid, spec["top_k"])
            if not (np.array_equal(ids, ids_ref) and np.array_equal(w.view(np.uint32), w_ref.view(np.uint32))
                    and r["nonfinite"] == nf_ref):
                failures.append(cid)
            assert r["fallback"] == (spec["bias"] is not None and dtype != gate)
            checked += 1
    assert not failures, f"{len(failures)} cases differ, e.g. {failures[:5]}"
    assert checked >= 1000


def test_weights_within_2e6_of_float64_math(matrix):
    tmp, results, expected = matrix
    worst = 0.0
    for (name, gate, kind, dtype), (spec, held, bias) in expected.items():
        if kind != "gaussian":  # wider inputs saturate sigmoid to exact fp32 ties (1.0)
            continue
        w64, ids64, _ = ref.route(spec, bias, held, exact=False)
        w, ids = outputs(tmp, f"{name}-{gate}-{kind}-{dtype}-generic", spec["top_k"])
        assert np.array_equal(ids, ids64), (name, gate, kind, dtype)
        rel = np.abs(w.astype(np.float64) - w64) / np.maximum(np.abs(w64), 1e-30)
        worst = max(worst, float(rel.max()))
    assert worst <= 2e-6, worst


def test_reject_policy_and_spec_errors(route_eval, tmp_path):
    x = rows("gaussian", 256, 8, seed=1)
    x[5, 17] = np.nan
    x[6, 0] = np.inf
    spec = ref.preset_spec("deepseek-v3", "fp32")
    reject = {**{k: v for k, v in spec.items()}, "name": "v3-reject", "nonfinite": "reject"}
    bad = {**reject, "name": "bad", "topk_group": 9}
    cases = []
    write_case(tmp_path, cases, "reject", reject, "fp32", x, "best")
    write_case(tmp_path, cases, "bad", bad, "fp32", x, "best")
    results = run_eval(route_eval, tmp_path, cases)
    assert results["reject"]["ok"] is False
    assert (results["reject"]["first_token"], results["reject"]["count"]) == (5, 2)
    assert results["bad"]["kind"] == "layer_spec" and results["bad"]["field"] == "topk_group"


def test_reject_policy_every_preset_dtype_and_kernel(route_eval, tmp_path):
    """nonfinite = reject on every preset, in every input dtype, on both kernels: a request with
    NaN/±Inf is refused naming the first offending token and the count numpy finds, and leaves
    the output buffers untouched; the same layer routes a finite request exactly as the
    contract reference does."""
    cases, expected = [], {}
    for si, name in enumerate(ref.PRESETS):
        spec = {**ref.preset_spec(name, "bf16"), "name": f"{name}-reject", "nonfinite": "reject"}
        E, G = spec["num_experts"], spec["num_expert_group"]
        rng = np.random.default_rng(100 + si)
        bad = rows("gaussian", E, G, seed=200 + si)
        tokens = sorted(rng.choice(np.arange(3, bad.shape[0]), size=3, replace=False))
        for t, v in zip(tokens, [np.nan, np.inf, -np.inf]):
            bad[t, rng.integers(E)] = v
        bad[tokens[-1], rng.integers(E)] = np.nan  # a second one in the same row counts too
        good = rows("gaussian", E, G, seed=300 + si)
        for dtype in DTYPES:
            for kernel in KERNELS:
                cid = f"{name}-{dtype}-{kernel}"
                held = ref.round_trip(bad, dtype)
                expected[cid + "-bad"] = (int(np.argmax(~np.isfinite(held).all(axis=1))), int((~np.isfinite(held)).sum()))
                write_case(tmp_path, cases, cid + "-bad", spec, dtype, bad, kernel)
                expected[cid + "-good"] = ref.route(spec, request_bias(spec, dtype), ref.round_trip(good, dtype))
                write_case(tmp_path, cases, cid + "-good", spec, dtype, good, kernel)
    results = run_eval(route_eval, tmp_path, cases)
    for cid, want in expected.items():
        r = results[cid]
        if r.get("kind") == "unsupported_kernel":
            continue
        if cid.endswith("-bad"):
            assert r["ok"] is False and r["kind"] == "route", r
            assert (r["first_token"], r["count"]) == want, (cid, r)
            assert r["outputs_untouched"] is True, cid
        else:
            assert r["ok"] is True and r["nonfinite"] == 0, r
            w_ref, ids_ref, _ = want
            w, ids = outputs(tmp_path, cid, ids_ref.shape[1])
            assert np.array_equal(ids, ids_ref) and np.array_equal(w.view(np.uint32), w_ref.view(np.uint32)), cid


def test_dtype_conversions_match_numpy():
    # bf16: every pattern widens and narrows back; fp16 narrowing agrees with numpy's RNE cast.
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    f = ref.from_bf16_bits(bits)
    back = ref.to_bf16_bits(f)
    finite = np.isfinite(f)
    assert np.array_equal(back[finite], bits[finite])
    assert np.all(np.isnan(ref.from_bf16_bits(back[np.isnan(f)])))


def test_synthetic_bias_matches_swift_presets(route_eval, tmp_path):
    # minimax-m2 has no groups: with all-equal logits every score is the same, so the chosen ids
    # are the top-8 of the bias itself, ordered by bias, which pins the Swift preset's values.
    spec = ref.preset_spec("minimax-m2", "fp32")
    x = np.zeros((1, 256), np.float32)
    cases = []
    write_case(tmp_path, cases, "bias", spec, "fp32", x, "best")
    run_eval(route_eval, tmp_path, cases)
    _, ids = outputs(tmp_path, "bias", 8)
    expected = np.argsort(-spec["bias"], kind="stable")[:8]
    assert ids[0].tolist() == expected.tolist()
