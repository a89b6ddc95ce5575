"""Malformed and hostile requests against a real moe-routerd: each gets its typed error, the
daemon keeps serving, and afterwards its fds and mappings are back at the baseline."""
import os
import random
import struct

import numpy as np
import pytest
import zmq

import moe_wire as w
from daemon_helpers import Segment, dealer, inline_route, register, shm_route, wait_until

S = w.STATUS
DS = "deepseek-v3"


@pytest.fixture(scope="module")
def env(routerd_binary, routerd_class, tmp_path_factory):
    d = routerd_class(routerd_binary, ["--preset", DS, "--preset", "mixtral-8x7b", "--preset", "qwen3-moe",
                                       "--nonfinite", "reject", "--max-registrations", "4",
                                       "--max-message-bytes", "1048576", "--max-tokens", "100000"],
                      tmp_path_factory.mktemp("hostile"))
    ctx = zmq.Context()
    sock = dealer(ctx, d.endpoint)
    layers, _ = w.layers(sock)
    # Warm up both paths (I/O thread and workers) and shm before taking the baseline.
    for tokens in (1, 300, 1000):
        assert inline_route(sock, layers[DS], tokens).status == 0
    seg = Segment(1 << 20)
    r, h = register(sock, seg)
    assert r.status == 0
    assert shm_route(sock, layers[DS], 100, [(h, 0, 100 * 256 * 4), (h, 1 << 19, 3200), (h, (1 << 19) + 4096, 3200)]).status == 0
    w.call(sock, [w.frame0(w.OP["UNREGISTER_SHM"], struct.pack("<Q", h))])
    seg.close()
    sock.close()
    assert wait_until(lambda: len(d.shm_maps()) == 0)
    baseline = dict(fds=d.stable_fd_count(), **mapping_counts(d))
    yield dict(daemon=d, ctx=ctx, layers=layers, baseline=baseline)
    ctx.term()
    assert d.stop() == 0


def mapping_counts(d):
    """The daemon's mappings: file-backed ones (libraries, shm segments), and anonymous ones.
    glibc may add a malloc arena (two anonymous mappings) when threads contend on a loaded
    machine, which is not a leak: file-backed mappings must match exactly, anonymous ones may
    grow by a few arenas."""
    maps = d.maps()
    anon = sum(1 for m in maps if len(m.split()) < 6 or m.split()[5].startswith("["))
    return dict(file_maps=len(maps) - anon, anon_maps=anon)


def maps_at_baseline(d, base):
    now = mapping_counts(d)
    return now["file_maps"] == base["file_maps"] and now["anon_maps"] <= base["anon_maps"] + 8


@pytest.fixture(autouse=True)
def back_at_baseline(env):
    """After every case (its sockets and segments closed): the daemon still answers, has
    released every registration, and its fd count and mappings equal the warmed-up baseline."""
    yield
    d, base = env["daemon"], env["baseline"]
    probe = dealer(env["ctx"], d.endpoint)
    try:
        assert w.call(probe, [w.frame0(w.OP["PING"])]).status == 0, "the daemon stopped answering"
        # a closed connection's registrations go once the daemon sees the disconnect (monitors
        # are drained every 250 ms)
        assert wait_until(lambda: w.stats(probe)["registrations"] == 0, timeout=5), w.stats(probe)
    finally:
        probe.close()
    assert wait_until(lambda: d.fd_count() == base["fds"] and d.shm_maps() == [] and maps_at_baseline(d, base),
                      timeout=5), (d.fd_count(), mapping_counts(d), d.shm_maps(), base)


@pytest.fixture
def sock(env):
    s = dealer(env["ctx"], env["daemon"].endpoint)
    yield s
    s.close()


def route_hdr(**kw):
    return w.frame0(w.OP["ROUTE"], w.route_body(0, w.FP32, 1, w.buffer_ref(length=1024), w.buffer_ref(length=32),
                                                w.buffer_ref(length=32)), **kw)


ONE_TOKEN = np.zeros(256, np.float32).tobytes()

# Framing: (name, frames, expected status)
FRAMING = [
    ("empty frame", [b""], "MALFORMED"),
    ("truncated header", [w.frame0(w.OP["PING"])[:10]], "MALFORMED"),
    ("bad magic", [w.frame0(w.OP["PING"], magic=0xDEADBEEF)], "BAD_MAGIC"),
    ("future version", [w.frame0(w.OP["PING"], version=3)], "BAD_VERSION"),
    ("version zero", [w.frame0(w.OP["PING"], version=0)], "BAD_VERSION"),
    ("unknown op", [w.frame0(99)], "UNKNOWN_OP"),
    ("op zero", [w.frame0(0)], "UNKNOWN_OP"),
    ("reserved header field", [w.frame0(w.OP["PING"], reserved=5)], "BAD_FIELD"),
    ("body_size larger than frame", [w.header(w.OP["PING"], 64)], "MALFORMED"),
    ("body on a bodiless op", [w.frame0(w.OP["PING"], b"12345678")], "MALFORMED"),
    ("extra frame on ping", [w.frame0(w.OP["PING"]), b"xx"], "MALFORMED"),
    ("truncated route body", [route_hdr()[:60]], "MALFORMED"),
    ("route without input frame", [route_hdr()], "MALFORMED"),
    ("route with two input frames", [route_hdr(), ONE_TOKEN, ONE_TOKEN], "MALFORMED"),
    ("hello bad version range", [w.frame0(w.OP["HELLO"], w.hello_body(3, 4))], "BAD_VERSION"),
    ("hello name without NUL", [w.frame0(w.OP["HELLO"], w.hello_body(name=b"x" * 64))], "BAD_FIELD"),
    ("oversized request", [w.frame0(w.OP["PING"]), b"\0" * ((1 << 20) + 1)], "TOO_LARGE"),
]


@pytest.mark.parametrize("name,frames,expected", FRAMING, ids=[c[0] for c in FRAMING])
def test_framing_errors(sock, name, frames, expected):
    r = w.call(sock, frames)
    assert r.status_name == expected, r
    assert r.message
    assert w.call(sock, [w.frame0(w.OP["PING"])]).status == 0


def route(layer_id=0, dtype=w.FP32, tokens=1, refs=None, reserved0=b"\0\0\0"):
    refs = refs or [w.buffer_ref(length=1024), w.buffer_ref(length=32), w.buffer_ref(length=32)]
    return w.frame0(w.OP["ROUTE"], w.route_body(layer_id, dtype, tokens, *refs, reserved0=reserved0))


# ROUTE field errors with inline buffers (deepseek-v3: E=256, k=8).
ROUTE_FIELDS = [
    ("unknown layer", [route(layer_id=77), ONE_TOKEN], "UNKNOWN_LAYER"),
    ("bad dtype", [route(dtype=7), ONE_TOKEN], "BAD_DTYPE"),
    ("input length mismatch", [route(refs=[w.buffer_ref(length=1020), w.buffer_ref(length=32), w.buffer_ref(length=32)]), ONE_TOKEN[:1020]], "SIZE_MISMATCH"),
    ("input frame shorter than length", [route(), ONE_TOKEN[:512]], "SIZE_MISMATCH"),
    ("dtype disagrees with input size", [route(dtype=w.BF16), ONE_TOKEN], "SIZE_MISMATCH"),
    ("weights length mismatch", [route(refs=[w.buffer_ref(length=1024), w.buffer_ref(length=28), w.buffer_ref(length=32)]), ONE_TOKEN], "SIZE_MISMATCH"),
    ("ids length mismatch", [route(refs=[w.buffer_ref(length=1024), w.buffer_ref(length=32), w.buffer_ref(length=36)]), ONE_TOKEN], "SIZE_MISMATCH"),
    ("too many tokens", [route(tokens=100001), ONE_TOKEN], "TOO_LARGE"),
    ("token count near 2^64", [route(tokens=2**64 - 1), ONE_TOKEN], "TOO_LARGE"),
    ("unknown buffer kind", [route(refs=[w.buffer_ref(kind=5, length=1024), w.buffer_ref(length=32), w.buffer_ref(length=32)])], "BAD_FIELD"),
    ("inline ref with a handle", [route(refs=[w.buffer_ref(length=1024), w.buffer_ref(handle=3, length=32), w.buffer_ref(length=32)]), ONE_TOKEN], "BAD_FIELD"),
    ("buffer ref reserved", [route(refs=[w.buffer_ref(length=1024, reserved=1), w.buffer_ref(length=32), w.buffer_ref(length=32)]), ONE_TOKEN], "BAD_FIELD"),
    ("route reserved bytes", [route(reserved0=b"\0\1\0"), ONE_TOKEN], "BAD_FIELD"),
    ("unregistered handle", [route(refs=[w.buffer_ref(w.SHM, 12345, 0, 1024), w.buffer_ref(length=32), w.buffer_ref(length=32)])], "UNKNOWN_HANDLE"),
    ("unregister unknown handle", [w.frame0(w.OP["UNREGISTER_SHM"], struct.pack("<Q", 999))], "UNKNOWN_HANDLE"),
]


@pytest.mark.parametrize("name,frames,expected", ROUTE_FIELDS, ids=[c[0] for c in ROUTE_FIELDS])
def test_route_field_errors(sock, name, frames, expected):
    r = w.call(sock, frames)
    assert r.status_name == expected, r
    assert len(r.body) == w.ROUTE_RESP.size or r.op != w.OP["ROUTE"]
    assert not r.frames, "an error answer carries no output frames"


def test_nonfinite_input_rejected_naming_the_token(sock, env):
    x = np.zeros(3 * 256, np.float32)
    x[2 * 256 + 17] = np.nan
    x[2 * 256 + 18] = np.inf
    r = inline_route(sock, env["layers"][DS], 3, data=x.tobytes())
    assert r.status_name == "NONFINITE", r
    tokens, count, first, _, _, _ = w.ROUTE_RESP.unpack(r.body)
    assert (count, first) == (2, 2)
    assert "token 2" in r.message


REG = w.OP["REGISTER_SHM"]
SHM_REG = [
    ("name without NUL", lambda seg: w.register_body(b"/" + b"a" * 300, 4096), "SHM_NAME"),
    ("name without slash", lambda seg: w.register_body("noslash", 4096), "SHM_NAME"),
    ("name with inner slash", lambda seg: w.register_body("/a/b", 4096), "SHM_NAME"),
    ("dot-dot name", lambda seg: w.register_body("/..", 4096), "SHM_NAME"),
    ("name not UTF-8", lambda seg: w.register_body(b"/x\xff", 4096), "SHM_NAME"),
    ("name outside the portable set", lambda seg: w.register_body("/a b", 4096), "SHM_NAME"),
    ("missing object", lambda seg: w.register_body("/moe-router-does-not-exist", 4096), "SHM_OPEN"),
    ("wrong size", lambda seg: w.register_body(seg.name, seg.size + 4096), "SHM_SIZE"),
    ("zero size", lambda seg: w.register_body(seg.name, 0), "SHM_SIZE"),
]


@pytest.mark.parametrize("name,body,expected", SHM_REG, ids=[c[0] for c in SHM_REG])
def test_register_errors(sock, name, body, expected):
    seg = Segment(8192)
    try:
        r = w.call(sock, [w.frame0(REG, body(seg))])
        assert r.status_name == expected, r
    finally:
        seg.close()


def test_world_writable_segment_refused(sock):
    seg = Segment(8192, mode=0o666)
    try:
        r, _ = register(sock, seg)
        assert r.status_name == "SHM_PERMISSIONS", r
    finally:
        seg.close()


def test_foreign_owner_segment_refused(sock):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a segment to another uid")
    seg = Segment(8192)
    try:
        os.fchown(seg.fd, 65534, 65534)
        r, _ = register(sock, seg)
        assert r.status_name == "SHM_OWNER", r
    finally:
        seg.close()


def test_registration_limit(sock):
    segs = [Segment(4096) for _ in range(5)]
    try:
        results = [register(sock, s)[0].status_name for s in segs]
        assert results == ["OK"] * 4 + ["LIMIT"]
    finally:
        for s in segs:
            s.close()


@pytest.fixture
def shm(sock):
    seg = Segment(1 << 20)
    r, h = register(sock, seg)
    assert r.status == 0, r
    yield seg, h
    seg.close()


IN, OUT = 4 * 256 * 4, 4 * 8 * 4   # deepseek-v3, 4 tokens, fp32
SHM_ROUTES = [
    ("offset past end", lambda h: [(h, (1 << 20) - 100, IN), (h, 65536, OUT), (h, 70000, OUT)], "OUT_OF_BOUNDS"),
    ("offset plus length overflows", lambda h: [(h, 2**64 - 8, IN), (h, 65536, OUT), (h, 70000, OUT)], "OVERFLOW"),
    ("misaligned input", lambda h: [(h, 2, IN), (h, 65536, OUT), (h, 70000, OUT)], "MISALIGNED"),
    ("misaligned output", lambda h: [(h, 0, IN), (h, 65538, OUT), (h, 70000, OUT)], "MISALIGNED"),
    ("input overlaps weights", lambda h: [(h, 0, IN), (h, IN - 64, OUT), (h, 70000, OUT)], "OVERLAP"),
    ("weights overlap ids", lambda h: [(h, 0, IN), (h, 65536, OUT), (h, 65536 + 64, OUT)], "OVERLAP"),
    ("wrong shm length", lambda h: [(h, 0, IN - 4), (h, 65536, OUT), (h, 70000, OUT)], "SIZE_MISMATCH"),
    ("unknown handle beside a good one", lambda h: [(h, 0, IN), (h + 1000, 65536, OUT), (h, 70000, OUT)], "UNKNOWN_HANDLE"),
]


@pytest.mark.parametrize("name,refs,expected", SHM_ROUTES, ids=[c[0] for c in SHM_ROUTES])
def test_shm_route_errors(sock, env, shm, name, refs, expected):
    seg, h = shm
    seg.mm[65536:65536 + OUT] = b"\xAB" * OUT
    r = shm_route(sock, env["layers"][DS], 4, refs(h))
    assert r.status_name == expected, r
    assert seg.mm[65536:65536 + OUT] == b"\xAB" * OUT, "nothing written on error"


def test_overlap_through_two_registrations_of_one_object(sock, env, shm):
    seg, h1 = shm
    r, h2 = register(sock, seg)
    assert r.status == 0
    r = shm_route(sock, env["layers"][DS], 4, [(h1, 0, IN), (h2, 0, OUT), (h1, 70000, OUT)])
    assert r.status_name == "OVERLAP", r


def test_foreign_handle_is_unknown(env, sock, shm):
    seg, h = shm
    other = dealer(env["ctx"], env["daemon"].endpoint)
    try:
        r = shm_route(other, env["layers"][DS], 4, [(h, 0, IN), (h, 65536, OUT), (h, 70000, OUT)])
        assert r.status_name == "UNKNOWN_HANDLE", r
        r = w.call(other, [w.frame0(w.OP["UNREGISTER_SHM"], struct.pack("<Q", h))])
        assert r.status_name == "UNKNOWN_HANDLE", r
    finally:
        other.close()
    # The owner still uses it.
    assert shm_route(sock, env["layers"][DS], 4, [(h, 0, IN), (h, 65536, OUT), (h, 70000, OUT)]).status == 0


def test_a_reconnect_with_the_same_routing_id_inherits_nothing(env):
    """Probe hole 1: a client that chooses its routing id registers and disconnects; a new
    connection with the same id (same process, same uid: only the connection differs) must not
    use or drop the first one's handle."""
    d, layer = env["daemon"], env["layers"][DS]
    seg = Segment(1 << 20)
    victim = env["ctx"].socket(zmq.DEALER)
    victim.linger = 0
    victim.setsockopt(zmq.ROUTING_ID, b"chosen-id")
    victim.connect(d.endpoint)
    try:
        r, h = register(victim, seg)
        assert r.status == 0, r
        victim.close()
        refs = [(h, 0, IN), (h, 65536, OUT), (h, 70000, OUT)]
        seg.mm[65536:65536 + OUT] = b"\xAB" * OUT
        answered = None
        for _ in range(40):  # the ROUTER refuses the id while it still holds the old pipe
            thief = env["ctx"].socket(zmq.DEALER)
            thief.linger = 0
            thief.setsockopt(zmq.ROUTING_ID, b"chosen-id")
            thief.connect(d.endpoint)
            thief.send_multipart([w.frame0(w.OP["ROUTE"], w.route_body(layer["id"], w.FP32, 4,
                                  *[w.buffer_ref(w.SHM, hh, o, n) for (hh, o, n) in refs]))])
            if thief.poll(250):
                answered = w.Reply(thief.recv_multipart())
                r2 = w.call(thief, [w.frame0(w.OP["UNREGISTER_SHM"], struct.pack("<Q", h))])
                thief.close()
                break
            thief.close()
        assert answered is not None, "the reconnect was never answered"
        assert answered.status_name == "UNKNOWN_HANDLE", answered
        assert r2.status_name == "UNKNOWN_HANDLE", r2
        assert seg.mm[65536:65536 + OUT] == b"\xAB" * OUT, "nothing written into the victim's segment"
    finally:
        seg.close()


def test_handles_are_not_guessable(env):
    s = dealer(env["ctx"], env["daemon"].endpoint)
    segs = [Segment(4096) for _ in range(4)]
    try:
        handles = [register(s, g)[1] for g in segs]
        assert None not in handles and len(set(handles)) == 4
        gaps = [abs(a - b) for i, a in enumerate(handles) for b in handles[i + 1:]]
        assert min(gaps) > 1 << 20, f"handles {handles} lie close together"
    finally:
        for g in segs:
            g.close()
        s.close()


def test_double_unregister(sock, shm):
    _, h = shm
    unreg = [w.frame0(w.OP["UNREGISTER_SHM"], struct.pack("<Q", h))]
    assert w.call(sock, unreg).status == 0
    assert w.call(sock, unreg).status_name == "UNKNOWN_HANDLE"


def test_segment_truncated_after_registration(sock, env, shm):
    seg, h = shm
    os.ftruncate(seg.fd, 4096)
    r = shm_route(sock, env["layers"][DS], 4, [(h, 0, IN), (h, 65536, OUT), (h, 70000, OUT)])
    assert r.status_name == "SHM_TRUNCATED", r
    r = shm_route(sock, env["layers"][DS], 4, [(h, 0, IN), (h, 65536, OUT), (h, 70000, OUT)])
    assert r.status_name == "UNKNOWN_HANDLE", "a truncated registration is dropped"
    assert env["daemon"].alive()


def test_shrink_that_keeps_every_used_byte_is_harmless(sock, env, shm):
    """Only bytes a request uses matter: a segment shrunk below its registered size still serves
    requests whose buffers lie in what is left; one that reaches past the end is SHM_TRUNCATED."""
    seg, h = shm
    os.ftruncate(seg.fd, 65536 + 4096)
    r = shm_route(sock, env["layers"][DS], 4, [(h, 0, IN), (h, 65536, OUT), (h, 65536 + 2048, OUT)])
    assert r.status == 0, r
    r = shm_route(sock, env["layers"][DS], 4, [(h, 0, IN), (h, 65536, OUT), (h, 70000, OUT)])
    assert r.status_name == "SHM_TRUNCATED", r
    assert env["daemon"].alive()


def test_a_non_utf8_name_never_maps_its_lossy_twin(sock):
    """Probe hole 6: "/x\\xff" was decoded lossily and registered the existing "/x\\uFFFD"."""
    twin = "/moe-router-pytest-\ufffd"
    fd = os.open("/dev/shm" + twin, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, 4096)
        r = w.call(sock, [w.frame0(REG, w.register_body(b"/moe-router-pytest-\xff", 4096))])
        assert r.status_name == "SHM_NAME" and "0xff" in r.message, r
        r = w.call(sock, [w.frame0(REG, w.register_body(twin.encode(), 4096))])
        assert r.status_name == "SHM_NAME", "names are the portable set: the lossy twin is refused too"
    finally:
        os.close(fd)
        os.unlink("/dev/shm" + twin)


def test_a_shrink_to_a_size_inside_a_page_is_caught(sock, env, shm):
    """Probe hole 7: 64 KiB registered, truncated to 4196 bytes, outputs at 4200: the page is
    still mapped, so only the object's current size tells the outputs would be lost."""
    seg, h = shm
    os.ftruncate(seg.fd, 4196)
    r = shm_route(sock, env["layers"][DS], 1, [(h, 0, 1024), (h, 4200, 32), (h, 4232, 32)])
    assert r.status_name == "SHM_TRUNCATED", r
    assert "4196" in r.message, r


def test_random_bytes(sock):
    rng = random.Random(1234)
    for i in range(200):
        frames = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300))) for _ in range(rng.randrange(1, 4))]
        if i % 3 == 0 and frames[0][:4]:
            frames[0] = struct.pack("<IH", w.MAGIC, 1) + frames[0][6:]
        r = w.call(sock, frames)
        assert r.status != 0 or r.op == w.OP["PING"], r
    assert w.call(sock, [w.frame0(w.OP["PING"])]).status == 0


def test_frame_over_the_hard_limit_drops_only_that_connection(env, sock):
    rogue = dealer(env["ctx"], env["daemon"].endpoint)
    rogue.send_multipart([w.frame0(w.OP["PING"]), b"\0" * ((1 << 20) + (128 << 10))])
    assert not rogue.poll(500), "libzmq drops a connection that exceeds ZMQ_MAXMSGSIZE"
    rogue.close()
    assert w.call(sock, [w.frame0(w.OP["PING"])]).status == 0


def test_req_socket_clients_are_answered(env):
    req = env["ctx"].socket(zmq.REQ)
    req.linger = 0
    req.connect(env["daemon"].endpoint)
    req.send(w.frame0(w.OP["PING"]))
    assert req.poll(5000)
    assert w.Reply(req.recv_multipart()).status == 0
    req.close()


@pytest.mark.parametrize("routing_id", [b"\0w7", b"\0tcp", b"\0w"], ids=["worker-like", "relay-like", "prefix"])
def test_internal_routing_ids_cannot_be_impersonated(env, routing_id):
    """Workers and the tcp relay talk to the I/O thread's ROUTER over inproc with fixed routing ids.
    An ipc client that takes such an id is still an authenticated ipc client: a message shaped like
    a worker's answer (envelope size, envelope, reply) is parsed as its request and refused, and a
    victim connection receives nothing."""
    victim = dealer(env["ctx"], env["daemon"].endpoint)
    victim.setsockopt(zmq.ROUTING_ID, b"victim")
    assert w.call(victim, [w.frame0(w.OP["PING"])]).status == 0  # connected, id known to the daemon
    fake = env["ctx"].socket(zmq.DEALER)
    fake.linger = 0
    fake.setsockopt(zmq.ROUTING_ID, routing_id)
    fake.connect(env["daemon"].endpoint)
    r = w.call(fake, [b"\x01", b"victim", w.frame0(w.OP["PING"])])
    assert r.status_name == "MALFORMED", r
    assert not victim.poll(300), "nothing was forwarded to the victim"
    assert w.call(fake, [w.frame0(w.OP["PING"])]).status == 0, "the impostor is served as an ordinary client"
    fake.close()
    victim.close()


def test_req_socket_large_batch_goes_through_a_worker(env):
    """A REQ client's envelope carries an empty delimiter; a batch above --inline-tokens goes to a
    worker and its answer must come back through the same envelope."""
    req = env["ctx"].socket(zmq.REQ)
    req.linger = 0
    req.connect(env["daemon"].endpoint)
    layer = env["layers"][DS]
    tokens = 700
    logits = np.random.default_rng(3).standard_normal((tokens, 256)).astype(np.float32)
    req.send_multipart([route(layer["id"], w.FP32, tokens, [w.buffer_ref(length=logits.nbytes), w.buffer_ref(length=tokens * 32),
                                                            w.buffer_ref(length=tokens * 32)]), logits.tobytes()])
    assert req.poll(5000)
    r = w.Reply(req.recv_multipart())
    assert r.status == 0, r
    assert len(r.frames) == 2 and len(r.frames[0]) == tokens * 32
    req.close()


def test_zz_daemon_is_back_at_baseline(env, sock):
    """Runs last: after all the cases together (each is also checked on its own, by
    back_at_baseline), fds and mappings equal the warmed-up baseline."""
    d, base = env["daemon"], env["baseline"]
    assert w.call(sock, [w.frame0(w.OP["PING"])]).status == 0
    # Registrations of connections the cases closed are released once the daemon sees the
    # disconnect (its monitors are drained every 250 ms), so give it a moment.
    assert wait_until(lambda: w.stats(sock)["registrations"] == 0, timeout=5), w.stats(sock)
    assert w.stats(sock)["mapped_bytes"] == 0
    sock.close()
    assert wait_until(lambda: d.fd_count() == base["fds"], timeout=5), (d.fd_count(), base)
    assert d.shm_maps() == []
    assert wait_until(lambda: maps_at_baseline(d, base), timeout=5), (mapping_counts(d), base)
    assert d.alive()
