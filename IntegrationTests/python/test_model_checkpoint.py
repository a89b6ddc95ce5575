"""moe-routerd --model DIR: a Hugging Face checkpoint directory written here (config.json, a
sharded safetensors index; the safetensors bytes written by hand, as the format defines them)
becomes one layer per MoE layer, with the checkpoint's own biases, routing as the reference does."""
import json
import subprocess

import numpy as np
import pytest

import routing_reference as ref
from moe_router import Client
from checkpoints import write_safetensors
from python_client_support import assert_bit_exact, logits, reference

LAYERS = 6          # decoder layers; the first 3 dense, as first_k_dense_replace says
EXPERTS = 256


def deepseek_checkpoint(root, name="DeepSeek-V3-mini", torch_dtype="float32"):
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "deepseek_v3", "num_hidden_layers": LAYERS, "first_k_dense_replace": 3, "moe_layer_freq": 1,
        "n_routed_experts": EXPERTS, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5, "torch_dtype": torch_dtype}))
    rng = np.random.default_rng(3)
    biases = {i: (rng.standard_normal(EXPERTS) * 0.05).astype(np.float32) for i in range(3, LAYERS)}
    shards, index = {}, {}
    for layer in range(LAYERS):
        file = f"model-0000{layer % 2 + 1}-of-00002.safetensors"
        weight = f"model.layers.{layer}.mlp.gate.weight"
        shards.setdefault(file, {})[weight] = ("BF16", np.zeros((EXPERTS, 64), np.uint16))
        index[weight] = file
        if layer in biases:
            bias = f"model.layers.{layer}.mlp.gate.e_score_correction_bias"
            shards[file][bias] = ("F32", biases[layer])
            index[bias] = file
    for file, tensors in shards.items():
        write_safetensors(d / file, tensors)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return d, biases


def test_a_checkpoint_serves_its_moe_layers(start_daemon, tmp_path):
    ckpt, biases = deepseek_checkpoint(tmp_path)
    d = start_daemon("--model", str(ckpt))
    with Client(d.endpoint) as c:
        layers = c.model_layers("DeepSeek-V3-mini")
        assert [l.name for l in layers] == [f"DeepSeek-V3-mini/{i}" for i in range(3, LAYERS)]
        assert c.layer("DeepSeek-V3-mini/4").id == layers[1].id
        for i, layer in zip(range(3, LAYERS), layers):
            assert layer.gate_dtype.label == "fp32", "torch_dtype float32: the gate is fp32"
            assert layer.num_experts == EXPERTS and layer.top_k == 8 and layer.num_expert_group == 8
            assert layer.topk_group == 4 and layer.renormalize and layer.routed_scaling_factor == 2.5
            assert np.array_equal(layer.bias.view(np.uint32), biases[i].view(np.uint32)), "the checkpoint's bias, bit for bit"
            x = logits(64, EXPERTS, seed=i)
            want_w, want_ids, _ = reference(layer, x, "fp32")
            assert_bit_exact(c.route(layer, x), want_w, want_ids, layer.name)


def test_ctl_layers_lists_a_models_layers(start_daemon, tmp_path):
    from conftest import find_binary
    ckpt, _ = deepseek_checkpoint(tmp_path)
    d = start_daemon("--model", str(ckpt), "--preset", "mixtral-8x7b")
    ctl = find_binary("moe-routerctl", "MOE_ROUTERCTL")
    p = subprocess.run([str(ctl), "layers", "--endpoint", d.endpoint, "--json"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    names = [l["name"] for l in json.loads(p.stdout)]
    assert names == ["DeepSeek-V3-mini/3", "DeepSeek-V3-mini/4", "DeepSeek-V3-mini/5", "mixtral-8x7b"]


def test_the_gate_dtype_can_be_chosen(start_daemon, tmp_path):
    ckpt, biases = deepseek_checkpoint(tmp_path)
    d = start_daemon("--model", str(ckpt), "--model-gate-dtype", "bf16")
    with Client(d.endpoint) as c:
        layer = c.model_layers("DeepSeek-V3-mini")[0]
        assert layer.gate_dtype.label == "bf16"
        assert np.array_equal(layer.bias, ref.round_trip(biases[3], "bf16")), "stored rounded to bf16, once"


def test_a_broken_checkpoint_stops_the_start_naming_the_file(routerd_binary, tmp_path):
    ckpt, _ = deepseek_checkpoint(tmp_path)
    shard = ckpt / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])  # cut inside the last tensor
    p = subprocess.run([str(routerd_binary), "--model", str(ckpt), "--endpoint", f"ipc://{tmp_path}/x.sock"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stderr
    assert "model-00002-of-00002.safetensors" in p.stderr and "run past the end" in p.stderr, p.stderr
    (ckpt / "config.json").write_text('{"model_type": "bert", "num_hidden_layers": 2}')
    p = subprocess.run([str(routerd_binary), "--model", str(ckpt), "--endpoint", f"ipc://{tmp_path}/y.sock"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "model_type bert is not supported" in p.stderr, p.stderr


def test_models_in_the_config_file(start_daemon, tmp_path):
    deepseek_checkpoint(tmp_path)
    config = tmp_path / "routerd.yaml"
    config.write_text("models:\n  - {path: DeepSeek-V3-mini, name: dsv3, gate_dtype: bf16}\n")
    d = start_daemon("--config", str(config), "--preset", "mixtral-8x7b")
    with Client(d.endpoint) as c:
        assert [l.name for l in c.layers()] == ["dsv3/3", "dsv3/4", "dsv3/5", "mixtral-8x7b"]
        assert c.model_layers("dsv3")[0].gate_dtype.label == "bf16"


def test_ctl_inspect_reads_a_checkpoint_without_a_daemon(tmp_path):
    from conftest import find_binary
    ctl = find_binary("moe-routerctl", "MOE_ROUTERCTL")
    ckpt, _ = deepseek_checkpoint(tmp_path)
    p = subprocess.run([str(ctl), "inspect", str(ckpt)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("model DeepSeek-V3-mini: deepseek_v3, 3 MoE layers, gate fp32, bias stored fp32, "
                               "pre-cast to fp32 once: exact, read ")
    assert lines[1].startswith("DeepSeek-V3-mini/3  biased_grouped_topk E=256 k=8 G=8 Gk=4 scoring=sigmoid")
    (ckpt / "config.json").write_text("{")
    p = subprocess.run([str(ctl), "inspect", str(ckpt)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 66 and "config.json: invalid JSON" in p.stderr, p.stderr
