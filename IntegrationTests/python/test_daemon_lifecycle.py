"""moe-routerd as a process: dead clients, overload, graceful shutdown, tcp, config files and the
C/C++ examples built against the C client library."""
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import zmq

import moe_wire as w
from conftest import ROOT
from daemon_helpers import Segment, dealer, inline_route, register, shm_route, wait_until

DS = "deepseek-v3"

KILLED_CLIENT = textwrap.dedent("""
    import sys, zmq, struct, time
    sys.path.insert(0, {here!r})
    import moe_wire as w
    from daemon_helpers import Segment, dealer, register
    ctx = zmq.Context(); s = dealer(ctx, {endpoint!r})
    layers, _ = w.layers(s)
    L = layers["deepseek-v3"]; T = 200000
    seg = Segment(T * 256 * 4 + 2 * T * 8 * 4)
    r, h = register(s, seg)
    assert r.status == 0
    import os; os.unlink(seg.path)  # SIGKILL below must leave nothing in /dev/shm
    body = w.route_body(L["id"], w.FP32, T, w.buffer_ref(w.SHM, h, 0, T * 1024),
                        w.buffer_ref(w.SHM, h, T * 1024, T * 32), w.buffer_ref(w.SHM, h, T * 1056, T * 32))
    s.send_multipart([w.frame0(w.OP["ROUTE"], body)])
    print("sent", flush=True)
    time.sleep(60)
""")


def test_client_killed_mid_request_releases_its_registrations(start_daemon):
    d = start_daemon("--preset", DS, "--max-tokens", "1000000")
    ctx = zmq.Context()
    watcher = dealer(ctx, d.endpoint)
    assert inline_route(watcher, w.layers(watcher)[0][DS], 4000).status == 0  # warm: workers, dispatch threads
    fds = d.stable_fd_count()
    targets = d.fd_targets()
    child = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT.format(here=os.path.dirname(__file__), endpoint=d.endpoint)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "sent"
    assert w.stats(watcher)["registrations"] == 1
    child.send_signal(signal.SIGKILL)  # while its 200k-token ROUTE runs on a worker
    child.wait()
    assert wait_until(lambda: w.stats(watcher)["registrations"] == 0, timeout=5)
    st = w.stats(watcher)
    assert st["mapped_bytes"] == 0 and st["clients_released"] >= 1
    assert wait_until(lambda: d.shm_maps() == [] and d.fd_count() == fds, timeout=5), (d.shm_maps(), d.fd_targets(), targets)
    assert inline_route(watcher, w.layers(watcher)[0][DS], 3).status == 0
    watcher.close()
    ctx.term()
    assert d.stop() == 0


class BigShmJob:
    """A segment of `tokens` zero rows (sparse: nothing is allocated) registered by a client."""

    def __init__(self, sock, layer, tokens):
        self.tokens, self.layer = tokens, layer
        self.seg = Segment(tokens * 1024 + 2 * tokens * 32)
        r, self.handle = register(sock, self.seg)
        assert r.status == 0, r

    def frames(self, **kw):
        T, h = self.tokens, self.handle
        body = w.route_body(self.layer["id"], w.FP32, T, w.buffer_ref(w.SHM, h, 0, T * 1024),
                            w.buffer_ref(w.SHM, h, T * 1024, T * 32), w.buffer_ref(w.SHM, h, T * 1056, T * 32))
        return [w.frame0(w.OP["ROUTE"], body, **kw)]


def test_overload_gets_busy_not_unbounded_queues(start_daemon):
    d = start_daemon("--preset", DS, "--workers", "1", "--queue-depth", "2", "--inline-tokens", "0")
    ctx = zmq.Context()
    socks = [dealer(ctx, d.endpoint) for _ in range(8)]
    layer = w.layers(socks[0])[0][DS]
    jobs = [BigShmJob(s, layer, 100000) for s in socks]
    for s, j in zip(socks, jobs):
        s.send_multipart(j.frames())
    replies = []
    for s in socks:
        assert s.poll(30000)
        replies.append(w.Reply(s.recv_multipart()))
    statuses = [r.status_name for r in replies]
    assert "BUSY" in statuses and "OK" in statuses, statuses
    assert set(statuses) <= {"OK", "BUSY"}
    assert all(len(r.body) == w.ROUTE_RESP.size for r in replies), "the route body, also on BUSY"
    assert w.stats(socks[0])["busy_rejections"] == statuses.count("BUSY")
    for s, j in zip(socks, jobs):
        j.seg.close()
        s.close()
    ctx.term()


def test_deadline_passed_in_queue(start_daemon):
    d = start_daemon("--preset", DS, "--workers", "1", "--inline-tokens", "0")
    ctx = zmq.Context()
    a, b = dealer(ctx, d.endpoint), dealer(ctx, d.endpoint)
    layer = w.layers(a)[0][DS]
    job = BigShmJob(a, layer, 400000)
    a.send_multipart(job.frames())
    r = inline_route(b, layer, 100, deadline_ms=1)  # queued behind the big one
    assert r.status_name == "DEADLINE", r
    assert len(r.body) == w.ROUTE_RESP.size and w.ROUTE_RESP.unpack(r.body)[0] == 100, "the route body, also on DEADLINE"
    assert a.poll(30000) and w.Reply(a.recv_multipart()).status == 0
    job.seg.close()
    a.close()
    b.close()
    ctx.term()


def _until_in_flight(sock, n=1):
    """Waits until the daemon reports `n` requests handed to its workers (STATS queued)."""
    assert wait_until(lambda: w.stats(sock)["queued"] == n, timeout=10, step=0.01)


def _zero_row_ids(sock, layer):
    """The ids the daemon picks for an all-zero row (what every row of a BigShmJob is)."""
    r = inline_route(sock, layer, 1, data=bytes(4 * layer["E"]))
    assert r.status == 0, r
    return list(np.frombuffer(r.frames[1], np.int32))


def _first_ids(job):
    return list(np.frombuffer(job.seg.mm, np.int32, count=job.layer["k"], offset=job.tokens * 1056))


def test_unregister_during_a_request_is_deferred_until_it_ends(start_daemon):
    """UNREGISTER of a segment a running ROUTE uses answers at once with deferred = 1; the ROUTE
    still finishes into the segment, the mapping goes only when it ends, and the handle is dead
    from the UNREGISTER on. (The portable kernel on the one worker thread makes the 200k-token
    ROUTE last ~1 s; the UNREGISTER goes once that thread has been computing for 20 ms, i.e. once
    the ROUTE holds the segment: "queued" alone may be a job not yet started on a loaded machine.)"""
    d = start_daemon("--preset", DS, "--backend", "cpu-generic", "--inline-tokens", "0", "--workers", "1")
    ctx = zmq.Context()
    a, watcher = dealer(ctx, d.endpoint), dealer(ctx, d.endpoint)
    try:
        layer = w.layers(a)[0][DS]
        job = BigShmJob(a, layer, 200000)
        idle = _thread_ticks(d.pid, "moe-worker-0")
        a.send_multipart(job.frames(request_id=7))
        _until_in_flight(watcher)
        assert wait_until(lambda: _thread_ticks(d.pid, "moe-worker-0") >= idle + 2, timeout=10, step=0.005)
        a.send_multipart([w.frame0(w.OP["UNREGISTER_SHM"], struct.pack("<Q", job.handle), request_id=8)])
        assert a.poll(5000)
        unreg = w.Reply(a.recv_multipart())
        assert unreg.op == w.OP["UNREGISTER_SHM"] and unreg.status == 0, unreg
        assert struct.unpack("<II", unreg.body)[0] == 1, "deferred"
        st = w.stats(watcher)
        assert st["registrations"] == 0 and st["queued"] == 1
        assert d.shm_maps(), "still mapped while the ROUTE runs"
        assert a.poll(30000)
        route = w.Reply(a.recv_multipart())
        assert route.op == w.OP["ROUTE"] and route.request_id == 7 and route.status == 0, route
        assert _first_ids(job) == _zero_row_ids(watcher, layer), "outputs were written into the segment"
        assert wait_until(lambda: d.shm_maps() == [] and w.stats(watcher)["mapped_bytes"] == 0, timeout=5)
        again = w.call(a, job.frames())
        assert again.status_name == "UNKNOWN_HANDLE", again
        job.seg.close()
    finally:
        # closed on failure too: a context with open sockets would block the interpreter's exit
        a.close()
        watcher.close()
        ctx.term()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_lets_a_running_request_finish(start_daemon, sig):
    """A ROUTE running on a worker when SIGTERM or SIGINT arrives is answered OK with its
    outputs written; then the daemon unmaps, removes its socket file and exits 0."""
    d = start_daemon("--preset", DS, "--backend", "cpu-generic", "--inline-tokens", "0")
    ctx = zmq.Context()
    a, watcher = dealer(ctx, d.endpoint), dealer(ctx, d.endpoint)
    layer = w.layers(a)[0][DS]
    job = BigShmJob(a, layer, 200000)
    zero_ids = _zero_row_ids(watcher, layer)
    a.send_multipart(job.frames())
    _until_in_flight(watcher)
    d.proc.send_signal(sig)
    assert a.poll(30000)
    r = w.Reply(a.recv_multipart())
    assert r.status_name == "OK", r
    assert _first_ids(job) == zero_ids, "outputs were written into the segment"
    assert d.proc.wait(15) == 0
    assert not d.sock_path.exists()
    assert "stopped" in d.read_log()
    job.seg.close()
    a.close()
    watcher.close()
    ctx.term()


def test_sigterm_finishes_in_flight_and_cleans_up(start_daemon):
    d = start_daemon("--preset", DS, "--inline-tokens", "0")
    assert stat.S_IMODE(os.stat(d.sock_path).st_mode) == 0o660
    ctx = zmq.Context()
    s = dealer(ctx, d.endpoint)
    layer = w.layers(s)[0][DS]
    seg = Segment(1 << 20)
    assert register(s, seg)[0].status == 0
    r = inline_route(s, layer, 5)
    assert r.status == 0
    big = np.ones(60000 * 256, np.float32).tobytes()
    body = w.route_body(layer["id"], w.FP32, 60000, w.buffer_ref(length=len(big)), w.buffer_ref(length=60000 * 32),
                        w.buffer_ref(length=60000 * 32))
    s.send_multipart([w.frame0(w.OP["ROUTE"], body), big])
    threading.Timer(0.005, lambda: d.proc.send_signal(signal.SIGTERM)).start()
    assert s.poll(20000)
    r = w.Reply(s.recv_multipart())
    assert r.status_name in ("OK", "SHUTTING_DOWN"), r
    assert d.proc.wait(15) == 0
    assert not d.sock_path.exists(), "the ipc socket file is removed"
    assert "stopped" in d.read_log()
    seg.close()
    s.close()
    ctx.term()


def test_sigterm_answers_every_pipelined_request(start_daemon):
    """Probe hole 4: 16 large pipelined ROUTEs with inline outputs, SIGTERM while they run:
    every request the daemon received gets its answer (OK, or SHUTTING_DOWN for those it had
    not started), none is dropped with the socket."""
    d = start_daemon("--preset", DS, "--workers", "2", "--inline-tokens", "0", "--queue-depth", "64",
                     "--backend", "cpu-generic")
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.rcvhwm = 1  # a client that reads slowly: answers wait in the daemon's pipe, not in ours
    s.connect(d.endpoint)
    watcher = dealer(ctx, d.endpoint)
    layer = w.layers(watcher)[0][DS]
    tokens = 20000
    x = np.random.default_rng(1).standard_normal(tokens * 256).astype(np.float32).tobytes()
    body = w.route_body(layer["id"], w.FP32, tokens, w.buffer_ref(length=len(x)), w.buffer_ref(length=tokens * 32),
                        w.buffer_ref(length=tokens * 32))
    for _ in range(16):
        s.send_multipart([w.frame0(w.OP["ROUTE"], body), x])
    assert wait_until(lambda: w.stats(watcher)["queued"] >= 2, timeout=20, step=0.005)
    d.proc.send_signal(signal.SIGTERM)
    statuses = []
    while len(statuses) < 16 and s.poll(3000):
        r = w.Reply(s.recv_multipart())
        statuses.append(r.status_name)
        time.sleep(0.05)  # slowly: the daemon is closing meanwhile
    assert len(statuses) == 16, f"only {len(statuses)} of 16 answered: {statuses}"
    assert set(statuses) <= {"OK", "SHUTTING_DOWN"} and "OK" in statuses, statuses
    assert d.proc.wait(15) == 0
    s.close()
    watcher.close()
    ctx.term()


def test_shm_refused_over_tcp(start_daemon):
    d = start_daemon("--preset", DS, "--tcp", "tcp://127.0.0.1:0")
    # Port 0 is not reported back; bind a fixed port instead.
    d.stop()
    port = 20000 + os.getpid() % 20000
    d = start_daemon("--preset", DS, "--tcp", f"tcp://127.0.0.1:{port}")
    ctx = zmq.Context()
    t = dealer(ctx, f"tcp://127.0.0.1:{port}")
    r = w.call(t, [w.frame0(w.OP["HELLO"], w.hello_body())])
    assert r.status == 0
    assert struct.unpack_from("<I", r.body, 104)[0] == 0, "hello says shm_allowed = 0"
    seg = Segment(8192)
    r, _ = register(t, seg)
    assert r.status_name == "SHM_REFUSED", r
    layer = w.layers(t)[0][DS]
    assert shm_route(t, layer, 1, [(1, 0, 1024), (1, 1024, 32), (1, 2048, 32)]).status_name == "SHM_REFUSED"
    assert inline_route(t, layer, 2).status == 0, "inline routing works over tcp"
    # Through the tcp relay to a worker and back: two clients with interleaved large batches
    # each get the answer to their own request.
    u = dealer(ctx, f"tcp://127.0.0.1:{port}")
    a = inline_route(t, layer, 300)
    b = inline_route(u, layer, 500)
    assert a.status == 0 and len(a.frames[0]) == 300 * 32
    assert b.status == 0 and len(b.frames[0]) == 500 * 32
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.connect(f"tcp://127.0.0.1:{port}")
    req.send(w.frame0(w.OP["PING"]))
    assert req.poll(5000), "a REQ client over tcp (envelope with a delimiter) is answered"
    assert w.Reply(req.recv_multipart()).status == 0
    for s in (req, u):
        s.close()
    seg.close()
    t.close()
    ctx.term()


def test_config_file_layers(start_daemon, tmp_path):
    bias = np.linspace(-0.05, 0.05, 16).astype(np.float32)
    (tmp_path / "bias.f32").write_bytes(bias.tobytes())
    cfg = tmp_path / "routerd.yaml"
    cfg.write_text(textwrap.dedent("""
        workers: 2
        layers:
          - preset: kimi-k2
            name: kimi/layer-1
            gate_dtype: fp32
          - name: tiny
            method: biased_grouped_topk
            num_experts: 16
            top_k: 4
            num_expert_group: 4
            topk_group: 2
            scoring: sigmoid
            renormalize: true
            routed_scaling_factor: 2.0
            gate_dtype: fp16
            nonfinite: reject
            bias_file: bias.f32
    """))
    d = start_daemon("--config", str(cfg), "--preset", "mixtral-8x7b")
    ctx = zmq.Context()
    s = dealer(ctx, d.endpoint)
    layers, biases = w.layers(s)
    assert list(layers) == ["kimi/layer-1", "tiny", "mixtral-8x7b"]
    tiny = layers["tiny"]
    assert (tiny["E"], tiny["k"], tiny["G"], tiny["Gk"], tiny["gate_dtype"], tiny["nonfinite"]) == (16, 4, 4, 2, 2, 1)
    stored = np.frombuffer(biases, np.float32)[tiny["bias_offset"]:tiny["bias_offset"] + 16]
    assert np.array_equal(stored, bias.astype(np.float16).astype(np.float32)), "bias stored in the gate dtype"
    assert inline_route(s, tiny, 3).status == 0
    s.close()
    ctx.term()


def test_bad_configuration_is_a_clear_startup_error(routerd_binary, tmp_path):
    for args, needle in [(["--preset", "no-such-model"], "no-such-model"),
                         ([], "no layers"),
                         (["--preset", DS, "--backend", "quantum"], "--backend = 'quantum' is not valid"),
                         (["--preset", DS, "--max-tokens", str(1 << 62)], "max_tokens"),
                         (["--preset", DS, "--workers", "100000000"], "workers = 100000000 is outside"),
                         (["--preset", DS, "--max-message-bytes", str(2**63 - 1)], "max_message_bytes"),
                         (["--preset", DS, "--queue-depth", "0"], "queue_depth = 0"),
                         (["--preset", DS, "--channel-threads", "65"], "channel_threads = 65 is outside"),
                         (["--preset", DS, "--channel-threads=-1"], "channel_threads = -1"),
                         (["--preset", DS, "--max-registrations", "0"], "max_registrations"),
                         (["--preset", DS, "--max-queued-reply-bytes", "1000"], "max_queued_reply_bytes = 1000"),
                         (["--preset", DS, "--max-registrations-per-uid", "5000"], "max_registrations_per_uid = 5000"),
                         (["--preset", DS, "--max-mapped-bytes-per-uid", "0"], "max_mapped_bytes_per_uid = 0"),
                         (["--preset", DS, "--max-queued-reply-bytes-total", str(1 << 41)], "max_queued_reply_bytes_total"),
                         (["--preset", DS, "--deadline-ms", "0"], "deadline_ms"),
                         (["--preset", DS, "--inline-tokens=-1"], "inline_tokens")]:
        p = subprocess.run([str(routerd_binary), *args, "--endpoint", f"ipc://{tmp_path}/x.sock"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode != 0
        assert needle in p.stderr, p.stderr


@pytest.fixture(scope="module")
def examples():
    subprocess.run(["make", "-C", str(ROOT), "clientlib", "examples"], check=True, capture_output=True)
    return ROOT / "build" / "examples"


def test_c_and_cpp_examples(start_daemon, examples):
    d = start_daemon("--preset", DS, "--preset", "qwen3-moe")
    c = subprocess.run([str(examples / "route_c"), d.endpoint, DS, "5"], capture_output=True, text=True, timeout=30)
    assert c.returncode == 0, c.stderr
    assert "inline and shm results identical" in c.stdout
    cpp = subprocess.run([str(examples / "route_cpp"), d.endpoint, "qwen3-moe", "3"], capture_output=True, text=True, timeout=30)
    assert cpp.returncode == 0, cpp.stderr
    assert "qwen3-moe via moe-routerd" in cpp.stdout
    # No Swift runtime in the client's process.
    ldd = subprocess.run(["ldd", str(examples / "route_c")], capture_output=True, text=True).stdout
    assert "libmoerouter.so.1" in ldd and "swift" not in ldd.lower()
    # Default endpoint resolution through $MOE_ROUTER_ENDPOINT.
    env = dict(os.environ, MOE_ROUTER_ENDPOINT=d.endpoint)
    assert subprocess.run([str(examples / "route_c"), "-", DS, "1"], env=env, capture_output=True, timeout=30).returncode == 0


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def test_a_client_that_never_reads_cannot_pin_daemon_memory(start_daemon):
    """Probe hole 3: a client with a receive high-water mark of 1 sends ROUTEs with inline
    outputs (input in shared memory) and reads nothing. Past max_queued_reply_bytes of unread
    answers its ROUTEs get BUSY; the daemon's RSS stays within that bound (100 answers of 3.2 MB
    would otherwise pin 320 MB), and a reader on another connection is served meanwhile."""
    d = start_daemon("--preset", DS, "--max-queued-reply-bytes", str(32 << 20))
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.rcvhwm = 1
    s.connect(d.endpoint)
    other = dealer(ctx, d.endpoint)
    layer = w.layers(other)[0][DS]
    tokens = 50000
    seg = Segment(tokens * 256 * 4)
    seg.mm[:] = np.random.default_rng(3).standard_normal(tokens * 256).astype(np.float32).tobytes()
    r, h = register(s, seg)
    assert r.status == 0, r
    time.sleep(1.5)  # a trimmed heap as the baseline
    base = _rss_kib(d.pid)
    body = w.route_body(layer["id"], w.FP32, tokens, w.buffer_ref(w.SHM, h, 0, tokens * 1024),
                        w.buffer_ref(length=tokens * 32), w.buffer_ref(length=tokens * 32))
    for _ in range(100):
        s.send_multipart([w.frame0(w.OP["ROUTE"], body)])
    answered = lambda st: st["routes"] + st["busy_rejections"]  # noqa: E731
    assert wait_until(lambda: answered(w.stats(other)) >= 100, timeout=60), w.stats(other)
    grown_mib = (_rss_kib(d.pid) - base) / 1024
    assert inline_route(other, layer, 8).status == 0, "another connection is served"
    statuses = []
    while len(statuses) < 100 and s.poll(5000):
        statuses.append(w.Reply(s.recv_multipart()).status_name)
    assert len(statuses) == 100 and set(statuses) == {"OK", "BUSY"}, statuses
    assert 8 <= statuses.count("OK") <= 40, statuses.count("OK")
    assert grown_mib < 96, f"RSS grew {grown_mib:.0f} MiB with answers unread (bound: 32 MiB)"
    busy = w.Reply(s.recv_multipart()) if s.poll(100) else None
    assert busy is None
    seg.close()
    s.close()
    other.close()
    ctx.term()


def test_one_uid_cannot_take_every_registration(start_daemon):
    """Probe hole 2: 65 connections × 64 registrations of one uid filled the daemon's 4096-slot
    table. Per-uid quotas (count and mapped bytes) over all of a uid's connections."""
    d = start_daemon("--preset", DS, "--max-registrations", "4", "--max-registrations-per-uid", "6",
                     "--max-mapped-bytes-per-uid", str(1 << 20))
    ctx = zmq.Context()
    socks = [dealer(ctx, d.endpoint) for _ in range(3)]
    segs = [Segment(4096) for _ in range(8)]
    big = [Segment(512 << 10) for _ in range(2)]
    try:
        got = [register(socks[0], g)[0] for g in segs[:4]] + [register(socks[1], g)[0] for g in segs[4:]]
        assert [r.status_name for r in got] == ["OK"] * 6 + ["LIMIT"] * 2, got
        assert "max_registrations_per_uid = 6" in got[6].message, got[6]
        # Freed by an unregister, usable by any connection of the uid again.
        h = register(socks[0], segs[0])[1]
        assert h is None, "still at the quota"
        stats = w.stats(socks[2])
        assert stats["registrations"] == 6
        for s in socks[:2]:
            s.close()
        assert wait_until(lambda: w.stats(socks[2])["registrations"] == 0, timeout=10)
        # Bytes: 24 KiB + 512 KiB fit in 1 MiB; the second 512 KiB does not.
        assert [register(socks[2], g)[0].status_name for g in segs[:6]] == ["OK"] * 4 + ["LIMIT"] * 2
        more = [dealer(ctx, d.endpoint) for _ in range(2)]
        r1, _ = register(more[0], big[0])
        assert r1.status_name == "OK", r1
        r2, _ = register(more[1], big[1])
        assert r2.status_name == "LIMIT" and "max_mapped_bytes_per_uid" in r2.message, r2
    finally:
        for g in segs + big:
            g.close()
        ctx.destroy(linger=0)


def test_memory_taken_by_a_burst_of_large_requests_is_given_back_when_idle(start_daemon):
    """24 clients at once, 4 MB inline requests: libzmq's buffers grow the heap by tens of MB,
    which glibc keeps more often than not (it returns only a free top of the heap by itself);
    once the I/O thread has been idle for a receive timeout it trims the heap, so RSS returns
    close to where it was. Three bursts, each checked: without the trim at least one keeps it."""
    d = start_daemon("--preset", DS)
    ctx = zmq.Context()
    s = dealer(ctx, d.endpoint)
    layer = w.layers(s)[0][DS]
    assert inline_route(s, layer, 16).status == 0
    time.sleep(1.5)  # past one trim interval: the baseline is a trimmed heap too
    base = _rss_kib(d.pid)
    data = np.random.default_rng(7).normal(size=4096 * 256).astype(np.float32).tobytes()
    for burst in range(3):
        statuses = []

        def client():
            c = dealer(ctx, d.endpoint)
            for _ in range(3):
                statuses.append(inline_route(c, layer, 4096, data=data).status)
            c.close()

        threads = [threading.Thread(target=client) for _ in range(24)]
        peak = base
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, _rss_kib(d.pid))
            time.sleep(0.01)
        peak = max(peak, _rss_kib(d.pid))
        assert statuses == [0] * 72
        assert peak - base > 30_000, (burst, base, peak)  # the burst did grow the heap
        assert wait_until(lambda: _rss_kib(d.pid) < base + (peak - base) / 3, timeout=5), \
            (burst, base, peak, _rss_kib(d.pid))
    assert inline_route(s, layer, 3).status == 0  # and the daemon still serves
    s.close()


@pytest.mark.parametrize("variable", ["XDG_RUNTIME_DIR", "RUNTIME_DIRECTORY"])
def test_preset_alone_serves_on_the_default_endpoint(routerd_binary, tmp_path, variable):
    """`moe-routerd --preset deepseek-v3` and nothing else: the socket goes to
    $RUNTIME_DIRECTORY/routerd.sock (systemd), else $XDG_RUNTIME_DIR/moe-router/routerd.sock
    (the directory made as needed), mode 0660; it answers, and SIGTERM removes it."""
    base = tmp_path / "run"
    base.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR", "MOE_ROUTER_ENDPOINT")}
    env[variable] = str(base)
    sock = base / "routerd.sock" if variable == "RUNTIME_DIRECTORY" else base / "moe-router" / "routerd.sock"
    p = subprocess.Popen([str(routerd_binary), "--preset", DS], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(sock.exists, timeout=30), "no socket at the default endpoint"
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        ctx = zmq.Context()
        s = dealer(ctx, f"ipc://{sock}")
        assert w.call(s, [w.frame0(w.OP["PING"])]).status == 0
        assert DS in w.layers(s)[0]
        s.close()
        ctx.term()
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
        assert not sock.exists()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _thread_ticks(pid, name):
    """utime + stime (clock ticks) of the daemon thread called `name`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            st = f.read()
        if st[st.index("(") + 1:st.rindex(")")] == name:
            fields = st[st.rindex(")") + 2:].split()
            return int(fields[11]) + int(fields[12])
    raise AssertionError(f"no thread {name}")


def test_two_clients_large_requests_run_in_parallel(start_daemon):
    """Two clients' large ROUTEs are both in flight at once (STATS queued = 2) and both worker
    threads burn CPU during the same window: they run side by side, not one after the other."""
    d = start_daemon("--preset", DS, "--backend", "cpu-generic", "--inline-tokens", "0", "--workers", "2")
    ctx = zmq.Context()
    a, b, watcher = dealer(ctx, d.endpoint), dealer(ctx, d.endpoint), dealer(ctx, d.endpoint)
    layer = w.layers(a)[0][DS]
    jobs = [BigShmJob(a, layer, 200000), BigShmJob(b, layer, 200000)]
    a.send_multipart(jobs[0].frames())
    b.send_multipart(jobs[1].frames())
    _until_in_flight(watcher, 2)
    before = [_thread_ticks(d.pid, f"moe-worker-{i}") for i in (0, 1)]
    time.sleep(0.3)
    during = [_thread_ticks(d.pid, f"moe-worker-{i}") for i in (0, 1)]
    assert w.stats(watcher)["queued"] == 2, "both still running"
    assert all(t1 > t0 for t0, t1 in zip(before, during)), (before, during)
    for s in (a, b):
        assert s.poll(60000) and w.Reply(s.recv_multipart()).status == 0
    for j in jobs:
        j.seg.close()
    for s in (a, b, watcher):
        s.close()
    ctx.term()
