"""SIGHUP reloads the configuration file: atomic swap, in-flight requests unharmed, bad configs rejected."""
import signal
import threading

import zmq

import daemon_helpers as h
import moe_wire as w
from service_helpers import NotifySocket

ONE = "layers:\n  - preset: mixtral-8x7b\n"
TWO = "layers:\n  - preset: mixtral-8x7b\n  - preset: qwen3-moe\n    name: qwen\n"
BAD = "layers:\n  - preset: mixtral-8x7b\n  - name: broken\n    method: softmax_topk\n    num_experts: 8\n    top_k: 99\n"


def test_reload_swaps_layers_and_rejects_invalid(start_daemon, tmp_path, monkeypatch):
    notify = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    cfg = tmp_path / "routerd.yaml"
    cfg.write_text(ONE)
    d = start_daemon("--config", str(cfg))
    notify.wait_for("READY", "1")
    ctx = zmq.Context()
    s = h.dealer(ctx, d.endpoint)
    layers, _ = w.layers(s)
    assert list(layers) == ["mixtral-8x7b"]

    # Load on another connection while the layers are swapped: every request succeeds.
    stop = threading.Event()
    failures, done = [], [0]

    def load():
        c = h.dealer(ctx, d.endpoint)
        mix = dict(layers["mixtral-8x7b"])
        while not stop.is_set():
            r = h.inline_route(c, mix, 256)
            if r.status != 0:
                failures.append(r)
            done[0] += 1
        c.close(0)

    t = threading.Thread(target=load)
    t.start()
    cfg.write_text(TWO)
    n = len(notify.messages)
    d.proc.send_signal(signal.SIGHUP)
    i, _ = notify.wait_for("RELOADING", "1", after=n)
    assert "MONOTONIC_USEC" in notify.messages[i]
    notify.wait_for("READY", "1", after=i + 1)
    assert h.wait_until(lambda: "reloaded: 2 layers" in d.read_log())
    layers2, _ = w.layers(s)
    assert list(layers2) == ["mixtral-8x7b", "qwen"]
    assert h.inline_route(s, layers2["qwen"], 4).status == 0

    # An invalid configuration is refused with a clear line; the previous layers stay.
    cfg.write_text(BAD)
    n = len(notify.messages)
    d.proc.send_signal(signal.SIGHUP)
    i, _ = notify.wait_for("RELOADING", "1", after=n)
    notify.wait_for("READY", "1", after=i + 1)
    assert h.wait_until(lambda: "reload rejected" in d.read_log())
    line = [l for l in d.read_log().splitlines() if "reload rejected" in l][0]
    assert "previous 2 layers" in line and "broken" in line, line
    layers3, _ = w.layers(s)
    assert list(layers3) == ["mixtral-8x7b", "qwen"]

    # Unparseable YAML too.
    cfg.write_text("layers: [\n")
    d.proc.send_signal(signal.SIGHUP)
    assert h.wait_until(lambda: d.read_log().count("reload rejected") == 2)
    assert list(w.layers(s)[0]) == ["mixtral-8x7b", "qwen"]

    stop.set()
    t.join()
    assert not failures, failures[:3]
    assert done[0] > 0
    assert d.alive()
    s.close(0)
    ctx.term()
    notify.close()


def test_a_channel_routes_on_the_reloaded_layers(start_daemon, tmp_path):
    """A host calling back-to-back on a channel through a reload is unharmed, and its next
    request on the same channel may name a new layer. (The server's own copy of the layer list,
    read without a lock per request, is pinned by ConfigFileTests'
    aReaderSeesAReloadAtOnceAndLetsGoWhenDropped: here a GIL switch may put the server to sleep,
    which drops the copy anyway.)"""
    import numpy as np
    from moe_router import Client

    cfg = tmp_path / "routerd.yaml"
    cfg.write_text(ONE)
    d = start_daemon("--config", str(cfg))
    c = Client(d.endpoint)
    rng = np.random.default_rng(7)
    x8, x128 = rng.standard_normal((1, 8), dtype=np.float32), rng.standard_normal((1, 128), dtype=np.float32)
    assert c.route("mixtral-8x7b", x8).path == "channel"

    reloaded, outcome = threading.Event(), {}

    def host():
        n = 0
        try:
            while not reloaded.is_set() or n < 200:
                r = c.route(0, x8)
                assert r.path == "channel" and r.ids.shape == (1, 2)
                n += 1
            r = c.route(1, x128)  # the new layer, on the same busy channel
            outcome["qwen"] = (r.path, r.ids.shape)
        except Exception as e:  # noqa: BLE001 (reported below)
            outcome["error"] = e
        outcome["calls"] = n

    t = threading.Thread(target=host)
    t.start()
    cfg.write_text(TWO)
    d.proc.send_signal(signal.SIGHUP)
    assert h.wait_until(lambda: "reloaded: 2 layers" in d.read_log())
    reloaded.set()
    t.join(60)
    assert not t.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["qwen"] == ("channel", (1, 8)), outcome
    c.close()
    assert d.alive()
