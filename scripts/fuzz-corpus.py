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


def v2_frame0(op, body=b"", deadline_ms=0):
    """A version-2 request header (moe_req_header) and its body."""
    return struct.pack("<IHHQIIQ", 0x52454F4D, 2, op, 7, len(body), deadline_ms, 0) + body


def v2_route(layer, tokens, experts, k, token_id_bytes=0, mask=False):
    """moe_route_req_v2 with inline input/outputs; token ids and mask inline when asked."""
    base = w.route_body(layer, w.FP32, tokens, w.buffer_ref(length=tokens * experts * 4),
                        w.buffer_ref(length=tokens * k * 4), w.buffer_ref(length=tokens * k * 4))
    none = w.buffer_ref(kind=2)
    ids = w.buffer_ref(length=tokens * token_id_bytes) if token_id_bytes else none
    m = w.buffer_ref(length=tokens) if mask else none
    return base + ids + m + struct.pack("<IIQ", token_id_bytes, 0, 0)


def decoder_v2():
    rng = np.random.default_rng(2)
    hello = struct.pack("<HHI", 1, 2, 0) + b"fuzz".ljust(64, b"\0")
    yield "v2-hello", [w.frame0(w.OP["HELLO"], hello)]
    yield "v2-list", [v2_frame0(2)]
    yield "v2-stats", [v2_frame0(6)]
    x = rng.standard_normal(3 * 256).astype(np.float32).tobytes()
    yield "v2-route-mask", [v2_frame0(5, v2_route(0, 3, 256, 8, mask=True)), x, bytes([0, 1, 0])]
    xh = rng.standard_normal(2 * 384).astype(np.float32).tobytes()
    yield "v2-route-hash32", [v2_frame0(5, v2_route(2, 2, 384, 6, token_id_bytes=4)), xh,
                              np.array([5, 129279], "<i4").tobytes()]
    yield "v2-route-hash64-mask", [v2_frame0(5, v2_route(2, 2, 384, 6, token_id_bytes=8, mask=True)), xh,
                                   np.array([17, -1], "<i8").tobytes(), bytes([0, 1])]
    counts = np.array([2, 1, 1, 1, 1, 1, 1, 1], "<i4")
    physical = np.array([0, 8, 1, 2, 3, 4, 5, 6, 7], "<i4")
    yield "v2-placement", [v2_frame0(8, struct.pack("<IIII", 1, 9, 8, 9)), counts.tobytes() + physical.tobytes()]
    yield "v2-placement-clear", [v2_frame0(8, struct.pack("<IIII", 1, 0, 0, 0))]
    yield "v2-load", [v2_frame0(9, struct.pack("<II", 1, 1))]
    yield "v2-open-channel", [v2_frame0(10, struct.pack("<QII", 12345, 0, 0))]
    yield "v2-close-channel", [v2_frame0(11, struct.pack("<Q", 99))]


def configs():
    yield "presets", "endpoint: ipc:///tmp/x.sock\nworkers: 2\nqueue_depth: 8\nmax_tokens: 4096\n"
    yield "layer-bias", ("layers:\n  - name: tiny\n    method: biased_grouped_topk\n    num_experts: 8\n    top_k: 2\n"
                         "    num_expert_group: 2\n    topk_group: 1\n    scoring: sigmoid\n    renormalize: true\n"
                         "    routed_scaling_factor: 2.5\n    gate_dtype: bf16\n"
                         "    bias: [0.1, -0.2, 0.3, 0.0, 0.05, -0.05, 0.2, -0.1]\n")
    yield "layer-softmax", ("layers:\n  - {name: s, method: softmax_topk, num_experts: 16, top_k: 4, scoring: softmax,"
                            " renormalize: false, gate_dtype: fp16, nonfinite: reject}\n")
    yield "layer-v2", ("control_uids: [1000, 1001]\nexpert_load_metrics: false\nlayers:\n"
                       "  - {name: e, method: biased_topk, num_experts: 8, top_k: 2, scoring: sqrtsoftplus, renormalize: true,"
                       " renorm_epsilon: 1.0e-20, bias: [0, 0, 0, 0, 0, 0, 0, 0],"
                       " placement: [[0, 8], [1], [2], [3], [4], [5], [6], [7]], num_physical_experts: 9}\n"
                       "  - {name: n, method: softmax_topk, num_experts: 4, top_k: 1, scoring: none}\n")
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
    both = lambda: list(decoder()) + list(decoder_v2())  # noqa: E731
    for target, items in (("decoder", ((n, decoder_input(f)) for n, f in both())),
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
