"""moe-routerd's wire protocol in Python, for tests that craft raw frames. Every table comes from
the Python client's (moe_router._wire, moe_router.Status), which test_python_client_wire.py pins
to Include/moe_router_wire.h: one definition, checked in one place."""
import struct

from moe_router import Status
from moe_router import _wire as w
from moe_router.types import DType

MAGIC = w.MAGIC
VERSION = w.MIN_VERSION  # the raw-frame suites speak version 1 unless they say version=V2
V2 = 2
OP = dict(HELLO=w.OP_HELLO, LIST_LAYERS=w.OP_LIST_LAYERS, REGISTER_SHM=w.OP_REGISTER_SHM,
          UNREGISTER_SHM=w.OP_UNREGISTER_SHM, ROUTE=w.OP_ROUTE, STATS=w.OP_STATS, PING=w.OP_PING,
          SET_PLACEMENT=w.OP_SET_PLACEMENT, EXPERT_LOAD=w.OP_EXPERT_LOAD)
STATUS = {s.name: int(s) for s in Status if s < 100}
STATUS_NAME = {v: k for k, v in STATUS.items()}
FP32, BF16, FP16 = int(DType.FP32), int(DType.BF16), int(DType.FP16)
INLINE, SHM, NONE = w.BUF_INLINE, w.BUF_SHM, w.BUF_NONE

REQ_HEADER = w.REQ_HEADER.struct
RESP_HEADER = w.RESP_HEADER.struct
BUFFER_REF = w.BUFFER_REF.struct
ROUTE_REQ_HEAD = struct.Struct("<IB3sQ")  # moe_route_req up to its three buffer refs
assert ROUTE_REQ_HEAD.size + 3 * BUFFER_REF.size == w.ROUTE_REQ.size
ROUTE_RESP = w.ROUTE_RESP.struct
HELLO_REQ = w.HELLO_REQ.struct
LAYER_INFO = w.LAYER_INFO.struct
REGISTER_REQ = w.REGISTER_REQ.struct
REGISTER_RESP = w.REGISTER_RESP.struct
STATS_RESP = w.STATS_RESP.struct
ROUTE_RESP_V2 = w.ROUTE_RESP_V2
PLACEMENT_REQ = w.PLACEMENT_REQ
PLACEMENT_RESP = w.PLACEMENT_RESP
LOAD_REQ = w.LOAD_REQ
LOAD_RESP = w.LOAD_RESP


def header(op, body_size, request_id=1, magic=MAGIC, version=VERSION, deadline_ms=0, reserved=0):
    return REQ_HEADER.pack(magic, version, op, request_id, body_size, deadline_ms, reserved)


def frame0(op, body=b"", **kw):
    return header(op, len(body), **kw) + body


def buffer_ref(kind=INLINE, handle=0, offset=0, length=0, reserved=0):
    return BUFFER_REF.pack(kind, reserved, handle, offset, length)


def route_body(layer_id, dtype, tokens, inp, weights, ids, reserved0=b"\0\0\0"):
    return ROUTE_REQ_HEAD.pack(layer_id, dtype, reserved0, tokens) + inp + weights + ids


def route_body_v2(layer_id, dtype, tokens, inp, weights, ids, token_ids=None, mask=None, token_id_bytes=0,
                  reserved=0, reserved2=0, reserved0=b"\0\0\0"):
    """moe_route_req_v2 from five packed buffer refs (token_ids / mask None: MOE_BUF_NONE)."""
    none = buffer_ref(NONE)
    return (route_body(layer_id, dtype, tokens, inp, weights, ids, reserved0) + (token_ids or none) + (mask or none)
            + struct.pack("<IIQ", token_id_bytes, reserved, reserved2))


def route_resp_v2(reply):
    """The moe_route_resp_v2 of a version-2 ROUTE answer, with short names (base. dropped)."""
    d = ROUTE_RESP_V2.unpack(reply.body)
    return {n[5:] if n.startswith("base.") else n: v for n, v in d.items()}


def hello_body(min_version=1, max_version=1, name=b"pytest"):
    return HELLO_REQ.pack(min_version, max_version, 0, name)


def register_body(name, size):
    raw = name if isinstance(name, bytes) else name.encode()
    return REGISTER_REQ.pack(raw, size) if len(raw) < 256 else raw[:256] + struct.pack("<Q", size)


class Reply:
    def __init__(self, frames):
        f0 = frames[0]
        (self.magic, self.version, self.op, self.request_id, self.status, body_size,
         message_len, _, _) = RESP_HEADER.unpack_from(f0)
        assert len(f0) == 32 + body_size + message_len, "response frame 0 size disagrees with its header"
        self.body = f0[32:32 + body_size]
        self.message = f0[32 + body_size:].decode()
        self.frames = frames[1:]

    @property
    def status_name(self):
        return STATUS_NAME.get(self.status, str(self.status))

    def __repr__(self):
        return f"Reply({self.status_name}: {self.message})"


def call(sock, frames, timeout_ms=5000):
    """Sends raw frames on a DEALER socket and parses the answer."""
    sock.send_multipart(frames)
    if not sock.poll(timeout_ms):
        raise TimeoutError("no answer from moe-routerd")
    return Reply(sock.recv_multipart())


def layers(sock):
    r = call(sock, [frame0(OP["LIST_LAYERS"])])
    count = struct.unpack_from("<I", r.body)[0]
    out = {}
    for i in range(count):
        f = LAYER_INFO.unpack_from(r.body, 8 + i * 104)
        name = f[15].split(b"\0")[0].decode()
        out[name] = dict(id=f[0], method=f[1], scoring=f[2], gate_dtype=f[3], nonfinite=f[4], E=f[5], k=f[6],
                         G=f[7], Gk=f[8], renormalize=f[9], has_bias=f[10], rsf=f[12], bias_offset=f[13])
    return out, r.frames[0]


def stats(sock):
    r = call(sock, [frame0(OP["STATS"])])
    v = STATS_RESP.unpack(r.body)
    keys = ["uptime_ns", "requests", "errors", "routes", "tokens", "shm_routes", "busy_rejections",
            "deadline_misses", "nonfinite_inputs", "fallback_casts", "registrations", "clients",
            "mapped_bytes", "queued", "clients_released", "compute_ns"]
    d = dict(zip(keys, v[:16]))
    d["backend"] = v[16].split(b"\0")[0].decode()
    return d
