"""Probe hole 9: under a flood from one tcp client, another tcp client's answers must all
arrive (the relay once dropped them when its pipe to the I/O thread was full)."""

import numpy as np
import zmq

import moe_wire as w
from daemon_helpers import dealer, free_port

DS = "deepseek-v3"



def test_a_flooding_tcp_client_costs_another_no_answer(start_daemon):
    port = free_port()
    start_daemon("--preset", DS, "--tcp", f"tcp://127.0.0.1:{port}")
    ctx = zmq.Context()
    ep = f"tcp://127.0.0.1:{port}"
    flood = ctx.socket(zmq.DEALER)
    flood.linger = 0
    flood.sndhwm = 0  # unlimited: the flood is queued as fast as Python can
    flood.connect(ep)
    other = dealer(ctx, ep)
    layer = w.layers(other)[0][DS]
    x = np.random.default_rng(1).standard_normal(256).astype(np.float32).tobytes()
    body = w.route_body(layer["id"], w.FP32, 1, w.buffer_ref(length=1024), w.buffer_ref(length=32), w.buffer_ref(length=32))
    frame0 = w.frame0(w.OP["ROUTE"], body)
    try:
        for round_ in range(3):
            for _ in range(6000):
                flood.send_multipart([frame0, x], copy=False)
            lost = 0
            for i in range(40):
                other.send_multipart([frame0, x])
                if not other.poll(20000):
                    lost += 1
                    continue
                r = w.Reply(other.recv_multipart())
                assert r.status_name in ("OK", "BUSY"), r
            assert lost == 0, f"round {round_}: {lost} of 40 answers never arrived"
            # The flooder reads its answers (all of them: none may be dropped while it reads).
            got = 0
            while flood.poll(5000):
                flood.recv_multipart()
                got += 1
                if got == 6000:
                    break
            assert got == 6000, f"round {round_}: the flooder got {got} of 6000 answers"
    finally:
        flood.close()
        other.close()
        ctx.term()
