"""Threads and the Python client, as documented in moe_router.Client: one Client shared by many
threads serializes their calls (each gets its own, correct answer); each thread with its own
Client (and Session) runs in parallel."""
import threading

import numpy as np
import pytest

from moe_router import Client
from python_client_support import assert_bit_exact, encode, logits, reference, start_router

THREADS = 8
ROUNDS = 25
LAYERS = ["deepseek-v3", "qwen3-moe", "kimi-k2", "gpt-oss-120b"]


@pytest.fixture(scope="module")
def daemon(routerd_binary, routerd_class, tmp_path_factory):
    d = start_router(routerd_binary, routerd_class, tmp_path_factory.mktemp("pythreads"), "--workers", "4")
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def work(daemon):
    """Per thread: its layer, dtype, inputs and the reference answers (computed up front)."""
    with Client(daemon.endpoint) as c:
        out = []
        for t in range(THREADS):
            layer = c.layer(LAYERS[t % len(LAYERS)])
            dtype = ["fp32", "bf16", "fp16"][t % 3]
            tokens = 1 + 37 * t  # 1 token on the I/O thread up to batches for the workers
            xs = [logits(tokens, layer.num_experts, seed=1000 * t + r) for r in range(ROUNDS)]
            out.append((layer, dtype, xs, [reference(layer, x, dtype)[:2] for x in xs]))
        return out


def run_threads(target):
    errors = []

    def guarded(t):
        try:
            target(t)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((t, e))
    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not errors, errors


def test_threads_sharing_one_client(daemon, work):
    with Client(daemon.endpoint) as shared:
        barrier = threading.Barrier(THREADS)

        def body(t):
            layer, dtype, xs, wants = work[t]
            barrier.wait()
            with shared.session(layer, max_tokens=xs[0].shape[0], dtype=dtype) as session:  # one per thread
                for r, (x, want) in enumerate(zip(xs, wants)):
                    data, declared = encode(x, dtype)
                    if r % 2:
                        assert_bit_exact(shared.route(layer, data, dtype=declared), *want, f"thread {t} inline {r}")
                    else:
                        session.input[:] = data.view(session.input.dtype)
                        assert_bit_exact(session.route(), *want, f"thread {t} shm {r}")
                    if r % 5 == 0:
                        shared.stats()
                        assert shared.layer(layer.name) == layer
        run_threads(body)
        stats = shared.stats()
        # every session's segment is gone; the client's own channel (inline routes) holds one
        assert stats.registrations == (1 if shared.channel else 0)


def test_threads_each_with_their_own_client(daemon, work):
    barrier = threading.Barrier(THREADS)

    def body(t):
        layer, dtype, xs, wants = work[t]
        with Client(daemon.endpoint) as own, own.session(layer.name, xs[0].shape[0], dtype) as session:
            barrier.wait()
            for r, (x, want) in enumerate(zip(xs, wants)):
                data, declared = encode(x, dtype)
                assert_bit_exact(own.route(layer.id, data, dtype=declared), *want, f"thread {t} inline {r}")
                assert_bit_exact(session.route(logits=data), *want, f"thread {t} shm {r}")
    run_threads(body)
    with Client(daemon.endpoint) as c:
        assert c.stats().registrations == 0


class InFlight:
    """A socket stand-in that counts requests sent and not yet answered."""

    def __init__(self, sock):
        self.sock, self.now, self.peak = sock, 0, 0

    def _sent(self):
        self.now += 1
        self.peak = max(self.peak, self.now)

    def send(self, *a, **kw):
        self._sent()
        return self.sock.send(*a, **kw)

    def send_multipart(self, *a, **kw):
        self._sent()
        return self.sock.send_multipart(*a, **kw)

    def recv_multipart(self, *a, **kw):
        frames = self.sock.recv_multipart(*a, **kw)
        self.now -= 1
        return frames

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_shared_client_has_one_request_in_flight(daemon):
    with Client(daemon.endpoint) as c:
        probe = c._sock = InFlight(c._sock)
        x = np.ones((64, 256), np.float32)
        run_threads(lambda t: [c.route("deepseek-v3", x) for _ in range(20)])
        assert probe.peak == 1 and probe.now == 0
