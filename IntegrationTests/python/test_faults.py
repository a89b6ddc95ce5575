"""Fault matrix: a client killed at each phase, stopped and resumed, the daemon killed and
restarted, the daemon short of file descriptors. Each case asserts what the client sees and what
the daemon holds afterwards (registrations, /dev/shm mappings, fds)."""
import ctypes
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zmq

import moe_wire as w
from daemon_helpers import dealer, wait_until
from moe_router import Client, MoERouterError, UnknownHandleError

ROOT = pathlib.Path(__file__).resolve().parents[2]
DS = "deepseek-v3"

# A client in its own process: it does one phase, printing "ready" when the phase has begun.
CLIENT = textwrap.dedent("""
    import sys, time, struct, os
    sys.path.insert(0, {here!r})
    import numpy as np, zmq
    import moe_wire as w
    from daemon_helpers import Segment, dealer, register
    endpoint, phase = sys.argv[1], sys.argv[2]
    ctx = zmq.Context()
    s = dealer(ctx, endpoint)
    layer = w.layers(s)[0]["deepseek-v3"]
    if phase == "mid-send":        # a 61 MB inline request, over and over: killed while sending
        t = 60000
        x = np.zeros(t * 256, np.float32).tobytes()
        body = w.route_body(layer["id"], w.FP32, t, w.buffer_ref(length=len(x)), w.buffer_ref(length=t * 32),
                            w.buffer_ref(length=t * 32))
        print("ready", flush=True)
        while True:
            s.send_multipart([w.frame0(w.OP["ROUTE"], body), x], copy=False)
    if phase == "computing":       # shm in and out, a request the daemon is running when killed
        t = 300000
        seg = Segment(t * 1024 + 2 * t * 32)
        r, h = register(s, seg)
        body = w.route_body(layer["id"], w.FP32, t, w.buffer_ref(w.SHM, h, 0, t * 1024),
                            w.buffer_ref(w.SHM, h, t * 1024, t * 32), w.buffer_ref(w.SHM, h, t * 1056, t * 32))
        s.send_multipart([w.frame0(w.OP["ROUTE"], body)])
        print("ready", flush=True)
        time.sleep(60)
    if phase == "registering":     # REGISTER after REGISTER, killed between two
        segs = []
        print("ready", flush=True)
        while True:
            segs.append(Segment(4096))
            s.send_multipart([w.frame0(w.OP["REGISTER_SHM"], w.register_body(segs[-1].name, 4096))])
            if len(segs) % 8 == 0:
                while s.poll(0):
                    s.recv_multipart()
            if len(segs) >= 60:
                time.sleep(60)
    if phase == "stopped":         # registers, then waits to be stopped and resumed
        seg = Segment(1 << 20)
        r, h = register(s, seg)
        print("ready", h, flush=True)
        sys.stdin.readline()       # the parent resumes us and says go
        refs = [(h, 0, 1024), (h, 65536, 32), (h, 70000, 32)]
        body = w.route_body(layer["id"], w.FP32, 1, *[w.buffer_ref(w.SHM, hh, o, n) for hh, o, n in refs])
        print(w.call(s, [w.frame0(w.OP["ROUTE"], body)], timeout_ms=10000).status_name, flush=True)
        r, h = register(s, seg)
        refs = [(h, 0, 1024), (h, 65536, 32), (h, 70000, 32)]
        body = w.route_body(layer["id"], w.FP32, 1, *[w.buffer_ref(w.SHM, hh, o, n) for hh, o, n in refs])
        print(w.call(s, [w.frame0(w.OP["ROUTE"], body)], timeout_ms=10000).status_name, flush=True)
""").format(here=str(pathlib.Path(__file__).parent))


def spawn(endpoint, phase):
    p = subprocess.Popen([sys.executable, "-c", CLIENT, endpoint, phase], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("ready"), line
    return p, line.split()


def answers_ping(ctx, endpoint, timeout_ms=500):
    """A fresh connection PINGs the daemon (a fresh one, so no stale answer is left queued)."""
    s = dealer(ctx, endpoint)
    try:
        s.send_multipart([w.frame0(w.OP["PING"])])
        return bool(s.poll(timeout_ms)) and w.Reply(s.recv_multipart()).status == 0
    finally:
        s.close()


def holds_nothing(d, probe, base_fds):
    """The daemon answers, holds no registration or shm mapping, and is back to its fds."""
    assert w.call(probe, [w.frame0(w.OP["PING"])]).status == 0, "the daemon stopped answering"
    assert wait_until(lambda: w.stats(probe)["registrations"] == 0, timeout=10), w.stats(probe)
    assert wait_until(lambda: d.shm_maps() == [], timeout=10), d.shm_maps()
    assert wait_until(lambda: d.fd_count() <= base_fds, timeout=10), (d.fd_count(), base_fds)


@pytest.mark.parametrize("phase", ["mid-send", "computing", "registering"])
def test_a_client_killed_at_any_phase_leaves_nothing_behind(start_daemon, phase):
    d = start_daemon("--preset", DS, "--max-registrations", "64", "--backend", "cpu-generic")
    ctx = zmq.Context()
    probe = dealer(ctx, d.endpoint)
    w.layers(probe)
    base = d.stable_fd_count()
    p, _ = spawn(d.endpoint, phase)
    if phase == "computing":
        assert wait_until(lambda: w.stats(probe)["queued"] >= 1, timeout=20, step=0.01), "the request was not running"
    elif phase == "registering":
        assert wait_until(lambda: w.stats(probe)["registrations"] >= 8, timeout=20, step=0.01)
    else:
        time.sleep(0.3)
    p.kill()
    p.wait(10)
    holds_nothing(d, probe, base + 1)  # + the probe's own connection
    probe.close()
    ctx.term()


def test_a_stopped_client_loses_its_registrations_and_sees_why_when_resumed(start_daemon):
    """SIGSTOP: the heartbeat (1 s, 3 s timeout) ends the connection and releases what it held;
    SIGCONT: the client's old handle is UNKNOWN_HANDLE, and registering again works."""
    d = start_daemon("--preset", DS)
    ctx = zmq.Context()
    probe = dealer(ctx, d.endpoint)
    p, _ = spawn(d.endpoint, "stopped")
    assert w.stats(probe)["registrations"] == 1
    os.kill(p.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert wait_until(lambda: w.stats(probe)["registrations"] == 0, timeout=15, step=0.1)
        released_after = time.monotonic() - t0
        assert d.shm_maps() == []
    finally:
        os.kill(p.pid, signal.SIGCONT)
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "UNKNOWN_HANDLE"
    assert p.stdout.readline().strip() == "OK"
    p.kill()
    p.wait(10)
    assert 2.0 < released_after < 12, released_after
    probe.close()
    ctx.term()


def test_daemon_killed_and_restarted_clients_reconnect_on_their_own(routerd_binary, routerd_class, tmp_path):
    """SIGKILL leaves a stale socket file; a new daemon on the same endpoint takes it over. The
    Python and C clients made before keep working (libzmq reconnects): at most one call fails,
    with a typed error; shm handles from before are UNKNOWN_HANDLE and registering again works."""
    args = ["--preset", DS]
    d = routerd_class(routerd_binary, args, tmp_path / "a")
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    c = Client(d.endpoint, timeout_ms=3000)
    want = c.route(DS, x)
    session = c.session(DS, max_tokens=4)
    session.input[:4] = x
    session.route(4)
    lib = ctypes.CDLL(str(ROOT / "build/lib/libmoerouter.so"))
    lib.moe_connect.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    lib.moe_route.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p,
                              ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.moe_close.argtypes = [ctypes.c_void_p]
    cc = ctypes.c_void_p()
    assert lib.moe_connect(d.endpoint.encode(), 3000, ctypes.byref(cc)) == 0
    weights, ids = np.empty(32, np.float32), np.empty(32, np.int32)
    c_route = lambda: lib.moe_route(cc, 0, 0, 4, x.ctypes.data, x.nbytes, weights.ctypes.data,  # noqa: E731
                                    ids.ctypes.data, 32, None)
    assert c_route() == 0
    d.proc.kill()
    d.proc.wait(10)
    assert d.sock_path.exists(), "SIGKILL leaves the socket file"
    log = open(tmp_path / "second.log", "w")
    d2 = subprocess.Popen([str(routerd_binary), *args, "--endpoint", d.endpoint], stdout=log, stderr=subprocess.STDOUT)
    ctx = zmq.Context()
    assert wait_until(lambda: answers_ping(ctx, d.endpoint), timeout=20)
    ctx.term()
    try:
        failures = 0
        for _ in range(3):
            try:
                got = c.route(DS, x)
                break
            except MoERouterError:
                failures += 1
        assert failures <= 1 and np.array_equal(got.ids, want.ids), failures
        with pytest.raises(UnknownHandleError):
            session.route(4)  # its registration died with the old daemon
        s2 = c.session(DS, max_tokens=4)
        s2.input[:4] = x
        assert np.array_equal(s2.route(4).ids, want.ids)
        statuses = [c_route() for _ in range(3)]
        assert statuses[-1] == 0 and statuses.count(0) >= 2, statuses
        assert np.array_equal(ids.reshape(4, 8), want.ids)
    finally:
        lib.moe_close(cc)
        c.close()
        d2.send_signal(signal.SIGTERM)
        assert d2.wait(15) == 0
        log.close()


def test_short_of_file_descriptors_the_daemon_keeps_serving(routerd_binary, routerd_class, tmp_path):
    """Under a 128-fd limit, 150 clients connect at once (libzmq 4.3.5 aborts the process when
    accept() meets EMFILE). The daemon sheds what it cannot take — refused by its ZAP handler past
    75 % of the limit, closed unaccepted when none is left —, keeps answering the client it
    had, and serves new ones once the crowd has gone."""
    d = routerd_class(routerd_binary, ["--preset", DS], tmp_path)
    ctx = zmq.Context()
    first = dealer(ctx, d.endpoint)
    w.layers(first)
    subprocess.run(["prlimit", f"--pid={d.pid}", "--nofile=128:128"], check=True)
    crowd = [dealer(ctx, d.endpoint) for _ in range(150)]
    for s in crowd:
        s.send_multipart([w.frame0(w.OP["PING"])])
    time.sleep(3)
    answered = sum(1 for s in crowd if s.poll(0) and s.recv_multipart())
    assert d.alive(), d.read_log()[-2000:]
    assert answered < 150, "the limit was not reached"
    assert w.call(first, [w.frame0(w.OP["PING"])]).status == 0, "the client it had is still served"
    log = d.read_log()
    assert "new connection(s) so far" in log or "connection(s) closed unaccepted" in log, log[-2000:]
    for s in crowd:
        s.close()
    assert wait_until(lambda: answers_ping(ctx, d.endpoint, 1000), timeout=20)
    assert d.alive()
    first.close()
    ctx.term()
    assert d.stop() == 0
