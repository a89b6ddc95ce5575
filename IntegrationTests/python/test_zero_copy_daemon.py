"""Zero copy from a client's segment (issue 19): a daemon on the GPU backend registers every
segment it maps with the runtime, routes a ROUTE whose buffers all lie in registered segments in
place (mrh_route_mapped), and unregisters each mapping on every release path. Run on the
host-emulation build of the backend, where registration is bookkeeping but the library's range
checks are real; the metrics show what the backend holds."""
import os
import struct
import subprocess

import numpy as np
import pytest
import zmq

import daemon_helpers as h
import moe_wire as w
from conftest import ROOT
from test_service_metrics import get, metrics_port, sample

HOST_LIB = ROOT / "build/rocm/libmoe_router_hip_host.so"


@pytest.fixture(scope="module")
def host_library():
    if not HOST_LIB.exists():
        r = subprocess.run([str(ROOT / "scripts/build-rocm.sh"), "--host-only"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    return HOST_LIB


@pytest.fixture
def emulated_daemon(start_daemon, host_library, monkeypatch):
    monkeypatch.setenv("MOE_ROUTER_HIP_LIB", str(host_library))
    d = start_daemon("--preset", "qwen3-moe", "--backend", "rocm", "--metrics", "127.0.0.1:0")
    return d, metrics_port(d)


def device_metrics(port):
    status, text = get(port, "/metrics")
    assert status == 200
    return dict(segments=sample(text, "moe_device_registered_segments"),
                bytes=sample(text, "moe_device_registered_bytes"),
                zero_copy=sample(text, "moe_device_routes_total", path="zero_copy") or 0,
                staged=sample(text, "moe_device_routes_total", path="staged") or 0)


def unregister(sock, handle):
    return w.call(sock, [w.frame0(w.OP["UNREGISTER_SHM"], struct.pack("<Q", handle))])


def test_a_segment_is_registered_routed_in_place_and_unregistered(emulated_daemon):
    d, port = emulated_daemon
    ctx = zmq.Context()
    sock = h.dealer(ctx, d.endpoint)
    layer = w.layers(sock)[0]["qwen3-moe"]
    assert w.stats(sock)["backend"] == "rocm-host-emulation"
    assert device_metrics(port) == dict(segments=0, bytes=0, zero_copy=0, staged=0)

    tokens, E, k = 24, layer["E"], layer["k"]
    seg = h.Segment(1 << 16)
    r, handle = h.register(sock, seg)
    assert r.status == 0, r
    assert device_metrics(port) == dict(segments=1, bytes=1 << 16, zero_copy=0, staged=0)

    logits = np.random.default_rng(3).normal(size=tokens * E).astype(np.float32).tobytes()
    seg.mm[0:len(logits)] = logits
    out = tokens * k * 4
    w_off, i_off = 16384, 32768
    r = h.shm_route(sock, layer, tokens, [(handle, 0, len(logits)), (handle, w_off, out), (handle, i_off, out)])
    assert r.status == 0, r
    assert device_metrics(port)["zero_copy"] == 1
    # the same logits inline: the staged path, the same answer
    r2 = h.inline_route(sock, layer, tokens, data=logits)
    assert r2.status == 0, r2
    assert bytes(seg.mm[w_off:w_off + out]) == r2.frames[0] and bytes(seg.mm[i_off:i_off + out]) == r2.frames[1]
    ids = np.frombuffer(bytes(seg.mm[i_off:i_off + out]), dtype=np.int32)
    assert ids.min() >= 0 and ids.max() < E
    # input in the segment, outputs inline: staged too
    body = w.route_body(layer["id"], w.FP32, tokens, w.buffer_ref(w.SHM, handle, 0, len(logits)),
                        w.buffer_ref(length=out), w.buffer_ref(length=out))
    r3 = w.call(sock, [w.frame0(w.OP["ROUTE"], body)])
    assert r3.status == 0 and r3.frames == r2.frames
    m = device_metrics(port)
    assert (m["zero_copy"], m["staged"]) == (1, 2)

    assert unregister(sock, handle).status == 0
    assert device_metrics(port)["segments"] == 0 and device_metrics(port)["bytes"] == 0
    seg.close()
    sock.close(0)
    ctx.term()


def test_a_disconnected_clients_segments_are_unregistered(emulated_daemon):
    d, port = emulated_daemon
    ctx = zmq.Context()
    sock = h.dealer(ctx, d.endpoint)
    segs = [h.Segment(1 << 14), h.Segment(1 << 15)]
    for s in segs:
        assert h.register(sock, s)[0].status == 0
    assert device_metrics(port)["segments"] == 2 and device_metrics(port)["bytes"] == (1 << 14) + (1 << 15)
    sock.close(0)  # the connection ends: its registrations are released
    assert h.wait_until(lambda: device_metrics(port)["segments"] == 0, timeout=10), device_metrics(port)
    assert device_metrics(port)["bytes"] == 0
    for s in segs:
        s.close()
    ctx.term()


def test_a_truncated_segment_is_unregistered(emulated_daemon):
    d, port = emulated_daemon
    ctx = zmq.Context()
    sock = h.dealer(ctx, d.endpoint)
    layer = w.layers(sock)[0]["qwen3-moe"]
    seg = h.Segment(1 << 16)
    r, handle = h.register(sock, seg)
    assert r.status == 0 and device_metrics(port)["segments"] == 1
    os.ftruncate(seg.fd, 4096)  # the client shrinks it: the next ROUTE drops the registration
    tokens, E, k = 4, layer["E"], layer["k"]
    r = h.shm_route(sock, layer, tokens, [(handle, 0, tokens * E * 4), (handle, 16384, tokens * k * 4),
                                          (handle, 32768, tokens * k * 4)])
    assert r.status_name == "SHM_TRUNCATED", r
    assert device_metrics(port)["segments"] == 0
    seg.close()
    sock.close(0)
    ctx.term()
