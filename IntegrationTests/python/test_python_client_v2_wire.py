"""The Python client's bytes on the wire, versions 1 and 2, against a scripted fake daemon (a
ZeroMQ ROUTER in a thread; no moe-routerd needed): the version-1 path sends exactly the
version-1 frames; version 2 is negotiated, falls back to 1 with an older daemon, and lays out
ROUTE (token ids, masks, inline frame order, shared memory), SET_PLACEMENT and EXPERT_LOAD as
Include/moe_router_wire.h says; answers map to the right results and exceptions."""
import os
import threading
import uuid

import numpy as np
import pytest
import zmq

import moe_router
from moe_router import Client, Status
from moe_router import _wire as w

NAME = b"wire-test"
TIMEOUT = 2000


def layer_entries(version):
    """(body, bias frame): mixtral-like id 0 (E 8, k 2) and a hash layer id 1 (E 16, k 2)."""
    layers = [dict(layer_id=0, method=0, scoring=0, num_experts=8, top_k=2, name=b"mix"),
              dict(layer_id=1, method=4, scoring=2, num_experts=16, top_k=2, name=b"hash")]
    body = w.LIST_RESP.pack(count=len(layers))
    for d in layers:
        info = dict(d, num_expert_group=1, topk_group=1, renormalize=1, routed_scaling_factor=1.0)
        if version == 1:
            body += w.LAYER_INFO.pack(**info)
        else:
            ext = dict(hash_vocab=100 if d["layer_id"] == 1 else 0, placement_epoch=3 if d["layer_id"] == 0 else 0,
                       num_physical=9 if d["layer_id"] == 0 else 0, renorm_epsilon=0.5 if d["layer_id"] == 0 else 0)
            body += w.LAYER_INFO_V2.pack(**{f"info.{k}": v for k, v in info.items()},
                                         **{f"ext.{k}": v for k, v in ext.items()})
    return body, b""


HELLO_V1 = dict(protocol_version=1, min_protocol_version=1, layer_count=2, daemon_version=b"fake", backend=b"cpu",
                max_message_bytes=1 << 20, max_tokens=1000, max_registrations=4, shm_allowed=1)
HELLO_EXT = dict(max_segment_bytes=1 << 34, max_mapped_bytes_per_uid=1 << 40, max_registrations_per_uid=1024,
                 heartbeat_ivl_ms=1000, heartbeat_timeout_ms=3000, features=15, max_queued_reply_bytes=1 << 26,
                 max_queued_reply_bytes_total=1 << 30, max_physical_experts=65536, control_allowed=1)


class FakeDaemon:
    """Answers every request with ``handler(op, version, body, frames)`` ->
    (status, body, message, frames); keeps every request it got in ``requests``."""

    def __init__(self, max_version=2):
        self.endpoint = f"inproc://fake-{uuid.uuid4().hex}"
        self.max_version = max_version
        self.requests = []
        self.routes = []  # what ROUTE answers to give, in order (default: zeros)
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind(self.endpoint)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, frame0, *frames = self.sock.recv_multipart()
            magic, version, op, rid, body_size, _, _ = w.REQ_HEADER.struct.unpack_from(frame0)
            body = frame0[w.REQ_HEADER.size:]
            self.requests.append(dict(op=op, version=version, frame0=frame0, body=body, frames=frames))
            status, out, message, extra = self.answer(op, version, body, frames)
            head = w.RESP_HEADER.pack(magic=w.MAGIC, version=version, op=op, request_id=rid, status=status,
                                      body_size=len(out), message_len=len(message))
            self.sock.send_multipart([ident, head + out + message, *extra])

    def answer(self, op, version, body, frames):
        if op == w.OP_HELLO:
            req = w.HELLO_REQ.unpack(body)
            v = min(req["max_version"], self.max_version)
            out = w.HELLO_RESP.pack(**dict(HELLO_V1, protocol_version=v, min_protocol_version=1))
            return 0, out + (w.HELLO_EXT.pack(**HELLO_EXT) if v >= 2 else b""), b"", []
        if op == w.OP_LIST_LAYERS:
            out, bias = layer_entries(version)
            return 0, out, b"", [bias]
        if op == w.OP_REGISTER_SHM:
            return 0, w.REGISTER_RESP.pack(handle=42, size=w.REGISTER_REQ.unpack(body)["size"]), b"", []
        if op == w.OP_UNREGISTER_SHM:
            return 0, w.UNREGISTER_RESP.pack(), b"", []
        if op == w.OP_ROUTE:
            if self.routes:
                return self.routes.pop(0)
            st = w.ROUTE_REQ_V2 if version == 2 else w.ROUTE_REQ
            d = st.unpack(body)
            p = "base." if version == 2 else ""
            outs = [bytes(d[f"{p}{b}.length"]) for b in ("weights", "ids") if d[f"{p}{b}.kind"] == w.BUF_INLINE]
            if version == 2:
                return 0, w.ROUTE_RESP_V2.pack(**{"base.tokens": d["base.tokens"], "masked_tokens": 1,
                                                  "placement_epoch": 3, "hash_routed": 1}), b"", outs
            return 0, w.ROUTE_RESP.pack(tokens=d["tokens"]), b"", outs
        if op == w.OP_SET_PLACEMENT:
            d = w.PLACEMENT_REQ.unpack(body)
            return 0, w.PLACEMENT_RESP.pack(epoch=7, num_physical=d["num_physical"],
                                            total_replicas=d["total_replicas"]), b"", []
        if op == w.OP_EXPERT_LOAD:
            e = 8
            counters = np.concatenate([np.arange(e), np.arange(e) * 2]).astype("<u8").tobytes()
            d = w.LOAD_REQ.unpack(body)
            return 0, w.LOAD_RESP.pack(num_experts=e, window_reset=d["flags"] & 1, since_start_ns=5, window_ns=4,
                                       total_assignments=28, window_assignments=56), b"", [counters]
        if op == w.OP_STATS:
            if version == 2:
                return 0, w.STATS_RESP_V2.pack(**{"base.routes": 3, "base.backend": b"cpu", "ext.hash_routes": 2,
                                                  "ext.placement_sets": 1}), b"", []
            return 0, w.STATS_RESP.pack(routes=3, backend=b"cpu"), b"", []
        return Status.UNKNOWN_OP, b"", b"unknown op", []

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def fake():
    f = FakeDaemon()
    yield f
    f.close()


@pytest.fixture
def fake_v1():
    f = FakeDaemon(max_version=1)
    yield f
    f.close()


def header(version, op, rid, body):
    """Frame 0 as the client must send it: the header, then the body."""
    return w.REQ_HEADER.pack(magic=w.MAGIC, version=version, op=op, request_id=rid, body_size=len(body),
                             deadline_ms=TIMEOUT) + body


# ---- version 1, byte for byte --------------------------------------------------------------------
def test_protocol_1_sends_the_version_1_bytes(fake):
    with Client(fake.endpoint, timeout_ms=TIMEOUT, client_name="wire-test", protocol=1) as c:
        assert c.protocol == 1 and c.info is None and c.server.protocol_version == 1
        x = np.arange(16, dtype=np.float32).reshape(2, 8)
        c.route("mix", x)
        layer = c.layer("mix")
        assert layer.hash_vocab == 0 and layer.renorm_epsilon == 0
        stats = c.stats()
        assert stats.routes == 3 and stats.hash_routes is None
    hello, listing, route = fake.requests[:3]
    want_hello = w.HELLO_REQ.pack(min_version=1, max_version=1, client_name=NAME)
    assert hello["frame0"] == header(1, w.OP_HELLO, 1, want_hello) and hello["frames"] == []
    assert listing["frame0"] == header(1, w.OP_LIST_LAYERS, 2, b"")
    body = w.route_body(0, 0, 2, [(w.BUF_INLINE, 0, 0, 64), (w.BUF_INLINE, 0, 0, 16), (w.BUF_INLINE, 0, 0, 16)])
    assert route["frame0"] == header(1, w.OP_ROUTE, 3, body) and route["frames"] == [x.tobytes()]
    assert all(r["version"] == 1 for r in fake.requests)


def test_protocol_1_session_layout_is_unchanged(fake):
    with Client(fake.endpoint, timeout_ms=TIMEOUT, protocol=1) as c:
        with c.session("mix", 10) as s:
            assert s.token_ids is None and s.mask is None
            s.route(3)
    reg = next(r for r in fake.requests if r["op"] == w.OP_REGISTER_SHM)
    assert w.REGISTER_REQ.unpack(reg["body"])["size"] == 528  # input 320, weights 80 (-> 128), ids 80
    route = next(r for r in fake.requests if r["op"] == w.OP_ROUTE)
    assert route["body"] == w.route_body(0, 0, 3, [(w.BUF_SHM, 42, 0, 96), (w.BUF_SHM, 42, 320, 24),
                                                 (w.BUF_SHM, 42, 448, 24)]) and route["frames"] == []


# ---- negotiation -------------------------------------------------------------------------------
def test_default_negotiates_2_and_hello_travels_as_version_1(fake):
    with Client(fake.endpoint, timeout_ms=TIMEOUT, client_name="wire-test") as c:
        assert c.protocol == 2 and c.server.protocol_version == 2
        assert c.info == moe_router.ServerLimits(**dict(HELLO_EXT, control_allowed=True))
        assert c.info.supports_mask and c.info.supports_expert_load
        layer = c.layer("mix")
        assert (layer.placement_epoch, layer.num_physical, layer.renorm_epsilon) == (3, 9, 0.5)
        assert c.layer("hash").hash_vocab == 100 and c.layer("hash").hash_routed
        stats = c.stats()
        assert stats.hash_routes == 2 and stats.placement_sets == 1 and stats.backend == "cpu"
    hello = fake.requests[0]
    assert hello["version"] == 1
    assert hello["body"] == w.HELLO_REQ.pack(min_version=1, max_version=2, client_name=NAME)
    assert all(r["version"] == 2 for r in fake.requests[1:])


def test_an_older_daemon_gives_version_1(fake_v1):
    with Client(fake_v1.endpoint, timeout_ms=TIMEOUT) as c:
        assert c.protocol == 1 and c.info is None
        c.route("mix", np.zeros((1, 8), np.float32))
        with pytest.raises(moe_router.BadVersionError, match="daemon speaks version 1 only"):
            c.expert_load("mix")
    assert all(r["version"] == 1 for r in fake_v1.requests)
    with pytest.raises(moe_router.BadVersionError):
        Client(fake_v1.endpoint, timeout_ms=TIMEOUT, protocol=2)
    with pytest.raises(moe_router.ClientArgumentError):
        Client(fake_v1.endpoint, protocol=3)


def test_a_short_version_2_hello_is_a_protocol_error():
    f = FakeDaemon()
    f.answer = lambda op, v, body, frames: (0, w.HELLO_RESP.pack(**dict(HELLO_V1, protocol_version=2)), b"", [])
    try:
        with pytest.raises(moe_router.ClientProtocolError):
            Client(f.endpoint, timeout_ms=TIMEOUT)
    finally:
        f.close()


# ---- version-2 ROUTE ------------------------------------------------------------------------------
def last_route(fake):
    r = [q for q in fake.requests if q["op"] == w.OP_ROUTE][-1]
    assert len(r["body"]) == w.ROUTE_REQ_V2.size
    return w.ROUTE_REQ_V2.unpack(r["body"]), r["frames"]


def test_route_v2_without_extras(fake):
    with Client(fake.endpoint, timeout_ms=TIMEOUT) as c:
        x = np.ones((3, 8), np.float32)
        r = c.route("mix", x)
        assert (r.masked_tokens, r.placement_epoch, r.hash_routed) == (1, 3, True)
    d, frames = last_route(fake)
    assert frames == [x.tobytes()]
    for b in ("token_ids", "mask"):
        assert [d[f"{b}.{f}"] for f in ("kind", "reserved", "handle", "offset", "length")] == [w.BUF_NONE, 0, 0, 0, 0]
    assert d["token_id_bytes"] == 0 and d["reserved"] == 0 and d["reserved2"] == 0
    assert d["base.input.length"] == 96 and d["base.weights.length"] == 24 and d["base.tokens"] == 3


@pytest.mark.parametrize("ids,width", [(np.array([1, 2, 3], np.int32), 4), (np.array([1, 2, 3], np.int64), 8),
                                       ([1, 2, 3], 8), (np.array([1, 2, 3], np.uint16), 8),
                                       (np.array([[1], [2], [3]], np.int32), 4)])
def test_route_v2_inline_frames_in_order(fake, ids, width):
    with Client(fake.endpoint, timeout_ms=TIMEOUT) as c:
        x = np.ones((3, 16), np.float32)
        c.route("hash", x, token_ids=ids, mask=[True, False, True])
    d, frames = last_route(fake)
    assert d["token_id_bytes"] == width
    assert (d["token_ids.kind"], d["token_ids.length"]) == (w.BUF_INLINE, 3 * width)
    assert (d["mask.kind"], d["mask.length"]) == (w.BUF_INLINE, 3)
    assert frames == [x.tobytes(), np.asarray(ids).astype(f"<i{width}").reshape(-1).tobytes(), bytes([1, 0, 1])]


def test_route_v2_shared_memory_and_inline_mixed(fake):
    with Client(fake.endpoint, timeout_ms=TIMEOUT) as c:
        with c.session("hash", 8, token_ids="int32", mask=True) as s:
            assert s.token_ids.dtype == np.int32 and s.mask.dtype == np.uint8
            s.route(4, token_ids=[5, 6, 7, 8], mask=[0, 0, 1, 0])
            np.testing.assert_array_equal(s.token_ids[:4], [5, 6, 7, 8])
            d, frames = last_route(fake)
            assert frames == []
            assert (d["token_ids.kind"], d["token_ids.handle"], d["token_ids.length"]) == (w.BUF_SHM, 42, 16)
            assert (d["mask.kind"], d["mask.handle"], d["mask.length"]) == (w.BUF_SHM, 42, 4)
            assert d["token_ids.offset"] % 64 == 0 and d["mask.offset"] > d["token_ids.offset"]
            assert d["base.input.kind"] == w.BUF_SHM and d["base.input.offset"] == 0
            # input in shared memory, token ids inline: one frame, the token ids
            c.route("hash", s.input[:2], token_ids=np.array([9, 9], np.int64))
            d, frames = last_route(fake)
            assert d["base.input.kind"] == w.BUF_SHM and d["token_ids.kind"] == w.BUF_INLINE and d["mask.kind"] == w.BUF_NONE
            assert frames == [np.array([9, 9], "<i8").tobytes()]
        with c.session("mix", 8) as s:  # a scored layer's session has no extras unless asked
            assert s.token_ids is None and s.mask is None
            s.route(2, mask=[1, 0])  # sent inline
            d, frames = last_route(fake)
            assert d["mask.kind"] == w.BUF_INLINE and frames == [bytes([1, 0])]


@pytest.mark.parametrize("bad,error", [(dict(token_ids=[1, 2]), moe_router.SizeMismatchError),
                                       (dict(mask=[0, 1]), moe_router.SizeMismatchError),
                                       (dict(token_ids=[1.5, 2, 3]), moe_router.ClientArgumentError),
                                       (dict(mask=np.array([0.0, 1, 0])), moe_router.ClientArgumentError)])
def test_route_v2_argument_checks(fake, bad, error):
    with Client(fake.endpoint, timeout_ms=TIMEOUT) as c:
        with pytest.raises(error):
            c.route("hash", np.zeros((3, 16), np.float32), **bad)


@pytest.mark.parametrize("status,cls", [(Status.TOKEN_ID, moe_router.TokenIdError),
                                        (Status.BAD_MASK, moe_router.BadMaskError)])
def test_route_v2_errors_name_the_token(fake, status, cls):
    fake.routes.append((int(status), w.ROUTE_RESP_V2.pack(first_bad_token=5), b"token 5 is bad", []))
    with Client(fake.endpoint, timeout_ms=TIMEOUT) as c:
        with pytest.raises(cls) as e:
            c.route("hash", np.zeros((6, 16), np.float32), token_ids=np.arange(6))
    assert e.value.token == 5 and e.value.message == "token 5 is bad" and e.value.status == status


# ---- SET_PLACEMENT and EXPERT_LOAD ------------------------------------------------------------
def test_set_and_clear_placement_payloads(fake):
    with Client(fake.endpoint, timeout_ms=TIMEOUT) as c:
        replicas = [[0, 8], [1], [2], [3], [4], [5], [6], [7]]
        assert c.set_placement("mix", replicas) == 7
        req = [r for r in fake.requests if r["op"] == w.OP_SET_PLACEMENT][-1]
        assert w.PLACEMENT_REQ.unpack(req["body"]) == dict(layer_id=0, num_physical=9, num_logical=8, total_replicas=9)
        assert req["frames"] == [np.array([2, 1, 1, 1, 1, 1, 1, 1, 0, 8, 1, 2, 3, 4, 5, 6, 7], "<i4").tobytes()]
        assert c.set_placement(0, np.arange(8).reshape(8, 1), num_physical=20) == 7
        req = [r for r in fake.requests if r["op"] == w.OP_SET_PLACEMENT][-1]
        assert w.PLACEMENT_REQ.unpack(req["body"])["num_physical"] == 20
        assert c.clear_placement("mix") == 7
        req = [r for r in fake.requests if r["op"] == w.OP_SET_PLACEMENT][-1]
        assert w.PLACEMENT_REQ.unpack(req["body"]) == dict(layer_id=0, num_physical=0, num_logical=0, total_replicas=0)
        assert req["frames"] == []
        with pytest.raises(moe_router.ClientArgumentError):
            c.set_placement("mix", [])
        with pytest.raises(moe_router.ClientArgumentError):
            c.set_placement("mix", [[0.5]] * 8)
        with pytest.raises(moe_router.ClientArgumentError):
            c.set_placement("mix", [[1 << 40]] * 8)


def test_expert_load(fake):
    with Client(fake.endpoint, timeout_ms=TIMEOUT) as c:
        load = c.expert_load("mix")
        assert load.totals.dtype == np.uint64 and load.totals.tolist() == list(range(8))
        assert load.window.tolist() == [2 * i for i in range(8)]
        assert (load.window_reset, load.since_start_ns, load.window_ns) == (False, 5, 4)
        assert (load.total_assignments, load.window_assignments) == (28, 56)
        assert c.expert_load("mix", reset_window=True).window_reset
    flags = [w.LOAD_REQ.unpack(r["body"])["flags"] for r in fake.requests if r["op"] == w.OP_EXPERT_LOAD]
    assert flags == [0, w.LOAD_RESET_WINDOW]


def test_package_exports(fake):
    assert moe_router.PROTOCOL_VERSION == w.VERSION == 2
    for name in ("ServerLimits", "ExpertLoad", "NotPermittedError", "BadPlacementError", "TokenIdError", "BadMaskError"):
        assert name in moe_router.__all__ and hasattr(moe_router, name)
    assert moe_router.Scoring.SQRTSOFTPLUS.label == "sqrtsoftplus" and moe_router.Scoring.NONE.label == "none"
    assert os.environ.get("MOE_ROUTER_ENDPOINT", "") != fake.endpoint
