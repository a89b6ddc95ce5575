"""--backend cpu|rocm|auto through BackendChoice; HELLO and STATS report the chosen backend."""
import os
import subprocess

import pytest
import zmq

import daemon_helpers as h
import moe_wire as w


def rocm_present():
    return os.path.exists("/dev/kfd")


def hello_backend(sock):
    r = w.call(sock, [w.frame0(w.OP["HELLO"], w.hello_body())])
    assert r.status == 0
    return w.stats(sock)["backend"]


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
