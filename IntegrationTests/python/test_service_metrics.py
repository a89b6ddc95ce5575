"""moe-routerd --metrics: Prometheus exposition, /healthz, /readyz, loopback-only by default."""
import re
import subprocess
import urllib.error
import urllib.request

import zmq

import daemon_helpers as h
import moe_wire as w


def metrics_port(d):
    assert h.wait_until(lambda: "metrics on http://" in d.read_log(), timeout=10), d.read_log()
    return int(re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", d.read_log()).group(1))


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sample(text, name, **labels):
    """The value of one sample line (labels must match exactly those given)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def test_scrape(start_daemon):
    d = start_daemon("--preset", "mixtral-8x7b", "--preset", "deepseek-v3", "--metrics", "127.0.0.1:0")
    port = metrics_port(d)
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")
    assert get(port, "/nope")[0] == 404
    ctx = zmq.Context()
    s = h.dealer(ctx, d.endpoint)
    layers, _ = w.layers(s)
    for _ in range(7):
        assert h.inline_route(s, layers["mixtral-8x7b"], 3).status == 0
    assert h.inline_route(s, layers["deepseek-v3"], 2).status == 0
    bad = h.inline_route(s, layers["mixtral-8x7b"], 3, dtype=9)
    assert bad.status != 0
    assert h.inline_route(s, layers["mixtral-8x7b"], 1, layer_id=99).status != 0
    seg = h.Segment(1 << 16)
    try:
        r, handle = h.register(s, seg)
        assert r.status == 0
        status, text = get(port, "/metrics")
    finally:
        seg.close()
    assert status == 200
    assert sample(text, "moe_requests_total", op="route") == 10
    assert sample(text, "moe_tokens_total", layer="mixtral-8x7b") == 21
    assert sample(text, "moe_tokens_total", layer="deepseek-v3") == 2
    assert sample(text, "moe_errors_total", code="bad_dtype", layer="mixtral-8x7b") == 1
    assert sample(text, "moe_errors_total", code="unknown_layer", layer="") == 1
    assert sample(text, "moe_request_duration_seconds_count", op="route") == 10
    assert sample(text, "moe_request_duration_seconds_bucket", op="route", le="+Inf") == 10
    assert sample(text, "moe_registered_segments") == 1
    assert sample(text, "moe_queue_depth") == 0
    assert sample(text, "moe_layers") == 2
    assert sample(text, "moe_fallback_casts_total") is not None
    s.close(0)
    ctx.term()


def test_off_by_default(start_daemon):
    d = start_daemon("--preset", "mixtral-8x7b")
    assert "metrics on" not in d.read_log()


def test_refuses_non_loopback(routerd_binary, tmp_path):
    p = subprocess.run([str(routerd_binary), "--preset", "mixtral-8x7b", "--endpoint", f"ipc://{tmp_path}/s.sock",
                        "--metrics", "0.0.0.0:9464"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "not a loopback address" in p.stderr and "--metrics-allow-remote" in p.stderr


def test_slow_peers_never_delay_a_probe(start_daemon):
    """Probe hole 5: a loopback peer trickling its request made /healthz time out (one
    connection at a time). Now: 20 trickling peers and one that never reads its answer are open,
    and /healthz answers at once; each slow peer is closed at its 2 s whole-request deadline."""
    import socket
    import time
    d = start_daemon("--preset", "mixtral-8x7b", "--metrics", "127.0.0.1:0")
    port = metrics_port(d)
    slow = []
    for _ in range(20):
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"GET /metr")  # and nothing more
        slow.append(c)
    hog = socket.create_connection(("127.0.0.1", port))
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    hog.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")  # never reads the answer
    started = time.monotonic()
    for _ in range(5):
        assert get(port, "/healthz") == (200, "ok\n")
    assert time.monotonic() - started < 1.5, "probes answered while the slow peers wait"
    # The deadline: each slow peer sees its connection closed (EOF) within a few seconds.
    for c in slow:
        c.settimeout(10)
        assert c.recv(100) == b"", "closed without an answer at the deadline"
        c.close()
    hog.close()
    assert get(port, "/healthz") == (200, "ok\n")
