"""Every supported family's checkpoint, with its real config.json routing keys, served by one
daemon: the layer set, each layer's parameters and bias, and routing results, all checked
against what the config and the tensors say (checkpoints.expected_layers, routing_reference),
not against what the daemon reports about itself."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import routing_reference as ref
from checkpoints import FAMILIES, expected_layers, write_checkpoint, write_safetensors
from conftest import find_binary
from daemon_helpers import wait_until
from moe_router import Client
from python_client_support import assert_bit_exact, logits

# Stored bias dtype per biased family: every dtype the loader widens, and casts that round.
BIAS_DTYPES = {"DeepSeek-V3": "F32", "Kimi-K2": "BF16", "GLM-4.5-Air": "F16", "MiniMax-M2": "F32"}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    made = {}
    for seed, (name, config) in enumerate(FAMILIES.items()):
        made[name] = write_checkpoint(root, name, config, bias_dtype=BIAS_DTYPES.get(name, "F32"), seed=seed)
    return made


def route_reference(params, bias, x):
    spec = dict(params, name="x", nonfinite="clamp")
    b = None if bias is None else ref.round_trip(bias, params["gate_dtype"])
    w, ids, _ = ref.route(spec, b, ref.round_trip(x, params["gate_dtype"]))
    return w.astype(np.float32), ids.astype(np.int32)


def in_gate_dtype(x, gate):
    """fp32 logits as the gate emits them: (array for the client, its dtype label)."""
    if gate == "bf16":
        return ref.to_bf16_bits(x), "bf16"
    return (x.astype(np.float16), "fp16") if gate == "fp16" else (x, "fp32")


def check_model(client, name, config, biases, gate=None):
    moe, params, bias_name = expected_layers(config)
    params = dict(params, gate_dtype=gate or params["gate_dtype"])
    layers = client.model_layers(name)
    assert [l.name for l in layers] == [f"{name}/{i}" for i in moe], name
    for i, layer in zip(moe, layers):
        got = dict(method=layer.method.label, scoring=layer.scoring.label, num_experts=layer.num_experts,
                   top_k=layer.top_k, num_expert_group=layer.num_expert_group, topk_group=layer.topk_group,
                   renormalize=layer.renormalize, routed_scaling_factor=layer.routed_scaling_factor,
                   gate_dtype=layer.gate_dtype.label)
        assert got == dict(params, routed_scaling_factor=np.float32(params["routed_scaling_factor"])), layer.name
        if bias_name is None:
            assert layer.bias is None, layer.name
        else:
            want = ref.round_trip(biases[i], params["gate_dtype"])
            assert np.array_equal(layer.bias.view(np.uint32), want.view(np.uint32)), f"{layer.name}: bias as stored, cast once"
    # Routing: the first and the last MoE layer, 64 tokens of hard rows and random ones.
    for i, layer in [(moe[0], layers[0]), (moe[-1], layers[-1])]:
        x = logits(64, params["num_experts"], seed=i)
        want_w, want_ids = route_reference(params, biases.get(i), x)
        sent, dtype = in_gate_dtype(x, params["gate_dtype"])
        assert_bit_exact(client.route(layer, sent, dtype=dtype), want_w, want_ids, layer.name)


def model_args(family_dirs):
    return [a for d, _ in family_dirs.values() for a in ("--model", str(d))]


@pytest.mark.parametrize("gate", [None, "fp32"], ids=["auto", "fp32"])
def test_every_family_serves_what_its_checkpoint_says(start_daemon, family_dirs, gate):
    extra = ["--model-gate-dtype", gate] if gate else []
    d = start_daemon(*model_args(family_dirs), *extra)
    with Client(d.endpoint) as c:
        for name, (_, biases) in family_dirs.items():
            check_model(c, name, FAMILIES[name], biases, gate)
        assert len(c.layers()) == sum(len(expected_layers(cfg)[0]) for cfg in FAMILIES.values())
    log = d.read_log()
    # One line per model: the stored bias dtype, the gate dtype, whether the pre-cast rounds.
    if gate is None:
        assert "model Kimi-K2: kimi_k2, 60 MoE layers, gate bf16, bias stored bf16, pre-cast to bf16 once: exact" in log
        m = re.search(r"model GLM-4.5-Air: glm4_moe, 45 MoE layers, gate bf16, bias stored fp16, "
                      r"pre-cast to bf16 once: rounds (\d+) of 5760 values, read (\d+) bytes", log)
        assert m and 0 < int(m.group(1)) <= 5760, log
        assert "model Mixtral-8x7B: mixtral, 32 MoE layers, gate bf16, no bias" in log
    else:
        assert "model DeepSeek-V3: deepseek_v3, 58 MoE layers, gate fp32, bias stored fp32, pre-cast to fp32 once: exact" in log


def test_a_file_written_by_the_safetensors_package(start_daemon, tmp_path):
    """The hand-written fixtures agree with the format's own writer."""
    st = pytest.importorskip("safetensors.numpy")
    d, biases = write_checkpoint(tmp_path, "Kimi-K2", FAMILIES["Kimi-K2"], bias_dtype="F32", shards=1)
    tensors = {f"model.layers.{i}.mlp.gate.e_score_correction_bias": b for i, b in biases.items()}
    tensors["model.layers.0.mlp.gate.weight"] = np.ones((384, 4), np.float16)
    for f in d.glob("*.safetensors"):
        f.unlink()
    (d / "model.safetensors.index.json").unlink()
    st.save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    server = start_daemon("--model", str(d), "--model-gate-dtype", "fp32")
    with Client(server.endpoint) as c:
        check_model(c, "Kimi-K2", FAMILIES["Kimi-K2"], biases, "fp32")


def test_deepseek_v3_start_reads_only_the_biases(start_daemon, tmp_path):
    """61 layers in 4 shards with 1 GiB of (sparse) expert weights each: the daemon reads the
    config, the index, four headers and 58 biases; /proc/PID/io counts every byte it read."""
    config = FAMILIES["DeepSeek-V3"]
    moe, params, bias_name = expected_layers(config)
    d = tmp_path / "DeepSeek-V3"
    d.mkdir()
    (d / "config.json").write_text(__import__("json").dumps(config))
    rng = np.random.default_rng(7)
    index, biases, weights_gib = {}, {}, 1
    per_shard = {}
    for layer in range(61):
        file = f"model-{layer % 4 + 1:05d}-of-00004.safetensors"
        per_shard.setdefault(file, []).append(layer)
    for file, layers in per_shard.items():
        tensors = {}
        for layer in layers:
            if layer in moe:
                biases[layer] = (rng.standard_normal(256) * 0.05).astype(np.float32)
                tensors[bias_name.format(layer)] = ("F32", biases[layer])
                index[bias_name.format(layer)] = file
        write_safetensors(d / file, tensors)
        # A weight tensor after the biases, as large as a real shard's, and sparse on disk.
        header, data_len = shard_with_weight(d / file, layers[0], weights_gib << 30)
        index[f"model.layers.{layers[0]}.mlp.experts.weight"] = file
    (d / "model.safetensors.index.json").write_text(__import__("json").dumps({"weight_map": index}))
    checkpoint_bytes = sum(f.stat().st_size for f in d.iterdir())
    started = time.monotonic()
    server = start_daemon("--model", str(d), "--model-gate-dtype", "fp32")
    start_s = time.monotonic() - started
    read = int(re.search(r"rchar: (\d+)", Path(f"/proc/{server.pid}/io").read_text()).group(1))
    with Client(server.endpoint) as c:
        check_model(c, "DeepSeek-V3", config, biases, "fp32")
    m = re.search(r"model DeepSeek-V3: .* read (\d+) bytes in ([\d.]+) ms", server.read_log())
    assert m, server.read_log()
    loader_bytes = int(m.group(1))
    assert checkpoint_bytes > 4 << 30
    assert loader_bytes < 200 << 10, "config, index, headers and 58 biases"
    assert read < 4 << 20, f"the daemon read {read} bytes of a {checkpoint_bytes}-byte checkpoint"
    print(f"\ndeepseek-v3-shaped checkpoint, 61 layers, {checkpoint_bytes / 2**30:.1f} GiB: loader read "
          f"{loader_bytes} bytes in {m.group(2)} ms; daemon process read {read} bytes in all; "
          f"start to serving {start_s * 1000:.0f} ms")


def shard_with_weight(path, layer, size):
    """Rewrites the shard at `path` with one more tensor, `size` bytes of BF16 placed after the
    existing ones and left as a hole in the file."""
    import json
    import struct
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    header[f"model.layers.{layer}.mlp.experts.weight"] = {
        "dtype": "BF16", "shape": [size // 2], "data_offsets": [len(data), len(data) + size]}
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
        f.truncate(8 + len(text) + len(data) + size)
    return header, len(data) + size


def test_sighup_rereads_the_checkpoint_and_keeps_serving_when_it_broke(start_daemon, tmp_path):
    config = dict(FAMILIES["GLM-4.5-Air"], num_hidden_layers=4)
    d, biases = write_checkpoint(tmp_path, "GLM", config, bias_dtype="F32")
    server = start_daemon("--model", str(d), "--model-gate-dtype", "fp32")
    reloads = lambda: server.read_log().count("model GLM: glm4_moe")
    with Client(server.endpoint) as c:
        before = c.model_layers("GLM")
        assert [l.name for l in before] == ["GLM/1", "GLM/2", "GLM/3"]
        # A shard cut inside a bias: the reload is rejected naming the file, the layers stay.
        shard = d / "model-00002-of-00003.safetensors"
        good = shard.read_bytes()
        shard.write_bytes(good[:-10])
        os.kill(server.pid, signal.SIGHUP)
        assert wait_until(lambda: "reload rejected" in server.read_log(), timeout=20), server.read_log()
        assert "model-00002-of-00003.safetensors" in server.read_log().split("reload rejected", 1)[1]
        assert [l.name for l in c.model_layers("GLM")] == ["GLM/1", "GLM/2", "GLM/3"]
        x = logits(8, 128, seed=1)
        want_w, want_ids = route_reference(dict(expected_layers(config)[1], gate_dtype="fp32"), biases[2], x)
        assert_bit_exact(c.route(c.layer("GLM/2"), x), want_w, want_ids, "still served after a rejected reload")
        # Repaired with new biases and one more layer: the reload serves what the files now say.
        config["num_hidden_layers"] = 5
        (tmp_path / "next").mkdir()
        d2, biases2 = write_checkpoint(tmp_path / "next", "GLM", config, bias_dtype="F32", seed=9)
        for f in d.iterdir():
            f.unlink()
        for f in d2.iterdir():
            f.rename(d / f.name)
        n = reloads()
        os.kill(server.pid, signal.SIGHUP)
        assert wait_until(lambda: reloads() > n, timeout=20), server.read_log()
        assert wait_until(lambda: len(c.model_layers("GLM")) == 4, timeout=10)
        layer = c.layer("GLM/4")
        assert np.array_equal(layer.bias.view(np.uint32), biases2[4].view(np.uint32))


def run_as_nobody():
    """preexec_fn dropping to nobody when the suite runs as root (root reads any directory)."""
    if os.geteuid() != 0:
        return None
    return lambda: (os.setgroups([]), os.setgid(65534), os.setuid(65534))


def test_unreadable_directory_and_symlink_loops_are_named_errors(routerd_binary):
    ctl = find_binary("moe-routerctl", "MOE_ROUTERCTL")
    root = Path(tempfile.mkdtemp(prefix="moe-router-ckpt-", dir="/tmp"))
    try:
        os.chmod(root, 0o755)
        d, _ = write_checkpoint(root, "Mixtral", FAMILIES["Mixtral-8x7B"])
        os.chmod(d, 0o000)
        if os.geteuid() == 0:
            # nobody must be able to run the tool: the checkout may sit in a directory only root
            # can enter (a CI's mktemp dir), so run a copy from the 0755 test root.
            shutil.copy2(ctl, root / "moe-routerctl")
            ctl = root / "moe-routerctl"
        p = subprocess.run([str(ctl), "inspect", str(d)], capture_output=True, text=True, timeout=30,
                           preexec_fn=run_as_nobody())
        assert p.returncode == 66 and f"{d}/config.json: Permission denied" in p.stderr, p.stderr
        os.chmod(d, 0o755)
        # A symlink loop where config.json should be, then where a shard should be.
        (d / "config.json").rename(d / "config.real")
        os.symlink(d / "config.json", d / "config.json")
        p = subprocess.run([str(routerd_binary), "--model", str(d), "--endpoint", f"ipc://{root}/a.sock"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "config.json: Too many levels of symbolic links" in p.stderr, p.stderr
        (d / "config.json").unlink()
        k, biases = write_checkpoint(root, "Kimi", dict(FAMILIES["Kimi-K2"], num_hidden_layers=3), shards=1)
        shard = k / "model-00001-of-00001.safetensors"
        shard.unlink()
        os.symlink(shard, shard)
        p = subprocess.run([str(routerd_binary), "--model", str(k), "--endpoint", f"ipc://{root}/b.sock"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "model-00001-of-00001.safetensors: Too many levels of symbolic links" in p.stderr, p.stderr
        assert not list(root.glob("*.sock")), "nothing served"
    finally:
        subprocess.run(["rm", "-rf", str(root)])
