"""BUSY answers to ROUTE carry the route body, as docs/PROTOCOL.md says of every ROUTE answer
(probe hole 8), and both clients report them as the typed status (DEADLINE's body:
test_daemon_lifecycle.py::test_deadline_passed_in_queue)."""
import ctypes
import pathlib
import subprocess

import numpy as np
import pytest
import zmq

import moe_wire as w
from daemon_helpers import dealer, wait_until
from moe_router import BusyError, Client

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIB = ROOT / "build" / "lib" / "libmoerouter.so"
DS = "deepseek-v3"
TOKENS = 2000


def fill_the_reply_budget(d, ctx, layer):
    """A connection that never reads, holding more than the daemon-wide reply budget (1 MiB)."""
    hog = ctx.socket(zmq.DEALER)
    hog.linger = 0
    hog.rcvhwm = 1
    hog.connect(d.endpoint)
    x = np.zeros(TOKENS * 256, np.float32).tobytes()
    body = w.route_body(layer["id"], w.FP32, TOKENS, w.buffer_ref(length=len(x)), w.buffer_ref(length=TOKENS * 32),
                        w.buffer_ref(length=TOKENS * 32))
    for _ in range(40):
        hog.send_multipart([w.frame0(w.OP["ROUTE"], body), x])
    probe = dealer(ctx, d.endpoint)
    assert wait_until(lambda: (lambda s: s["routes"] + s["busy_rejections"])(w.stats(probe)) >= 40, timeout=30)
    probe.close()
    return hog, body, x


def test_busy_carries_the_route_body_and_both_clients_report_it(start_daemon):
    d = start_daemon("--preset", DS, "--max-queued-reply-bytes-total", str(1 << 20))
    ctx = zmq.Context()
    raw = dealer(ctx, d.endpoint)
    layer = w.layers(raw)[0][DS]
    hog, body, x = fill_the_reply_budget(d, ctx, layer)
    r = w.call(raw, [w.frame0(w.OP["ROUTE"], body), x])
    assert r.status_name == "BUSY" and "max_queued_reply_bytes_total" in r.message, r
    assert len(r.body) == w.ROUTE_RESP.size, "the route body, also on BUSY"
    tokens, *_ = w.ROUTE_RESP.unpack(r.body)
    assert tokens == TOKENS
    # The Python client: BusyError, the daemon's message kept. (ZeroMQ only: a channel writes its
    # outputs into shared memory, which the reply budget does not count.)
    with Client(d.endpoint, channel=False) as c:
        with pytest.raises(BusyError, match="max_queued_reply_bytes_total"):
            c.route(DS, np.zeros((TOKENS, 256), np.float32))
    # The C client: MOE_ERR_BUSY, and the connection stays usable.
    if not LIB.exists():
        subprocess.run(["make", "-C", str(ROOT), "clientlib"], check=True, capture_output=True)
    lib = ctypes.CDLL(str(LIB))
    lib.moe_connect.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    lib.moe_close.argtypes = [ctypes.c_void_p]
    lib.moe_route.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p,
                              ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.moe_status_name.restype = ctypes.c_char_p
    cc = ctypes.c_void_p()
    assert lib.moe_connect(d.endpoint.encode(), 10000, ctypes.byref(cc)) == 0
    lib.moe_set_channel.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.moe_set_channel(cc, 0)  # the ZeroMQ path, as above
    weights = np.empty(TOKENS * 8, np.float32)
    ids = np.empty(TOKENS * 8, np.int32)
    xin = np.zeros(TOKENS * 256, np.float32)
    st = lib.moe_route(cc, layer["id"], 0, TOKENS, xin.ctypes.data, xin.nbytes, weights.ctypes.data,
                       ids.ctypes.data, TOKENS * 8, None)
    assert lib.moe_status_name(st) == b"MOE_ERR_BUSY", lib.moe_status_name(st)
    one = np.zeros(256, np.float32)
    st = lib.moe_route(cc, layer["id"], 0, 1, one.ctypes.data, one.nbytes, weights.ctypes.data, ids.ctypes.data, 8, None)
    assert st == 0, "small answers are not held back"
    lib.moe_close(cc)
    hog.close()
    raw.close()
    ctx.term()
