"""--backend cpu|rocm|cuda|auto through BackendChoice; HELLO and STATS report the chosen backend
(in their bodies) and its device (in their messages), and so do both clients and moe-routerctl."""
import os
import subprocess

import pytest
import zmq

import daemon_helpers as h
import moe_wire as w
from conftest import ROOT, find_binary
from test_service_metrics import get, metrics_port, sample


def rocm_present():
    return os.path.exists("/dev/kfd")


def hello_backend(sock):
    r = w.call(sock, [w.frame0(w.OP["HELLO"], w.hello_body())])
    assert r.status == 0
    return w.stats(sock)["backend"]


def backend_device(sock):
    """HELLO's and STATS's messages (the same text)."""
    hello = w.call(sock, [w.frame0(w.OP["HELLO"], w.hello_body())])
    stats = w.call(sock, [w.frame0(w.OP["STATS"])])
    assert hello.status == 0 and stats.status == 0 and hello.message == stats.message
    return hello.message


@pytest.mark.parametrize("backend", ["cpu", "cpu-generic", "auto"])
def test_backend_reported(start_daemon, backend):
    d = start_daemon("--preset", "mixtral-8x7b", "--backend", backend)
    ctx = zmq.Context()
    s = h.dealer(ctx, d.endpoint)
    name = hello_backend(s)
    if backend == "auto" and not rocm_present():
        assert name.startswith("cpu")
        assert "(auto): ROCm unavailable" in d.read_log()
    elif backend != "auto":
        assert name.startswith(backend)
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None)
    device = backend_device(s)
    assert device.startswith(f"backend {name}: cpu device "), device
    if cpu_model:
        assert device.endswith(cpu_model), (device, cpu_model)
    layers, _ = w.layers(s)
    assert h.inline_route(s, layers["mixtral-8x7b"], 3).status == 0
    s.close(0)
    ctx.term()


@pytest.mark.skipif(rocm_present(), reason="this host has an AMD GPU")
def test_rocm_without_device_exits_with_message(routerd_binary, tmp_path):
    p = subprocess.run([str(routerd_binary), "--preset", "mixtral-8x7b", "--endpoint", f"ipc://{tmp_path}/s.sock",
                        "--backend", "rocm"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p
    assert "--backend rocm" in p.stderr, p.stderr
    assert not (tmp_path / "s.sock").exists()


def test_unknown_backend(routerd_binary, tmp_path):
    p = subprocess.run([str(routerd_binary), "--preset", "mixtral-8x7b", "--endpoint", f"ipc://{tmp_path}/s.sock",
                        "--backend", "tpu"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--backend = 'tpu' is not valid" in p.stderr


def test_cuda_without_a_library_exits_with_message(routerd_binary, tmp_path):
    env = {**os.environ, "MOE_ROUTER_CUDA_LIB": "/nonexistent/libmoe_router_cuda.so"}
    p = subprocess.run([str(routerd_binary), "--preset", "mixtral-8x7b", "--endpoint", f"ipc://{tmp_path}/s.sock",
                        "--backend", "cuda"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2, p
    assert "--backend cuda (device 0): CUDA backend library not found (looked at /nonexistent/libmoe_router_cuda.so); " \
           "build it with scripts/build-cuda.sh or set MOE_ROUTER_CUDA_LIB" in p.stderr, p.stderr
    assert not (tmp_path / "s.sock").exists()


def test_auto_says_why_each_gpu_build_was_skipped(start_daemon, monkeypatch):
    monkeypatch.setenv("MOE_ROUTER_HIP_LIB", "/nonexistent/libmoe_router_hip.so")
    monkeypatch.setenv("MOE_ROUTER_CUDA_LIB", "/nonexistent/libmoe_router_cuda.so")
    d = start_daemon("--preset", "mixtral-8x7b", "--backend", "auto", "--metrics", "127.0.0.1:0")
    ctx = zmq.Context()
    s = h.dealer(ctx, d.endpoint)
    assert hello_backend(s).startswith("cpu")
    log = d.read_log()
    assert "(auto): ROCm unavailable: ROCm backend library not found" in log, log
    assert "; CUDA unavailable: CUDA backend library not found" in log, log
    _, text = get(metrics_port(d), "/metrics")
    info = [l for l in text.splitlines() if l.startswith("moe_backend_info{")]
    assert len(info) == 1 and 'runtime="cpu"' in info[0] and float(info[0].split()[-1]) == 1, info
    s.close(0)
    ctx.term()


def test_cuda_slot_serves_and_names_backend_and_device(start_daemon, monkeypatch):
    # Any library of the C ABI loads through --backend cuda: the host-emulation build stands in
    # for libmoe_router_cuda.so here (no nvcc, no GPU).
    lib = ROOT / "build/rocm/libmoe_router_hip_host.so"
    if not lib.exists():
        assert subprocess.run([str(ROOT / "scripts/build-rocm.sh"), "--host-only"]).returncode == 0
    monkeypatch.setenv("MOE_ROUTER_CUDA_LIB", str(lib))
    d = start_daemon("--preset", "mixtral-8x7b", "--backend", "cuda", "--metrics", "127.0.0.1:0")
    ctx = zmq.Context()
    s = h.dealer(ctx, d.endpoint)
    assert hello_backend(s) == "rocm-host-emulation"
    assert backend_device(s) == "backend rocm-host-emulation: host-emulation device host-emulation"
    assert "requested with --backend cuda; device 0 of 1 (host-emulation)" in d.read_log()
    # the C client keeps it from its connect-time HELLO; moe-routerctl status and the Python client show it
    ctl = subprocess.run([str(find_binary("moe-routerctl", "MOE_ROUTERCTL")), "status", "--endpoint", d.endpoint],
                         capture_output=True, text=True, timeout=60)
    assert ctl.returncode == 0 and "backend rocm-host-emulation: host-emulation device host-emulation" in ctl.stdout, ctl
    from moe_router import Client
    with Client(d.endpoint) as c:
        assert c.server.backend_device == "backend rocm-host-emulation: host-emulation device host-emulation"
    layers, _ = w.layers(s)
    assert h.inline_route(s, layers["mixtral-8x7b"], 3).status == 0
    _, text = get(metrics_port(d), "/metrics")
    assert sample(text, "moe_backend_info", backend="rocm-host-emulation", runtime="host-emulation",
                  device="host-emulation") == 1
    assert sample(text, "moe_device_routes_total", path="staged") == 1
    s.close(0)
    ctx.term()
