"""DeepSeek-V4 from a checkpoint (hash-routed first layers, sqrtsoftplus scored layers, DeepSeek's
own tensor naming), and the operator side of issue 17: `moe-routerctl placement` / `load`, the
config file's new layer keys, and the expert-load histograms in /metrics."""
import json
import re
import subprocess
import urllib.request

import numpy as np
import pytest

import daemon_helpers as h
from checkpoints import write_safetensors
from conftest import find_binary

# deepseek-ai/DeepSeek-V4-Flash: 43 layers, 256 routed experts, top-6, 3 hash layers, vocab 129280.
V4_FLASH = {
    "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4", "num_hidden_layers": 43,
    "n_routed_experts": 256, "num_experts_per_tok": 6, "num_hash_layers": 3, "vocab_size": 129280,
    "scoring_func": "sqrtsoftplus", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
    "torch_dtype": "bfloat16", "hidden_size": 4096,
}


@pytest.fixture(scope="module")
def ctl():
    return find_binary("moe-routerctl", "MOE_ROUTERCTL")


def run(ctl, *args):
    return subprocess.run([str(ctl), *map(str, args)], capture_output=True, text=True, timeout=60)


def v4_checkpoint(root, config=V4_FLASH, table_dtype="I64", hf_names=False, table_hook=None):
    """The routing tensors of a V4 checkpoint in two shards: tid2eid for the hash layers, the
    fp32 bias for the others. Returns (directory, {layer: tid2eid int32}, {layer: bias})."""
    d = root / "DeepSeek-V4-Flash"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    e, k, vocab = config["n_routed_experts"], config["num_experts_per_tok"], config["vocab_size"]
    rng = np.random.default_rng(4)
    shards, index, tables, biases = {}, {}, {}, {}
    for layer in range(config["num_hidden_layers"]):
        file = f"model-0000{layer % 2 + 1}-of-00002.safetensors"
        prefix = f"model.layers.{layer}.mlp.gate" if hf_names else f"layers.{layer}.ffn.gate"
        tensors = shards.setdefault(file, {})
        tensors[prefix + ".weight"] = ("BF16", np.zeros((e, 4), np.uint16))
        if layer < config["num_hash_layers"]:
            t = np.argsort(rng.random((vocab, e)), axis=1)[:, :k].astype(np.int32) if layer == 0 else \
                ((np.arange(vocab)[:, None] * 7 + np.arange(k)[None, :] * 31 + layer) % e).astype(np.int32)
            stored = t.astype({"I64": np.int64, "I32": np.int32, "F32": np.float32}[table_dtype])
            if table_hook:
                table_hook(layer, stored)
            tensors[prefix + ".tid2eid"] = (table_dtype, stored)
            tables[layer] = t
            names = [prefix + ".weight", prefix + ".tid2eid"]
        else:
            b = (rng.standard_normal(e) * 0.05).astype(np.float32)
            bias_name = (prefix + ".e_score_correction_bias") if hf_names else (prefix + ".bias")
            tensors[bias_name] = ("F32", b)
            biases[layer] = b
            names = [prefix + ".weight", bias_name]
        for n in names:
            index[n] = file
    for file, tensors in shards.items():
        write_safetensors(d / file, tensors)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return d, tables, biases


def test_a_v4_checkpoint_serves_hash_and_scored_layers(ctl, start_daemon, tmp_path):
    ckpt, tables, biases = v4_checkpoint(tmp_path)
    d = start_daemon("--model", str(ckpt))
    log = d.read_log()
    assert "deepseek_v4, 43 MoE layers (3 hash-routed, tid2eid [129280, 6]), gate fp32" in log, log
    p = run(ctl, "layers", "--endpoint", d.endpoint, "--json")
    assert p.returncode == 0, p.stderr
    layers = {l["name"]: l for l in json.loads(p.stdout)}
    assert len(layers) == 43
    for i in range(43):
        l = layers[f"DeepSeek-V4-Flash/{i}"]
        assert (l["method"], l["num_experts"], l["top_k"], l["scoring"], l["renormalize"], l["gate_dtype"]) == (
            "biased_topk", 256, 6, "sqrtsoftplus", True, "fp32")
        assert l["hash_vocab"] == (129280 if i < 3 else 0) and l["bias"] == (i >= 3)
        assert abs(l["routed_scaling_factor"] - 2.5) < 1e-7


def test_hf_naming_and_int32_tables_are_read_too(ctl, start_daemon, tmp_path):
    ckpt, _, _ = v4_checkpoint(tmp_path, table_dtype="I32", hf_names=True)
    d = start_daemon("--model", str(ckpt))
    p = run(ctl, "layers", "--endpoint", d.endpoint, "--json")
    layers = json.loads(p.stdout)
    assert [l["hash_vocab"] for l in layers[:4]] == [129280, 129280, 129280, 0]


@pytest.mark.parametrize("case,expected", [
    ("expert", "tid2eid[17][2] = 256: is not an expert id in 0..<256"),
    ("dtype", "dtype F32 is not supported here (I32 or I64)"),
    ("huge", "is not an expert id"),
    ("vocab", "vocab_size = 0 is outside"),
])
def test_bad_tables_stop_the_start_naming_the_cell(routerd_binary, tmp_path, case, expected):
    config = dict(V4_FLASH, num_hidden_layers=5)

    def hook(layer, t):
        if layer == 0 and case == "expert":
            t[17, 2] = 256
        if layer == 0 and case == "huge":
            t[0, 0] = 1 << 40

    if case == "vocab":
        config["vocab_size"] = 0
        ckpt = tmp_path / "DeepSeek-V4-Flash"
        ckpt.mkdir()
        (ckpt / "config.json").write_text(json.dumps(config))
    else:
        ckpt, _, _ = v4_checkpoint(tmp_path, config=config, table_hook=hook, table_dtype="F32" if case == "dtype" else "I64")
    p = subprocess.run([str(routerd_binary), "--model", str(ckpt), "--endpoint", f"ipc://{tmp_path}/x.sock"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and expected in p.stderr, p.stderr


def test_ctl_placement_and_load(ctl, start_daemon, tmp_path):
    d = start_daemon("--preset", "mixtral-8x7b", "--preset", "deepseek-v3", "--metrics", "127.0.0.1:0")
    x = np.random.default_rng(5).standard_normal((7, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)

    def route():
        p = run(ctl, "route", "--endpoint", d.endpoint, "--layer", "mixtral-8x7b", "--input", tmp_path / "x.npy",
                "--output", tmp_path / "out.npz")
        assert p.returncode == 0, p.stderr
        return np.load(tmp_path / "out.npz")["ids"]

    logical = route()
    # expert e's replicas: e and 8 + e for even e, e alone for odd e
    replicas = [[e, 8 + e] if e % 2 == 0 else [e] for e in range(8)]
    (tmp_path / "p.json").write_text(json.dumps({"num_physical_experts": 16, "replicas": replicas}))
    p = run(ctl, "placement", "--endpoint", d.endpoint, "mixtral-8x7b", tmp_path / "p.json")
    assert p.returncode == 0 and "epoch 1" in p.stdout, p.stderr
    physical = route()
    for t in range(7):
        for j in range(2):
            r = replicas[logical[t, j]]
            assert physical[t, j] == r[t % len(r)]
    p = run(ctl, "layers", "--endpoint", d.endpoint)
    assert "placement=16 physical (epoch 1)" in p.stdout
    # load counts logical experts over both routes
    p = run(ctl, "load", "--endpoint", d.endpoint, "mixtral-8x7b", "--json", "--reset")
    assert p.returncode == 0, p.stderr
    load = json.loads(p.stdout)
    expected = np.bincount(logical.ravel(), minlength=8) * 2
    assert load["totals"] == expected.tolist() and load["window"] == expected.tolist() and load["window_reset"]
    p = run(ctl, "load", "--endpoint", d.endpoint, "mixtral-8x7b", "--json")
    assert json.loads(p.stdout)["window"] == [0] * 8
    # the histogram family in /metrics agrees
    port = int(re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", d.read_log()).group(1))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    buckets = [int(v) for v in re.findall(r'moe_expert_routed_tokens_bucket\{layer="mixtral-8x7b",le="\d+"\} (\d+)', text)]
    assert buckets == np.cumsum(expected).tolist()
    assert f'moe_expert_routed_tokens_count{{layer="mixtral-8x7b"}} {expected.sum()}' in text
    assert 'moe_expert_routed_tokens_bucket{layer="deepseek-v3",le="255"} 0' in text
    # bad files and bad placements: typed, and the layer keeps its placement
    (tmp_path / "bad.json").write_text(json.dumps([[0], [1], [2], [3], [4], [5], [6], [6]]))
    p = run(ctl, "placement", "--endpoint", d.endpoint, "mixtral-8x7b", tmp_path / "bad.json")
    assert p.returncode == 65 and "MOE_ERR_BAD_PLACEMENT" in p.stderr and "physical id 6" in p.stderr
    (tmp_path / "junk.json").write_text("{nope")
    assert run(ctl, "placement", "--endpoint", d.endpoint, "mixtral-8x7b", tmp_path / "junk.json").returncode == 66
    assert run(ctl, "placement", "--endpoint", d.endpoint, "mixtral-8x7b").returncode == 64
    assert "epoch 1" in run(ctl, "layers", "--endpoint", d.endpoint).stdout
    p = run(ctl, "placement", "--endpoint", d.endpoint, "mixtral-8x7b", "--clear")
    assert p.returncode == 0 and "epoch 2" in p.stdout
    assert (route() == logical).all()


def test_control_operations_need_a_control_uid(ctl, start_daemon, tmp_path):
    # The daemon's own directory (under /tmp, made 0755) holds what `nobody` must reach; the
    # suite's tmp_path may sit under a 0700 directory.
    # (The daemon sets the socket's mode after binding: an answered request means it has.)
    d = start_daemon("--preset", "mixtral-8x7b")
    assert run(ctl, "status", "--endpoint", d.endpoint).returncode == 0
    d.dir.chmod(0o755)
    d.sock_path.chmod(0o666)
    placement = d.dir / "p.json"
    placement.write_text(json.dumps([[e] for e in range(8)]))
    placement.chmod(0o644)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    copy = d.dir / "ctl"
    copy.write_bytes(ctl.read_bytes())
    copy.chmod(0o755)
    p = subprocess.run([*nobody, str(copy), "placement", "--endpoint", d.endpoint, "mixtral-8x7b", str(placement)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 65 and "MOE_ERR_NOT_PERMITTED" in p.stderr and "uid 65534" in p.stderr, p.stderr
    p = subprocess.run([*nobody, str(copy), "load", "--endpoint", d.endpoint, "mixtral-8x7b"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*nobody, str(copy), "load", "--reset", "--endpoint", d.endpoint, "mixtral-8x7b"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 65 and "MOE_ERR_NOT_PERMITTED" in p.stderr
    p = subprocess.run([*nobody, str(copy), "status", "--endpoint", d.endpoint], capture_output=True, text=True, timeout=60)
    assert "control operations on this connection: no" in p.stdout, p.stdout + p.stderr
    d2 = start_daemon("--preset", "mixtral-8x7b", "--control-uid", "65534")
    assert run(ctl, "status", "--endpoint", d2.endpoint).returncode == 0
    d2.dir.chmod(0o755)
    d2.sock_path.chmod(0o666)
    p = subprocess.run([*nobody, str(copy), "placement", "--endpoint", d2.endpoint, "mixtral-8x7b", str(placement)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "epoch 1" in p.stdout, p.stderr


def test_config_file_layer_keys(ctl, start_daemon, tmp_path, routerd_binary):
    vocab, k, e = 1000, 4, 32
    table = ((np.arange(vocab)[:, None] * 3 + np.arange(k)[None, :] * 5) % e).astype("<i4")
    table.tofile(tmp_path / "tid2eid.bin")
    (tmp_path / "place.json").write_text(json.dumps({"num_physical_experts": 40, "replicas": [[i] for i in range(e)]}))
    (tmp_path / "routerd.yaml").write_text(f"""
control_uids: [4242]
expert_load_metrics: false
layers:
  - name: hashed
    method: softmax_topk
    num_experts: {e}
    top_k: {k}
    scoring: sqrtsoftplus
    renormalize: true
    tid2eid_file: tid2eid.bin
  - name: minimax-eps
    method: biased_topk
    num_experts: {e}
    top_k: {k}
    scoring: sigmoid
    renormalize: true
    renorm_epsilon: 1.0e-20
    bias: [{", ".join(["0.01"] * e)}]
    placement_file: place.json
  - name: plain-topk
    method: softmax_topk
    num_experts: {e}
    top_k: {k}
    scoring: none
    placement: {json.dumps([[i, 32 + i] if i < 8 else [i] for i in range(e)])}
""")
    d = start_daemon("--config", str(tmp_path / "routerd.yaml"))
    layers = {l["name"]: l for l in json.loads(run(ctl, "layers", "--endpoint", d.endpoint, "--json").stdout)}
    assert layers["hashed"]["hash_vocab"] == vocab and layers["hashed"]["scoring"] == "sqrtsoftplus"
    assert layers["minimax-eps"]["renorm_epsilon"] == pytest.approx(1e-20) and layers["minimax-eps"]["num_physical"] == 40
    assert layers["plain-topk"]["scoring"] == "none" and layers["plain-topk"]["num_physical"] == 40
    assert layers["plain-topk"]["placement_epoch"] == 1
    # refusals name the key
    for body, expected in [
        ("    tid2eid_file: missing.bin", "layers[0].tid2eid_file"),
        ("    renorm_epsilon: 0.5", "renorm_epsilon = 0.5"),
        ("    placement: [[0], [0]]", "placement"),
        ("    scoring: cubic", "softmax, sigmoid, sqrtsoftplus or none"),
    ]:
        (tmp_path / "bad.yaml").write_text(f"""
layers:
  - name: x
    method: softmax_topk
    num_experts: {e}
    top_k: {k}
    renormalize: true
{body}
""")
        p = subprocess.run([str(routerd_binary), "--config", str(tmp_path / "bad.yaml"), "--endpoint", f"ipc://{tmp_path}/y.sock"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and expected in p.stderr, (body, p.stderr)


def test_config_placements_apply_to_any_layer(ctl, start_daemon, tmp_path, routerd_binary):
    ckpt, _, _ = v4_checkpoint(tmp_path, config=dict(V4_FLASH, num_hidden_layers=4))
    (tmp_path / "p3.json").write_text(json.dumps([[e, 256 + e] if e < 32 else [e] for e in range(256)]))
    (tmp_path / "routerd.yaml").write_text(f"""
models:
  - path: {ckpt}
placements:
  DeepSeek-V4-Flash/3: {{file: p3.json}}
  mixtral-8x7b: {{replicas: [[7], [6], [5], [4], [3], [2], [1], [0]]}}
""")
    d = start_daemon("--config", str(tmp_path / "routerd.yaml"), "--preset", "mixtral-8x7b")
    layers = {l["name"]: l for l in json.loads(run(ctl, "layers", "--endpoint", d.endpoint, "--json").stdout)}
    assert layers["DeepSeek-V4-Flash/3"]["num_physical"] == 288 and layers["DeepSeek-V4-Flash/3"]["placement_epoch"] == 1
    assert layers["mixtral-8x7b"]["num_physical"] == 8 and layers["DeepSeek-V4-Flash/2"]["placement_epoch"] == 0
    (tmp_path / "bad.yaml").write_text("placements:\n  nosuch: {replicas: [[0]]}\n")
    p = subprocess.run([str(routerd_binary), "--config", str(tmp_path / "bad.yaml"), "--preset", "mixtral-8x7b",
                        "--endpoint", f"ipc://{tmp_path}/z.sock"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "placements.nosuch" in p.stderr, p.stderr
