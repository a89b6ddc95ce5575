"""The Swift routing library against an independent numpy reference (routing_reference.py).

All cases go through one run of `moe-route-eval`. Against the float32 contract reference, ids
must be equal and weights equal bit for bit, on every kernel, for random and adversarial
inputs. Against float64 mathematics, ids must be equal and weights within 2e-6 relative error
on random gaussian inputs (the contract's fp32 arithmetic is the only difference).
"""
import json
import pathlib
import shutil
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
        # The added scorings on other methods (shared/ROUTING.md, "Added schemes").
        dict(name="sqrtsoftplus-grouped", method="biased_grouped_topk", num_experts=64, top_k=6,
             num_expert_group=8, topk_group=3, scoring="sqrtsoftplus", renormalize=True,
             routed_scaling_factor=2.5, bias=b(64)),
        dict(name="sqrtsoftplus-softmax-topk", method="softmax_topk", num_experts=40, top_k=5,
             scoring="sqrtsoftplus", renormalize=False),
        dict(name="none-biased-topk", method="biased_topk", num_experts=48, top_k=4, scoring="none",
             renormalize=True, routed_scaling_factor=1.5, bias=b(48)),
        dict(name="none-softmax-topk", method="softmax_topk", num_experts=32, top_k=3, scoring="none"),
    ]
    return [{**base, **s} for s in specs]


def all_specs():
    # Every preset but the hash-routed one (moe-route-eval sends no token ids).
    presets = [n for n in ref.ALL_PRESETS if n not in ref.HASH_PRESETS]
    return [ref.preset_spec(n, gate) for n in presets for gate in ("bf16", "fp32")] + extra_specs()


def request_bias(spec, dtype):
    """The bias as a request sees it: stored in the gate dtype, converted again on a mismatch."""
    if spec["bias"] is None:
        return None
    stored = ref.round_trip(spec["bias"], spec["gate_dtype"])
    return stored if dtype == spec["gate_dtype"] else ref.round_trip(stored, dtype)


def write_case(tmp, cases, cid, spec, dtype, x, kernel):
    (tmp / f"{cid}.in").write_bytes(ref.encode(x, dtype))
    case = dict(id=cid, dtype=dtype, tokens=x.shape[0], input=f"{cid}.in", kernel=kernel)
    if spec["name"] in ref.ALL_PRESETS:
        case.update(preset=spec["name"], gate_dtype=spec["gate_dtype"])
    else:
        s = {k: v for k, v in spec.items() if k not in ("bias", "renorm_epsilon", "hash_vocab")}
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



# ---- the added schemes, without any daemon -----------------------------------------------------
def float32_sample():
    """A dense sample of float32 inputs for sqrtsoftplus: every 97th bit pattern of the finite
    range's both signs (all magnitudes), a fine grid over [-40, 40] (where the branches are),
    the branch boundaries' neighbours and the specials."""
    pos = np.arange(0, 0x7F800000, 97, dtype=np.uint32).view(np.float32)
    grid = np.linspace(-40, 40, 2_000_001, dtype=np.float64).astype(np.float32)
    edges = []
    for b in (-208.0, -104.0, -17.5, -1.0, 0.0, 0.34657359, 1.0, 20.0):
        v = np.float32(b)
        for _ in range(64):
            edges += [v]
            v = np.nextafter(v, np.float32(np.inf))
        v = np.float32(b)
        for _ in range(64):
            v = np.nextafter(v, np.float32(-np.inf))
            edges += [v]
    return np.concatenate([pos, -pos, grid, np.array(edges, np.float32),
                           np.array([np.inf, -np.inf, np.finfo(np.float32).max, -np.finfo(np.float32).max],
                                    np.float32)])


def ulps(got32, want64):
    """|got - want| in units of the float32 spacing at want (float64)."""
    spacing = np.spacing(np.abs(want64).astype(np.float32)).astype(np.float64)
    return np.abs(got32.astype(np.float64) - want64) / spacing


def test_sqrtsoftplus_float32_within_2ulp_of_float64():
    x = float32_sample()
    got = ref.sqrtsoftplus32(x)
    want = ref.sqrtsoftplus64(x)
    finite = np.isfinite(want)
    err = ulps(got[finite], want[finite])
    worst = int(np.argmax(err))
    assert err.max() <= 2.0, f"sqrtsoftplus({x[finite][worst]!r}) = {got[finite][worst]!r}, float64 {want[finite][worst]!r}"
    assert got[x == np.inf][0] == np.inf and got[x == -np.inf][0] == 0
    assert np.isnan(ref.sqrtsoftplus32(np.float32(np.nan)))
    assert (got[~np.isnan(x)] >= 0).all()


def test_scoring_none_and_renorm_epsilon():
    x = np.array([[3.0, -1.0, 2.0, 0.5], [-1.0, -2.0, -3.0, -4.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    spec = dict(method="biased_topk", num_experts=4, top_k=2, num_expert_group=1, topk_group=1, scoring="none",
                renormalize=True, routed_scaling_factor=2.0, renorm_epsilon=0.0)
    w, ids, _ = ref.route(spec, None, x)
    assert ids.tolist() == [[0, 2], [0, 1], [0, 1]]
    assert w[0].tolist() == [np.float32(3 / 5 * 2), np.float32(2 / 5 * 2)]
    assert w[1].tolist() == [-2.0, -4.0], "sum <= 0: renormalisation skipped"
    eps = dict(spec, renorm_epsilon=1e-3)
    w, _, _ = ref.route(eps, None, x)
    d = np.float32(5) + np.float32(1e-3)
    assert w[0].tolist() == [np.float32(3) / d * np.float32(2), np.float32(2) / d * np.float32(2)]
    assert w[1].tolist() == [np.float32(-1) / (np.float32(-3) + np.float32(1e-3)) * 2,
                             np.float32(-2) / (np.float32(-3) + np.float32(1e-3)) * 2], "with eps: never skipped"
    assert w[2].tolist() == [0.0, 0.0]


def test_synthetic_table_rows_are_k_distinct_experts_in_range():
    table = ref.preset_table("deepseek-v4-hash")
    assert table.shape == (129280, 6) and table.dtype == np.int32
    assert table.min() >= 0 and table.max() < 384
    s = np.sort(table, axis=1)
    assert (s[:, 1:] != s[:, :-1]).all(), "every row holds k distinct experts"
    # The vectorised uint64 arithmetic against Python integers, on a few rows.
    m = (1 << 64) - 1

    def sm(i):
        z = ((i + 1) * 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)
    for t in (0, 1, 2, 4095, 65536, 129279):
        base, step = sm(t) % 384, 1 + sm(t + (1 << 32)) % 64
        assert table[t].tolist() == [(base + j * step) % 384 for j in range(6)], t
    assert [int(v) for v in ref.splitmix64(np.arange(3))] == [sm(0), sm(1), sm(2)]
    assert ref.synthetic_table(10, 6, 256).max() < 256


def test_hash_mask_placement_and_load_reference():
    rng = np.random.default_rng(5)
    spec = ref.preset_spec("deepseek-v4-hash", None)
    assert spec["gate_dtype"] == "fp32" and spec["hash_vocab"] == 129280 and spec["bias"] is None
    table = ref.preset_table("deepseek-v4-hash")
    x = rng.standard_normal((6, 384)).astype(np.float32)
    tid = np.array([0, 5, 129279, 77, 5, 1000], np.int64)
    mask = np.array([0, 0, 0, 1, 0, 0], np.uint8)
    x[3] = np.nan  # padding: not read, not counted
    w, ids, nonfinite = ref.route(spec, None, x, token_ids=tid, table=table, mask=mask)
    assert nonfinite == 0
    assert ids[3].tolist() == [-1] * 6 and w[3].tolist() == [0.0] * 6
    for t in (0, 1, 2, 4, 5):
        assert ids[t].tolist() == table[tid[t]].tolist()
        s = ref.sqrtsoftplus32(x[t, table[tid[t]]])
        total = np.float32(0)
        for v in s:
            total = np.float32(total + v)
        assert w[t].tolist() == [np.float32(v / total) * np.float32(2.5) for v in s]
    np.testing.assert_array_equal(ids[1], ids[4])
    # Token ids outside the table are named, unless the row is padding.
    bad = tid.copy()
    bad[3] = -7
    ref.route(spec, None, x, token_ids=bad, table=table, mask=mask)
    bad[5] = 129280
    with pytest.raises(ValueError, match=r"token_ids\[5\] = 129280"):
        ref.route(spec, None, x, token_ids=bad, table=table, mask=mask)
    # Placement maps logical to physical by token index; load counts logical experts.
    replicas = [[e] for e in range(384)]
    replicas[int(ids[0, 0])] = [400, 401, 402]
    phys = ref.place(ids, replicas)
    assert phys[0, 0] == 400 and phys[3].tolist() == [-1] * 6
    others = (ids >= 0) & (ids != ids[0, 0])
    np.testing.assert_array_equal(phys[others], ids[others])
    same = np.argwhere(ids == ids[0, 0])
    assert [int(phys[t, j]) for t, j in same] == [[400, 401, 402][t % 3] for t, _ in same]
    load = ref.expert_load(ids, 384)
    assert load.dtype == np.uint64 and int(load.sum()) == 5 * 6


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "moe_token.h"

static void *slurp(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    *n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(*n ? *n : 1);
    if (fread(p, 1, *n, f) != (size_t)*n) exit(3);
    fclose(f);
    return p;
}

int main(int argc, char **argv) {
    long n;
    if (!strcmp(argv[1], "sqrtsoftplus")) {
        float *x = slurp(argv[2], &n);
        FILE *o = fopen(argv[3], "wb");
        for (long i = 0; i < n / 4; i++) {
            float r = mrk_sqrtsoftplus_f(x[i]);
            fwrite(&r, 4, 1, o);
        }
        fclose(o);
        return 0;
    }
    /* route SCORING E K RENORM EPS RSF METHOD logits [table-rows] out */
    int scoring = atoi(argv[2]), E = atoi(argv[3]), k = atoi(argv[4]), renorm = atoi(argv[5]);
    float eps = strtof(argv[6], NULL), rsf = strtof(argv[7], NULL);
    int method = atoi(argv[8]);
    float *x = slurp(argv[9], &n);
    long T = n / 4 / E;
    int32_t *rows = NULL;
    if (strcmp(argv[10], "-")) rows = slurp(argv[10], &n);
    FILE *o = fopen(argv[11], "wb");
    float score[1024], key[1024], w[32];
    int32_t ids[32];
    for (long t = 0; t < T; t++) {
        if (rows)
            mrk_hash_token(scoring, E, k, renorm, eps, rsf, rows + t * k, x + t * E, 0, score, w, ids);
        else
            mrk_route_token(method, scoring, E, k, 1, 1, renorm, eps, rsf, NULL, x + t * E, 0, score, key, w, ids);
        fwrite(w, 4, k, o);
        fwrite(ids, 4, k, o);
    }
    fclose(o);
    return 0;
}
"""


@pytest.fixture(scope="module")
def token_harness(tmp_path_factory):
    """moe_token.h itself, compiled as the kernels are (-O2 -ffp-contract=off)."""
    cc = shutil.which("clang") or shutil.which("cc")
    if cc is None:
        pytest.skip("needs a C compiler")
    tmp = tmp_path_factory.mktemp("token")
    (tmp / "harness.c").write_text(HARNESS)
    kernels = pathlib.Path(__file__).resolve().parents[2] / "Sources" / "CMoEKernels"
    subprocess.run([cc, "-O2", "-ffp-contract=off", f"-I{kernels}", f"-I{kernels}/include", str(tmp / "harness.c"),
                    "-o", str(tmp / "harness"), "-lm"], check=True, capture_output=True)
    return tmp


def test_sqrtsoftplus_reference_is_moe_token_h_bit_for_bit(token_harness):
    x = float32_sample()
    x = np.concatenate([x, np.array([np.nan], np.float32)])
    (token_harness / "x.f32").write_bytes(x.tobytes())
    subprocess.run([str(token_harness / "harness"), "sqrtsoftplus", str(token_harness / "x.f32"),
                    str(token_harness / "y.f32")], check=True)
    c = np.fromfile(token_harness / "y.f32", np.float32)
    mine = ref.sqrtsoftplus32(x)
    differ = np.flatnonzero((c.view(np.uint32) != mine.view(np.uint32)) & ~(np.isnan(c) & np.isnan(mine)))
    assert differ.size == 0, f"{differ.size} differ, e.g. x = {x[differ[:5]]}: C {c[differ[:5]]}, numpy {mine[differ[:5]]}"


@pytest.mark.parametrize("scoring,method,eps,hashed", [
    ("sqrtsoftplus", "biased_topk", 0.0, False), ("none", "biased_topk", 0.0, False),
    ("none", "biased_topk", 1e-3, False), ("sigmoid", "biased_topk", 1e-20, False),
    ("sqrtsoftplus", "biased_topk", 0.0, True), ("softmax", "biased_topk", 0.0, True),
    ("none", "biased_topk", 1e-4, True)])
def test_route_reference_is_moe_token_h_bit_for_bit(token_harness, scoring, method, eps, hashed):
    scorings = {"softmax": 0, "sigmoid": 1, "sqrtsoftplus": 2, "none": 3}
    E, k, T = 48, 6, 64
    x = np.random.default_rng(11).standard_normal((T, E)).astype(np.float32) * 4
    x[0] = 0.0
    x[1] = -30.0
    x[2, :10] = np.nan
    x[3, 5] = np.inf
    spec = dict(method=method, num_experts=E, top_k=k, num_expert_group=1, topk_group=1, scoring=scoring,
                renormalize=True, routed_scaling_factor=2.5, renorm_epsilon=eps)
    (token_harness / "x.f32").write_bytes(x.tobytes())
    table_arg = "-"
    table = tid = None
    if hashed:
        table = ref.synthetic_table(T, k, E)
        tid = np.arange(T)
        (token_harness / "rows.i32").write_bytes(table.tobytes())
        table_arg = str(token_harness / "rows.i32")
    subprocess.run([str(token_harness / "harness"), "route", str(scorings[scoring]), str(E), str(k), "1",
                    repr(float(np.float32(eps))), "2.5", "4", str(token_harness / "x.f32"), table_arg,
                    str(token_harness / "out.bin")], check=True)
    out = np.fromfile(token_harness / "out.bin", np.uint32).reshape(T, 2, k)
    w_c, ids_c = out[:, 0].view(np.float32), out[:, 1].view(np.int32)
    w, ids, _ = ref.route(spec, None, x, token_ids=tid, table=table)
    np.testing.assert_array_equal(ids, ids_c)
    np.testing.assert_array_equal(w.view(np.uint32), w_c.view(np.uint32))
