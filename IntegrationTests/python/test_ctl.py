"""moe-routerctl against a real daemon: status, layers, stats, route (.npy in, .npz out, checked
against the numpy contract reference), drain, and the exit codes of each failure."""
import json
import subprocess

import numpy as np
import pytest

import routing_reference as ref
from conftest import find_binary


@pytest.fixture(scope="module")
def ctl():
    return find_binary("moe-routerctl", "MOE_ROUTERCTL")


def run(ctl, *args):
    return subprocess.run([str(ctl), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_status_layers_stats(ctl, start_daemon):
    d = start_daemon("--preset", "deepseek-v3", "--preset", "qwen3-moe")
    p = run(ctl, "status", "--endpoint", d.endpoint)
    assert p.returncode == 0 and "backend cpu" in p.stdout and "layers 2" in p.stdout
    p = run(ctl, "layers", "--endpoint", d.endpoint, "--json")
    layers = {l["name"]: l for l in json.loads(p.stdout)}
    v3 = layers["deepseek-v3"]
    assert (v3["method"], v3["num_experts"], v3["top_k"], v3["num_expert_group"], v3["topk_group"]) == (
        "biased_grouped_topk", 256, 8, 8, 4)
    assert v3["gate_dtype"] == "bf16" and v3["bias"] is True and layers["qwen3-moe"]["bias"] is False
    p = run(ctl, "stats", "--endpoint", d.endpoint, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["requests"] >= 2


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_route_npy_to_npz_matches_reference(ctl, start_daemon, tmp_path, dtype):
    d = start_daemon("--preset", "deepseek-v3")
    x = np.random.default_rng(3).standard_normal((5, 256)).astype(np.float32)
    inp = tmp_path / "logits.npy"
    if dtype == "fp32":
        np.save(inp, x)
    elif dtype == "fp16":
        np.save(inp, x.astype(np.float16))
    else:
        np.save(inp, ref.to_bf16_bits(x))
    out = tmp_path / "out.npz"
    args = ["route", "--endpoint", d.endpoint, "--layer", "deepseek-v3", "--input", inp, "--output", out]
    p = run(ctl, *args, *(["--bf16"] if dtype == "bf16" else []))
    assert p.returncode == 0, p.stderr
    got = np.load(out)
    spec = ref.preset_spec("deepseek-v3", "bf16")
    stored = ref.round_trip(spec["bias"], "bf16")
    bias = stored if dtype == "bf16" else ref.round_trip(stored, dtype)
    w, ids, _ = ref.route(spec, bias, ref.round_trip(x, dtype))
    assert np.array_equal(got["ids"], ids)
    assert np.array_equal(got["weights"].view(np.uint32), w.view(np.uint32))
    assert ("fallback cast yes" in p.stdout) == (dtype != "bf16")


def test_failures_have_distinct_exit_codes(ctl, start_daemon, tmp_path):
    d = start_daemon("--preset", "deepseek-v3")
    good = tmp_path / "x.npy"
    np.save(good, np.zeros((2, 256), np.float32))
    p = run(ctl, "route", "--endpoint", d.endpoint, "--layer", "nope", "--input", good, "--output", tmp_path / "o.npz")
    assert p.returncode == 65 and "nope" in p.stderr
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 100), np.float32))
    p = run(ctl, "route", "--endpoint", d.endpoint, "--layer", "deepseek-v3", "--input", wrong, "--output", tmp_path / "o.npz")
    assert p.returncode == 65 and "SIZE_MISMATCH" in p.stderr
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy at all")
    p = run(ctl, "route", "--endpoint", d.endpoint, "--layer", "deepseek-v3", "--input", junk, "--output", tmp_path / "o.npz")
    assert p.returncode == 66 and "not a .npy" in p.stderr
    ints = tmp_path / "ints.npy"
    np.save(ints, np.zeros((2, 256), np.int64))
    p = run(ctl, "route", "--endpoint", d.endpoint, "--layer", "deepseek-v3", "--input", ints, "--output", tmp_path / "o.npz")
    assert p.returncode == 66
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((2, 256), np.float32))
    p = run(ctl, "route", "--endpoint", d.endpoint, "--layer", "deepseek-v3", "--input", good,
            "--output", tmp_path / "no-such-dir" / "o.npz")
    assert p.returncode == 73 and "cannot write" in p.stderr and "no-such-dir" in p.stderr, p.stderr
    p = run(ctl, "status", "--endpoint", "ipc:///tmp/moe-router-nobody-here.sock", "--timeout-ms", "300")
    assert p.returncode == 69 and "cannot reach" in p.stderr
    assert run(ctl, "frobnicate").returncode == 64


def test_drain_stops_the_daemon_gracefully(ctl, start_daemon):
    d = start_daemon("--preset", "deepseek-v3")
    p = run(ctl, "drain", "--pid", d.pid, "--timeout", "20")
    assert p.returncode == 0, p.stderr
    assert d.proc.wait(5) == 0
    assert not d.sock_path.exists()
