"""Shared helpers of the moe-routerd pytest suites: shm objects and ROUTE request builders."""
import mmap
import os
import signal
import socket
import time
import uuid

import numpy as np
import zmq

import moe_wire as w


class Segment:
    """A POSIX shm object made by hand (so tests can break it in every way)."""

    def __init__(self, size, mode=0o600):
        self.name = f"/moe-router-pytest-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.path = "/dev/shm" + self.name
        self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.fchmod(self.fd, mode)
        os.ftruncate(self.fd, size)
        self.size = size
        self.mm = mmap.mmap(self.fd, size)

    def close(self):
        try:
            self.mm.close()
        except BufferError:
            pass
        os.close(self.fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def dealer(ctx, endpoint):
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    return s


def register(sock, seg, size=None):
    r = w.call(sock, [w.frame0(w.OP["REGISTER_SHM"], w.register_body(seg.name, seg.size if size is None else size))])
    handle = w.REGISTER_RESP.unpack(r.body)[0] if r.status == 0 else None
    return r, handle


def inline_route(sock, layer, tokens, dtype=w.FP32, data=None, layer_id=None, **kw):
    """A ROUTE with every buffer inline; `data` defaults to random fp32 logits."""
    E, k = layer["E"], layer["k"]
    size = 4 if dtype == w.FP32 else 2
    if data is None:
        data = np.random.default_rng(tokens).normal(size=tokens * E).astype(np.float32)
        if dtype != w.FP32:
            data = data.astype(np.float16)
        data = data.tobytes()
    body = w.route_body(layer["id"] if layer_id is None else layer_id, dtype, tokens,
                        w.buffer_ref(length=tokens * E * size), w.buffer_ref(length=tokens * k * 4),
                        w.buffer_ref(length=tokens * k * 4))
    return w.call(sock, [w.frame0(w.OP["ROUTE"], body, **kw), data])


def shm_route(sock, layer, tokens, refs, dtype=w.FP32, **kw):
    """A ROUTE with three (handle, offset, length) shm refs."""
    body = w.route_body(layer["id"], dtype, tokens, *[w.buffer_ref(w.SHM, h, o, n) for (h, o, n) in refs])
    return w.call(sock, [w.frame0(w.OP["ROUTE"], body, **kw)])


def wait_until(predicate, timeout=5.0, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()

def stop_process(pid, timeout=10.0):
    """SIGSTOP to `pid`, returning once every one of its threads is stopped: the signal only
    takes effect as each thread next runs, which a loaded machine delays (a request sent right
    after os.kill could still be answered)."""
    os.kill(pid, signal.SIGSTOP)

    def all_stopped():
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            return True
        for t in tasks:
            try:
                with open(f"/proc/{pid}/task/{t}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if state not in ("T", "t"):
                return False
        return True

    assert wait_until(all_stopped, timeout=timeout, step=0.005), f"pid {pid} did not stop"


def free_port():
    """A tcp port on 127.0.0.1 nobody listens on right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
