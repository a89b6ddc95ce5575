#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus (IntegrationTests/fuzz/corpus/TARGET/): valid inputs of
every kind each target reads, so the fuzzer starts from the real formats. Deterministic; rerun
after a wire or format change. Framing of decoder inputs: Sources/MoERouterServer/FuzzEntry.swift."""
import json
import pathlib
import struct
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "IntegrationTests/python"))
import moe_wire as w  # noqa: E402
from checkpoints import FAMILIES  # noqa: E402

OUT = ROOT / "IntegrationTests/fuzz/corpus"


def decoder_input(frames, tcp=False):
    out = bytes([(len(frames) - 1) | (4 if tcp else 0)])
    for i, f in enumerate(frames):
        out += f if i == len(frames) - 1 else struct.pack("<H", len(f)) + f
    return out


def decoder():
    E, rng = 256, np.random.default_rng(1)
    x1 = rng.standard_normal(E).astype(np.float32).tobytes()
    x4h = rng.standard_normal(4 * 8).astype(np.float16).tobytes()
    inline = lambda t, e, k, size: w.route_body(0 if e == 256 else 1, {4: w.FP32, 2: w.FP16}[size], t,  # noqa: E731
                                                 w.buffer_ref(length=t * e * size), w.buffer_ref(length=t * k * 4),
                                                 w.buffer_ref(length=t * k * 4))
    yield "hello", [w.frame0(w.OP["HELLO"], w.hello_body())]
    yield "ping", [w.frame0(w.OP["PING"])]
    yield "list", [w.frame0(w.OP["LIST_LAYERS"])]
    yield "stats", [w.frame0(w.OP["STATS"])]
    yield "register", [w.frame0(w.OP["REGISTER_SHM"], w.register_body("/moe-router-fuzz", 4096))]
    yield "unregister", [w.frame0(w.OP["UNREGISTER_SHM"], struct.pack("<Q", 12345))]
    yield "route-fp32", [w.frame0(w.OP["ROUTE"], inline(1, 256, 8, 4)), x1]
    yield "route-mixtral-fp16", [w.frame0(w.OP["ROUTE"], inline(4, 8, 2, 2)), x4h]
    yield "route-bf16", [w.frame0(w.OP["ROUTE"], w.route_body(0, w.BF16, 1, w.buffer_ref(length=512),
                                                              w.buffer_ref(length=32), w.buffer_ref(length=32))),
                         (np.frombuffer(x1, np.uint32) >> 16).astype(np.uint16).tobytes()]
    yield "route-shm", [w.frame0(w.OP["ROUTE"], w.route_body(0, w.FP32, 2, w.buffer_ref(w.SHM, 7, 0, 2048),
                                                             w.buffer_ref(w.SHM, 7, 4096, 64), w.buffer_ref(w.SHM, 7, 8192, 64)),
                                 deadline_ms=5)]


def configs():
    yield "presets", "endpoint: ipc:///tmp/x.sock\nworkers: 2\nqueue_depth: 8\nmax_tokens: 4096\n"
    yield "layer-bias", ("layers:\n  - name: tiny\n    method: biased_grouped_topk\n    num_experts: 8\n    top_k: 2\n"
                         "    num_expert_group: 2\n    topk_group: 1\n    scoring: sigmoid\n    renormalize: true\n"
                         "    routed_scaling_factor: 2.5\n    gate_dtype: bf16\n"
                         "    bias: [0.1, -0.2, 0.3, 0.0, 0.05, -0.05, 0.2, -0.1]\n")
    yield "layer-softmax", ("layers:\n  - {name: s, method: softmax_topk, num_experts: 16, top_k: 4, scoring: softmax,"
                            " renormalize: false, gate_dtype: fp16, nonfinite: reject}\n")
    yield "models", "models:\n  - {path: /nonexistent, name: m, gate_dtype: auto}\ntcp: tcp://127.0.0.1:5555\n"


def safetensors(tensors):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, (dtype, arr) in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def checkpoints():
    for name, config in FAMILIES.items():
        yield f"config-{name}", b"\0" + json.dumps(config).encode()
    rng = np.random.default_rng(2)
    yield "st-f32", b"\1" + safetensors({"model.layers.3.mlp.gate.e_score_correction_bias": ("F32", rng.standard_normal(8).astype(np.float32))})
    yield "st-mixed", b"\1" + safetensors({"a": ("BF16", np.arange(6, dtype=np.uint16)), "b": ("F16", np.ones(4, np.float16)),
                                           "w": ("F8_E4M3", np.zeros((2, 3), np.uint8))})


def main():
    for target, items in (("decoder", ((n, decoder_input(f)) for n, f in decoder())),
                          ("config", ((n, t.encode()) for n, t in configs())),
                          ("checkpoint", checkpoints())):
        d = OUT / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in items:
            (d / name).write_bytes(data)
    # tcp variants of two decoder inputs
    for name, frames in list(decoder())[:2]:
        (OUT / "decoder" / f"{name}-tcp").write_bytes(decoder_input(frames, tcp=True))


if __name__ == "__main__":
    main()
