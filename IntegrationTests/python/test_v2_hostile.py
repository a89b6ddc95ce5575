"""Hostile version-2 requests as raw frames (moe_wire.py) against a real moe-routerd: token ids
and masks of the wrong width, length or value, absent buffers that are not all zero, token ids
outside the table, hash layers over version 1, broken SET_PLACEMENT payloads, version-2 ops
under a version-1 header. Each gets its typed error (docs/PROTOCOL.md, "Version 2"), nothing is
written or changed, every ROUTE answer carries a moe_route_resp_v2, and the daemon keeps serving."""
import struct

import numpy as np
import pytest
import zmq

import moe_wire as w
import routing_reference as ref
from daemon_helpers import Segment, dealer, register

S = w.STATUS
V2 = w.V2
HASH = "deepseek-v4-hash"
PLACED_LAYER = "deepseek-v3"
VOCAB = ref.DEEPSEEK_V4_VOCAB


@pytest.fixture(scope="module")
def env(routerd_binary, routerd_class, tmp_path_factory):
    d = routerd_class(routerd_binary, ["--preset", HASH, "--preset", "mixtral-8x7b", "--preset", "deepseek-v3",
                                       "--max-tokens", "100000"], tmp_path_factory.mktemp("v2hostile"))
    ctx = zmq.Context()
    yield dict(daemon=d, ctx=ctx)
    ctx.term()
    assert d.stop() == 0


@pytest.fixture
def sock(env):
    s = dealer(env["ctx"], env["daemon"].endpoint)
    yield s
    # the daemon still answers, on both versions
    assert w.call(s, [w.frame0(w.OP["PING"])]).status == 0
    assert w.call(s, [w.frame0(w.OP["PING"], version=V2)]).status == 0
    s.close()


def layers_v2(sock):
    """{name: dict(id, E, k, epoch, num_physical, hash_vocab)} from a version-2 LIST_LAYERS."""
    r = w.call(sock, [w.frame0(w.OP["LIST_LAYERS"], version=V2)])
    assert r.status == 0 and r.version == V2
    count = struct.unpack_from("<I", r.body)[0]
    out = {}
    for i in range(count):
        d = w.w.LAYER_INFO_V2.unpack(r.body, 8 + i * w.w.LAYER_INFO_V2.size)
        out[w.w.cstr(d["info.name"])] = dict(id=d["info.layer_id"], E=d["info.num_experts"], k=d["info.top_k"],
                                             epoch=d["ext.placement_epoch"], num_physical=d["ext.num_physical"],
                                             hash_vocab=d["ext.hash_vocab"])
    return out


def route_v2(sock, layer, tokens, *, data=None, token_ids=None, token_id_bytes=None, tid_ref=None, mask=None,
             mask_ref=None, frames=None, extra=None, outputs=None, version=V2):
    """A version-2 ROUTE. token_ids / mask: bytes sent inline (refs inline with their length)
    unless tid_ref / mask_ref (packed refs) say otherwise; frames replaces the inline frames."""
    E, k = layer["E"], layer["k"]
    if data is None:
        data = np.random.default_rng(tokens).normal(size=tokens * E).astype(np.float32).tobytes()
    inline = [data]
    if token_ids is not None and tid_ref is None:
        tid_ref = w.buffer_ref(length=len(token_ids))
    if token_ids is not None:
        inline.append(token_ids)
    if mask is not None and mask_ref is None:
        mask_ref = w.buffer_ref(length=len(mask))
    if mask is not None:
        inline.append(mask)
    if token_id_bytes is None:
        token_id_bytes = 0 if tid_ref is None else 4
    out_refs = outputs or (w.buffer_ref(length=tokens * k * 4), w.buffer_ref(length=tokens * k * 4))
    body = w.route_body_v2(layer["id"], w.FP32, tokens, w.buffer_ref(length=tokens * E * 4), *out_refs,
                           token_ids=tid_ref, mask=mask_ref, token_id_bytes=token_id_bytes)
    r = w.call(sock, [w.frame0(w.OP["ROUTE"], body, version=version), *(frames if frames is not None else inline),
                      *(extra or [])])
    if version == V2:
        assert r.version == V2 and len(r.body) == w.ROUTE_RESP_V2.size, r
    return r


def i32(values):
    return np.asarray(values, "<i4").tobytes()


def i64(values):
    return np.asarray(values, "<i8").tobytes()


@pytest.fixture
def L(sock):
    return layers_v2(sock)


# ---- token ids and masks -----------------------------------------------------------------------
def test_a_good_hash_route_as_raw_frames(sock, L):
    r = route_v2(sock, L[HASH], 3, token_ids=i64([0, 1, VOCAB - 1]), token_id_bytes=8,
                 mask=bytes([0, 1, 0]))
    assert r.status == 0, r
    resp = w.route_resp_v2(r)
    assert resp["hash_routed"] == 1 and resp["masked_tokens"] == 1 and resp["tokens"] == 3
    ids = np.frombuffer(r.frames[1], np.int32).reshape(3, 6)
    assert (ids[1] == -1).all()
    np.testing.assert_array_equal(ids[[0, 2]], ref.preset_table(HASH)[[0, VOCAB - 1]])


@pytest.mark.parametrize("width", [0, 1, 2, 3, 5, 16])
def test_token_id_bytes_other_than_4_or_8(sock, L, width):
    ids = bytes(2 * max(width, 1))
    r = route_v2(sock, L[HASH], 2, token_ids=ids, token_id_bytes=width)
    assert r.status == S["BAD_FIELD"], r
    assert "token_id_bytes" in r.message


def test_token_id_bytes_without_token_ids(sock, L):
    r = route_v2(sock, L["mixtral-8x7b"], 2, token_id_bytes=4)
    assert r.status == S["BAD_FIELD"] and "token_id_bytes" in r.message, r


@pytest.mark.parametrize("what", ["ref", "frame"])
def test_token_ids_of_the_wrong_length(sock, L, what):
    if what == "ref":  # the ref's length is not tokens x width
        r = route_v2(sock, L[HASH], 3, token_ids=i32([1, 2]), token_id_bytes=4)
    else:  # the ref is right, the frame is not
        r = route_v2(sock, L[HASH], 3, token_ids=i32([1, 2]), tid_ref=w.buffer_ref(length=12), token_id_bytes=4)
    assert r.status == S["SIZE_MISMATCH"], r
    r = route_v2(sock, L[HASH], 2, token_ids=i64([1, 2]), token_id_bytes=4)  # 16 bytes declared as int32
    assert r.status == S["SIZE_MISMATCH"], r


@pytest.mark.parametrize("what", ["ref", "frame"])
def test_mask_of_the_wrong_length(sock, L, what):
    if what == "ref":
        r = route_v2(sock, L["mixtral-8x7b"], 4, mask=bytes(3))
    else:
        r = route_v2(sock, L["mixtral-8x7b"], 4, mask=bytes(3), mask_ref=w.buffer_ref(length=4))
    assert r.status == S["SIZE_MISMATCH"], r


def test_inline_frames_missing_or_extra(sock, L):
    # token ids declared inline, their frame absent
    r = route_v2(sock, L[HASH], 2, tid_ref=w.buffer_ref(length=8), token_id_bytes=4,
                 frames=[np.zeros(2 * 384, np.float32).tobytes()])
    assert r.status in (S["MALFORMED"], S["SIZE_MISMATCH"]), r
    # one frame too many
    r = route_v2(sock, L["mixtral-8x7b"], 2, mask=bytes(2), extra=[b"\0\0"])
    assert r.status == S["MALFORMED"], r


@pytest.mark.parametrize("bad", [2, 3, 255])
def test_mask_byte_other_than_0_or_1(sock, L, bad):
    mask = bytearray(6)
    mask[1] = 1
    mask[4] = bad
    mask[5] = bad
    r = route_v2(sock, L["mixtral-8x7b"], 6, mask=bytes(mask))
    assert r.status == S["BAD_MASK"], r
    assert w.route_resp_v2(r)["first_bad_token"] == 4
    assert "mask[4]" in r.message and str(bad) in r.message
    assert r.frames == [], "nothing is answered but the error"


def test_bad_mask_and_bad_ids_write_nothing_to_shared_memory(sock, L):
    seg = Segment(1 << 16)
    try:
        r, h = register(sock, seg)
        assert r.status == 0
        seg.mm[:] = b"\xab" * len(seg.mm)
        k = L[HASH]["k"]
        outs = (w.buffer_ref(w.SHM, h, 0, 4 * k * 4), w.buffer_ref(w.SHM, h, 4096, 4 * k * 4))
        r = route_v2(sock, L[HASH], 4, token_ids=i32([1, 2, 3, 4]), mask=bytes([0, 0, 7, 0]), outputs=outs)
        assert r.status == S["BAD_MASK"] and w.route_resp_v2(r)["first_bad_token"] == 2, r
        r = route_v2(sock, L[HASH], 4, token_ids=i32([1, 2, VOCAB, 4]), outputs=outs)
        assert r.status == S["TOKEN_ID"] and w.route_resp_v2(r)["first_bad_token"] == 2, r
        assert bytes(seg.mm[:]) == b"\xab" * len(seg.mm), "an error wrote to the outputs"
    finally:
        seg.close()


@pytest.mark.parametrize("field,value", [("handle", 7), ("offset", 8), ("length", 4), ("reserved", 1)])
@pytest.mark.parametrize("which", ["token_ids", "mask"])
def test_absent_buffer_not_all_zero(sock, L, which, field, value):
    ref_ = w.buffer_ref(w.NONE, **{field: value})
    kw = dict(tid_ref=ref_) if which == "token_ids" else dict(mask_ref=ref_)
    r = route_v2(sock, L["mixtral-8x7b"], 2, **kw)
    assert r.status == S["BAD_FIELD"], r


def test_unknown_buffer_kind_and_reserved_fields(sock, L):
    r = route_v2(sock, L["mixtral-8x7b"], 2, mask_ref=w.buffer_ref(3, length=2), frames=None, mask=bytes(2))
    assert r.status == S["BAD_FIELD"], r
    body = w.route_body_v2(L["mixtral-8x7b"]["id"], w.FP32, 1, w.buffer_ref(length=32), w.buffer_ref(length=8),
                           w.buffer_ref(length=8), reserved2=1)
    r = w.call(sock, [w.frame0(w.OP["ROUTE"], body, version=V2), bytes(32)])
    assert r.status == S["BAD_FIELD"], r
    # input and outputs as MOE_BUF_NONE: they are not optional
    body = w.route_body_v2(L["mixtral-8x7b"]["id"], w.FP32, 1, w.buffer_ref(w.NONE), w.buffer_ref(length=8),
                           w.buffer_ref(length=8))
    r = w.call(sock, [w.frame0(w.OP["ROUTE"], body, version=V2)])
    assert r.status in (S["BAD_FIELD"], S["MALFORMED"], S["SIZE_MISMATCH"]), r


@pytest.mark.parametrize("width", [4, 8])
def test_token_id_outside_the_table(sock, L, width):
    pack = i32 if width == 4 else i64
    for values, bad in ([[5, VOCAB, 7], 1], [[5, 6, -1], 2], [[-(2 ** 31), 0, 0], 0]):
        r = route_v2(sock, L[HASH], 3, token_ids=pack(values), token_id_bytes=width)
        assert r.status == S["TOKEN_ID"], r
        assert w.route_resp_v2(r)["first_bad_token"] == bad
        assert f"token_ids[{bad}]" in r.message and str(values[bad]) in r.message, r.message
    if width == 8:
        r = route_v2(sock, L[HASH], 1, token_ids=i64([1 << 40]), token_id_bytes=8)
        assert r.status == S["TOKEN_ID"] and str(1 << 40) in r.message, r
    # a padding row's id is never read
    r = route_v2(sock, L[HASH], 3, token_ids=pack([5, VOCAB, 7]), token_id_bytes=width, mask=bytes([0, 1, 0]))
    assert r.status == 0, r


def test_hash_layer_without_token_ids(sock, L):
    r = route_v2(sock, L[HASH], 2)
    assert r.status == S["TOKEN_ID"], r
    # over version 1: the body has no room for them
    E, k = L[HASH]["E"], L[HASH]["k"]
    body = w.route_body(L[HASH]["id"], w.FP32, 2, w.buffer_ref(length=2 * E * 4), w.buffer_ref(length=2 * k * 4),
                        w.buffer_ref(length=2 * k * 4))
    r = w.call(sock, [w.frame0(w.OP["ROUTE"], body), bytes(2 * E * 4)])
    assert r.status == S["TOKEN_ID"] and r.version == 1 and len(r.body) == w.ROUTE_RESP.size, r


def test_shm_token_ids_and_mask_checks(sock, L):
    seg = Segment(1 << 16)
    try:
        r, h = register(sock, seg)
        assert r.status == 0
        E, k = L[HASH]["E"], L[HASH]["k"]
        data = np.zeros(2 * E, np.float32).tobytes()
        seg.mm[0:8] = i32([3, 4])
        seg.mm[100:102] = bytes([0, 1])
        ok = route_v2(sock, L[HASH], 2, data=data, tid_ref=w.buffer_ref(w.SHM, h, 0, 8), token_id_bytes=4,
                      mask_ref=w.buffer_ref(w.SHM, h, 100, 2))
        assert ok.status == 0 and w.route_resp_v2(ok)["masked_tokens"] == 1, ok
        r = route_v2(sock, L[HASH], 2, data=data, tid_ref=w.buffer_ref(w.SHM, h, 2, 8), token_id_bytes=4)
        assert r.status == S["MISALIGNED"], r
        r = route_v2(sock, L[HASH], 2, data=data, tid_ref=w.buffer_ref(w.SHM, h, (1 << 16) - 4, 8), token_id_bytes=4)
        assert r.status == S["OUT_OF_BOUNDS"], r
        r = route_v2(sock, L[HASH], 2, data=data, tid_ref=w.buffer_ref(w.SHM, h + 1, 0, 8), token_id_bytes=4)
        assert r.status == S["UNKNOWN_HANDLE"], r
        r = route_v2(sock, L[HASH], 2, data=data, tid_ref=w.buffer_ref(w.SHM, h, 0, 8), token_id_bytes=4,
                     mask_ref=w.buffer_ref(w.SHM, h, (1 << 64) - 1, 2))
        assert r.status in (S["OVERFLOW"], S["OUT_OF_BOUNDS"]), r
        # an output over the mask: the outputs may not overlap any buffer
        outs = (w.buffer_ref(w.SHM, h, 96, 2 * k * 4), w.buffer_ref(length=2 * k * 4))
        r = route_v2(sock, L[HASH], 2, data=data, tid_ref=w.buffer_ref(w.SHM, h, 0, 8), token_id_bytes=4,
                     mask_ref=w.buffer_ref(w.SHM, h, 100, 2), outputs=outs)
        assert r.status == S["OVERLAP"], r
        # the read-only buffers may overlap each other: a mask over zero logits reads zeros
        seg.mm[4096:4096 + len(data)] = data
        body = w.route_body_v2(L["mixtral-8x7b"]["id"], w.FP32, 2, w.buffer_ref(w.SHM, h, 4096, 64),
                               w.buffer_ref(length=16), w.buffer_ref(length=16),
                               mask=w.buffer_ref(w.SHM, h, 4096, 2))
        r = w.call(sock, [w.frame0(w.OP["ROUTE"], body, version=V2)])
        assert r.status == 0 and w.route_resp_v2(r)["masked_tokens"] == 0, r
    finally:
        seg.close()


def test_version_2_route_body_of_the_wrong_size(sock, L):
    E, k = L["mixtral-8x7b"]["E"], L["mixtral-8x7b"]["k"]
    v1_body = w.route_body(L["mixtral-8x7b"]["id"], w.FP32, 1, w.buffer_ref(length=E * 4), w.buffer_ref(length=k * 4),
                           w.buffer_ref(length=k * 4))
    r = w.call(sock, [w.frame0(w.OP["ROUTE"], v1_body, version=V2), bytes(E * 4)])
    assert r.status == S["MALFORMED"], r


# ---- versions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("lo,hi,answer,size", [(1, 1, 1, 120), (1, 2, 2, 176), (2, 2, 2, 176), (1, 9, 2, 176)])
def test_hello_negotiation(sock, lo, hi, answer, size):
    r = w.call(sock, [w.frame0(w.OP["HELLO"], w.hello_body(lo, hi))])
    assert r.status == 0 and r.version == 1, r
    assert struct.unpack_from("<H", r.body)[0] == answer and len(r.body) == size


def test_hello_without_a_common_version(sock):
    r = w.call(sock, [w.frame0(w.OP["HELLO"], w.hello_body(3, 4))])
    assert r.status == S["BAD_VERSION"], r


@pytest.mark.parametrize("version", [0, 3, 0xFFFF])
def test_unknown_header_versions(sock, version):
    r = w.call(sock, [w.frame0(w.OP["PING"], version=version)])
    assert r.status == S["BAD_VERSION"], r


@pytest.mark.parametrize("op", ["SET_PLACEMENT", "EXPERT_LOAD"])
def test_version_2_ops_under_a_version_1_header(sock, L, op):
    body = (w.PLACEMENT_REQ.pack(layer_id=L[PLACED_LAYER]["id"]) if op == "SET_PLACEMENT"
            else w.LOAD_REQ.pack(layer_id=L[PLACED_LAYER]["id"]))
    r = w.call(sock, [w.frame0(w.OP[op], body, version=1)])
    assert r.status == S["BAD_VERSION"], r  # docs/PROTOCOL.md: BAD_VERSION naming the operation
    assert r.version == 1
    assert op in r.message or op.lower().replace("_", " ") in r.message.lower() or "version 2" in r.message


def test_expert_load_requests(sock, L):
    layer = L[PLACED_LAYER]
    r = w.call(sock, [w.frame0(w.OP["EXPERT_LOAD"], w.LOAD_REQ.pack(layer_id=layer["id"]), version=V2)])
    assert r.status == 0 and len(r.frames) == 1 and len(r.frames[0]) == 16 * layer["E"], r
    assert w.LOAD_RESP.unpack(r.body)["num_experts"] == layer["E"]
    r = w.call(sock, [w.frame0(w.OP["EXPERT_LOAD"], w.LOAD_REQ.pack(layer_id=layer["id"], flags=2), version=V2)])
    assert r.status == S["BAD_FIELD"], r
    r = w.call(sock, [w.frame0(w.OP["EXPERT_LOAD"], w.LOAD_REQ.pack(layer_id=999), version=V2)])
    assert r.status == S["UNKNOWN_LAYER"], r
    r = w.call(sock, [w.frame0(w.OP["EXPERT_LOAD"], b"\0" * 4, version=V2)])
    assert r.status == S["MALFORMED"], r


# ---- SET_PLACEMENT -----------------------------------------------------------------------------

def set_placement(sock, layer_id, counts, ids, num_physical, num_logical=None, total=None, frames=None):
    body = w.PLACEMENT_REQ.pack(layer_id=layer_id, num_physical=num_physical,
                                num_logical=len(counts) if num_logical is None else num_logical,
                                total_replicas=len(ids) if total is None else total)
    payload = [i32(counts) + i32(ids)] if frames is None else frames
    return w.call(sock, [w.frame0(w.OP["SET_PLACEMENT"], body, version=V2), *payload])


def route_ids(sock, layer, x):
    body = w.route_body_v2(layer["id"], w.FP32, x.shape[0], w.buffer_ref(length=x.nbytes),
                           w.buffer_ref(length=x.shape[0] * layer["k"] * 4), w.buffer_ref(length=x.shape[0] * layer["k"] * 4))
    r = w.call(sock, [w.frame0(w.OP["ROUTE"], body, version=V2), x.tobytes()])
    assert r.status == 0, r
    return np.frombuffer(r.frames[1], np.int32).reshape(x.shape[0], layer["k"]), w.route_resp_v2(r)["placement_epoch"]


@pytest.fixture
def placed(sock, L):
    """deepseek-v3 with a reversed placement (epoch known); removed afterwards."""
    layer = L[PLACED_LAYER]
    E = layer["E"]
    r = set_placement(sock, layer["id"], [1] * E, list(range(E))[::-1], E)
    assert r.status == 0, r
    epoch = w.PLACEMENT_RESP.unpack(r.body)["epoch"]
    x = np.random.default_rng(0).standard_normal((9, E)).astype(np.float32)
    ids, got_epoch = route_ids(sock, layer, x)
    assert got_epoch == epoch and (ids >= 0).all()
    yield layer, epoch, x, ids
    r = w.call(sock, [w.frame0(w.OP["SET_PLACEMENT"], w.PLACEMENT_REQ.pack(layer_id=layer["id"]), version=V2)])
    assert r.status == 0, r


def assert_unchanged(sock, placed_state):
    layer, epoch, x, ids = placed_state
    now = layers_v2(sock)[PLACED_LAYER]
    assert now["epoch"] == epoch and now["num_physical"] == layer["E"], now
    again, got_epoch = route_ids(sock, layer, x)
    assert got_epoch == epoch
    np.testing.assert_array_equal(again, ids)


def bad_placements(E):
    ident = list(range(E))
    return {
        "id out of range": ([1] * E, ident[:-1] + [E], E, "BAD_PLACEMENT"),
        "negative id": ([1] * E, ident[:-1] + [-5], E, "BAD_PLACEMENT"),
        "id given twice": ([1] * E, ident[:-1] + [0], E, "BAD_PLACEMENT"),
        "expert unplaced": ([1] * (E - 2) + [0, 2], ident, E, "BAD_PLACEMENT"),
        "negative count": ([1] * (E - 2) + [-1, 3], ident, E, "BAD_PLACEMENT"),
        "too few logical": ([1] * (E - 1), ident[:-1], E, "BAD_PLACEMENT"),
        "too many logical": ([1] * (E + 1), ident + [E], E + 1, "BAD_PLACEMENT"),
        "no physical experts": ([1] * E, ident, 0, "BAD_PLACEMENT"),
        "too many physical": ([1] * E, ident, 65537, "BAD_PLACEMENT"),
    }


@pytest.mark.parametrize("case", list(bad_placements(256)))
def test_bad_placement_keeps_the_old_one(sock, placed, case):
    counts, ids, num_physical, status = bad_placements(256)[case]
    r = set_placement(sock, placed[0]["id"], counts, ids, num_physical)
    assert r.status == S[status], (case, r)
    assert r.message, case
    assert_unchanged(sock, placed)


@pytest.mark.parametrize("case", ["frame short", "frame long", "no frame", "two frames", "total disagrees",
                                  "counts disagree", "body short", "frame for a removal"])
def test_placement_payload_of_the_wrong_shape(sock, placed, case):
    layer = placed[0]
    E = layer["E"]
    counts, ids = [1] * E, list(range(E))
    full = i32(counts) + i32(ids)
    if case == "frame short":
        r = set_placement(sock, layer["id"], counts, ids, E, frames=[full[:-4]])
        allowed = {"SIZE_MISMATCH"}
    elif case == "frame long":
        r = set_placement(sock, layer["id"], counts, ids, E, frames=[full + bytes(4)])
        allowed = {"SIZE_MISMATCH"}
    elif case == "no frame":
        r = set_placement(sock, layer["id"], counts, ids, E, frames=[])
        allowed = {"MALFORMED", "SIZE_MISMATCH"}
    elif case == "two frames":
        r = set_placement(sock, layer["id"], counts, ids, E, frames=[full, b"x"])
        allowed = {"MALFORMED"}
    elif case == "total disagrees":  # total_replicas says 257, the frame holds 256 ids
        r = set_placement(sock, layer["id"], counts, ids, E, total=E + 1)
        allowed = {"SIZE_MISMATCH", "BAD_PLACEMENT"}
    elif case == "counts disagree":  # counts add up to 257, total_replicas and the frame say 256
        r = set_placement(sock, layer["id"], [2] + counts[1:], ids, E)
        allowed = {"SIZE_MISMATCH", "BAD_PLACEMENT"}
    elif case == "body short":
        r = w.call(sock, [w.frame0(w.OP["SET_PLACEMENT"], bytes(12), version=V2), full])
        allowed = {"MALFORMED"}
    else:  # num_logical 0 removes; a payload with it is not a removal
        r = set_placement(sock, layer["id"], counts, ids, E, num_logical=0, total=0)
        allowed = {"MALFORMED", "SIZE_MISMATCH", "BAD_PLACEMENT", "BAD_FIELD"}
    assert r.status in {S[a] for a in allowed}, (case, r)
    assert_unchanged(sock, placed)


def test_set_placement_unknown_layer(sock):
    r = set_placement(sock, 999, [1], [0], 1)
    assert r.status == S["UNKNOWN_LAYER"], r


def test_a_good_placement_as_raw_frames(sock, L):
    layer = L["mixtral-8x7b"]
    r = set_placement(sock, layer["id"], [2, 1, 1, 1, 1, 1, 1, 1], [8, 9, 0, 1, 2, 3, 4, 5, 6], 10)
    assert r.status == 0, r
    resp = w.PLACEMENT_RESP.unpack(r.body)
    assert resp["num_physical"] == 10 and resp["total_replicas"] == 9 and resp["epoch"] >= 1
    x = np.zeros((4, 8), np.float32)
    x[:, 0] = 5  # every token picks logical expert 0 first
    ids, epoch = route_ids(sock, layer, x)
    assert epoch == resp["epoch"] and ids[:, 0].tolist() == [8, 9, 8, 9]
    r = w.call(sock, [w.frame0(w.OP["SET_PLACEMENT"], w.PLACEMENT_REQ.pack(layer_id=layer["id"]), version=V2)])
    assert r.status == 0
    ids, _ = route_ids(sock, layer, x)
    assert (ids[:, 0] == 0).all()
