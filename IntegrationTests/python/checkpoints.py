"""Hugging Face checkpoint directories for the loader's tests, written here: config.json with each
family's real routing keys (the values of the published config.json files named below), a
sharded safetensors index, gate weights as dummies and random biases. The safetensors bytes are
written by hand, as the format defines them (the loader does not depend on the `safetensors`
package; test_model_families.py checks one file written by that package too).

`expected_layers` re-derives, independently of the daemon, which layers a config makes MoE and
with which parameters (docs/MODELS.md states the same rules)."""
import json
import struct

import numpy as np

# Routing keys as published (hub repository in the comment). num_hidden_layers is the real count:
# the fixtures stay small because only gate-sized tensors are written.
FAMILIES = {
    # deepseek-ai/DeepSeek-V3 (also DeepSeek-R1, DeepSeek-V3.1: the same routing keys)
    "DeepSeek-V3": {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "num_hidden_layers": 61,
        "first_k_dense_replace": 3, "moe_layer_freq": 1, "n_routed_experts": 256, "n_shared_experts": 1,
        "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
        "num_nextn_predict_layers": 1, "torch_dtype": "bfloat16", "vocab_size": 129280, "hidden_size": 7168},
    # deepseek-ai/DeepSeek-V2-Lite
    "DeepSeek-V2-Lite": {
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "num_hidden_layers": 27,
        "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_routed_experts": 64, "n_shared_experts": 2,
        "num_experts_per_tok": 6, "n_group": 1, "topk_group": 1, "topk_method": "greedy",
        "scoring_func": "softmax", "norm_topk_prob": False, "routed_scaling_factor": 1.0,
        "torch_dtype": "bfloat16", "hidden_size": 2048},
    # deepseek-ai/DeepSeek-V2
    "DeepSeek-V2": {
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "num_hidden_layers": 60,
        "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_routed_experts": 160, "n_shared_experts": 2,
        "num_experts_per_tok": 6, "n_group": 8, "topk_group": 3, "topk_method": "group_limited_greedy",
        "scoring_func": "softmax", "norm_topk_prob": False, "routed_scaling_factor": 16.0,
        "torch_dtype": "bfloat16", "hidden_size": 5120},
    # moonshotai/Kimi-K2-Instruct (DeepSeek-V3 architecture)
    "Kimi-K2": {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "num_hidden_layers": 61,
        "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_routed_experts": 384, "n_shared_experts": 1,
        "num_experts_per_tok": 8, "n_group": 1, "topk_group": 1, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.827,
        "torch_dtype": "bfloat16", "vocab_size": 163840, "hidden_size": 7168},
    # zai-org/GLM-4.5-Air (no topk_method: always the noaux_tc routing)
    "GLM-4.5-Air": {
        "architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "num_hidden_layers": 46,
        "first_k_dense_replace": 1, "n_routed_experts": 128, "n_shared_experts": 1, "num_experts_per_tok": 8,
        "n_group": 1, "topk_group": 1, "norm_topk_prob": True, "routed_scaling_factor": 1.0,
        "num_nextn_predict_layers": 1, "torch_dtype": "bfloat16", "hidden_size": 4096},
    # MiniMaxAI/MiniMax-M2 (written with transformers >= 4.56's `dtype` key)
    "MiniMax-M2": {
        "architectures": ["MiniMaxM2ForCausalLM"], "model_type": "minimax_m2", "num_hidden_layers": 62,
        "num_local_experts": 256, "num_experts_per_tok": 8, "scoring_func": "sigmoid", "use_routing_bias": True,
        "use_mtp": True, "num_mtp_modules": 3, "dtype": "bfloat16", "hidden_size": 3072},
    # Qwen/Qwen3-30B-A3B
    "Qwen3-30B-A3B": {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_hidden_layers": 48,
        "num_experts": 128, "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "norm_topk_prob": True, "torch_dtype": "bfloat16", "hidden_size": 2048},
    # Qwen/Qwen1.5-MoE-A2.7B (qwen2_moe: 60 experts, not renormalized)
    "Qwen1.5-MoE-A2.7B": {
        "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "num_hidden_layers": 24,
        "num_experts": 60, "num_experts_per_tok": 4, "decoder_sparse_step": 1, "norm_topk_prob": False,
        "shared_expert_intermediate_size": 5632, "torch_dtype": "bfloat16", "hidden_size": 2048},
    # mistralai/Mixtral-8x7B-v0.1
    "Mixtral-8x7B": {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "num_hidden_layers": 32,
        "num_local_experts": 8, "num_experts_per_tok": 2, "torch_dtype": "bfloat16", "hidden_size": 4096},
    # openai/gpt-oss-20b
    "gpt-oss-20b": {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "num_hidden_layers": 24,
        "num_local_experts": 32, "num_experts_per_tok": 4, "experts_per_token": 4, "torch_dtype": "bfloat16",
        "hidden_size": 2880},
    # meta-llama/Llama-4-Maverick-17B-128E-Instruct (the text model's keys under text_config)
    "Llama-4-Maverick": {
        "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "torch_dtype": "bfloat16",
        "text_config": {"model_type": "llama4_text", "num_hidden_layers": 48, "num_local_experts": 128,
                        "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "torch_dtype": "bfloat16",
                        "hidden_size": 5120}},
}

_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def expected_layers(config):
    """(MoE layer indices, parameters shared by every layer, bias tensor name format or None)."""
    kind = config["model_type"]
    c = config["text_config"] if kind == "llama4" else config
    n = c["num_hidden_layers"]
    gate = _DTYPES[c.get("torch_dtype") or config.get("torch_dtype") or config.get("dtype")]
    base = dict(num_expert_group=1, topk_group=1, routed_scaling_factor=1.0, gate_dtype=gate)
    if kind in ("deepseek_v2", "deepseek_v3", "kimi_k2", "glm4_moe"):
        first, freq = c.get("first_k_dense_replace", 0), c.get("moe_layer_freq", 1)
        layers = [i for i in range(n) if i >= first and i % freq == 0]
        method = "noaux_tc" if kind == "glm4_moe" else c.get("topk_method", "greedy")
        base.update(num_experts=c["n_routed_experts"], top_k=c["num_experts_per_tok"],
                    renormalize=c.get("norm_topk_prob", False),
                    routed_scaling_factor=c.get("routed_scaling_factor", 1.0))
        if method == "noaux_tc":
            base.update(method="biased_grouped_topk", scoring="sigmoid", num_expert_group=c["n_group"],
                        topk_group=c["topk_group"])
            return layers, base, "model.layers.{}.mlp.gate.e_score_correction_bias"
        if method == "group_limited_greedy":
            base.update(method="grouped_topk", scoring="softmax", num_expert_group=c["n_group"], topk_group=c["topk_group"])
        else:
            base.update(method="softmax_topk", scoring="softmax")
        return layers, base, None
    if kind == "minimax_m2":
        base.update(method="biased_topk", scoring="sigmoid", num_experts=c["num_local_experts"],
                    top_k=c["num_experts_per_tok"], renormalize=True,
                    routed_scaling_factor=c.get("routed_scaling_factor", 1.0))
        return list(range(n)), base, "model.layers.{}.block_sparse_moe.e_score_correction_bias"
    if kind in ("qwen2_moe", "qwen3_moe"):
        step, dense = c.get("decoder_sparse_step", 1), set(c.get("mlp_only_layers", []))
        base.update(method="softmax_topk", scoring="softmax", num_experts=c["num_experts"],
                    top_k=c["num_experts_per_tok"], renormalize=c.get("norm_topk_prob", False))
        return [i for i in range(n) if i not in dense and (i + 1) % step == 0], base, None
    if kind == "mixtral":
        base.update(method="softmax_topk", scoring="softmax", num_experts=c["num_local_experts"],
                    top_k=c["num_experts_per_tok"], renormalize=True)
        return list(range(n)), base, None
    if kind == "gpt_oss":
        base.update(method="topk_softmax", scoring="softmax", num_experts=c["num_local_experts"],
                    top_k=c["num_experts_per_tok"], renormalize=False)
        return list(range(n)), base, None
    if kind == "llama4":
        step = c.get("interleave_moe_layer_step", 1)
        base.update(method="llama4_top1", scoring="sigmoid", num_experts=c["num_local_experts"],
                    top_k=c["num_experts_per_tok"], renormalize=False)
        return list(range(step - 1, n, step)), base, None
    raise ValueError(kind)


def write_safetensors(path, tensors):
    """tensors: {name: (safetensors dtype, array)}; arrays written little-endian in order."""
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, (dtype, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def random_bias(rng, experts, dtype):
    """(stored bits as a numpy array of the safetensors dtype, exact fp32 values)."""
    v = (rng.standard_normal(experts) * 0.05 + 0.01).astype(np.float32)
    if dtype == "F32":
        return v, v
    if dtype == "F16":
        h = v.astype(np.float16)
        return h, h.astype(np.float32)
    bits = (v.view(np.uint32) >> 16).astype(np.uint16)  # truncation: any bf16 value will do
    return bits, (bits.astype(np.uint32) << 16).view(np.float32)


def write_checkpoint(root, name, config, bias_dtype="F32", shards=3, seed=0):
    """A checkpoint directory for `config`: gate weights (dummy zeros) for every MoE layer and,
    for biased methods, `e_score_correction_bias` in `bias_dtype`, spread over `shards` files
    named by an index. Returns (directory, {layer index: exact fp32 bias})."""
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config, indent=2))
    layers, params, bias_name = expected_layers(config)
    prefix = "block_sparse_moe" if config["model_type"] == "minimax_m2" else "mlp"
    rng = np.random.default_rng(seed)
    files, index, biases = {}, {}, {}
    for n, layer in enumerate(layers):
        file = f"model-{n % shards + 1:05d}-of-{shards:05d}.safetensors"
        weight = f"model.layers.{layer}.{prefix}.gate.weight"
        files.setdefault(file, {})[weight] = ("BF16", np.zeros((params["num_experts"], 8), np.uint16))
        index[weight] = file
        if bias_name:
            stored, exact = random_bias(rng, params["num_experts"], bias_dtype)
            files[file][bias_name.format(layer)] = (bias_dtype, stored)
            index[bias_name.format(layer)] = file
            biases[layer] = exact
    for file, tensors in files.items():
        write_safetensors(d / file, tensors)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": index}))
    return d, biases
