"""moe-routerd's wire protocol (Include/moe_router.h) in Python, for tests that craft raw frames."""
import struct

MAGIC = 0x52454F4D
VERSION = 1
OP = dict(HELLO=1, LIST_LAYERS=2, REGISTER_SHM=3, UNREGISTER_SHM=4, ROUTE=5, STATS=6, PING=7)
STATUS = dict(
    OK=0, MALFORMED=1, BAD_MAGIC=2, BAD_VERSION=3, UNKNOWN_OP=4, UNKNOWN_LAYER=5, BAD_DTYPE=6,
    SIZE_MISMATCH=7, OUT_OF_BOUNDS=8, OVERFLOW=9, MISALIGNED=10, OVERLAP=11, UNKNOWN_HANDLE=12,
    SHM_REFUSED=13, SHM_OWNER=14, SHM_PERMISSIONS=15, SHM_OPEN=16, SHM_SIZE=17, SHM_TRUNCATED=18,
    SHM_NAME=19, NONFINITE=20, BUSY=21, DEADLINE=22, TOO_LARGE=23, LIMIT=24, SHUTTING_DOWN=25,
    BAD_FIELD=26, INTERNAL=27)
STATUS_NAME = {v: k for k, v in STATUS.items()}
FP32, BF16, FP16 = 0, 1, 2
INLINE, SHM = 0, 1

REQ_HEADER = struct.Struct("<IHHQIIQ")            # 32 bytes
RESP_HEADER = struct.Struct("<IHHQIIHHI")         # 32 bytes
BUFFER_REF = struct.Struct("<IIQQQ")              # 32 bytes
ROUTE_REQ_HEAD = struct.Struct("<IB3sQ")          # 16 bytes, then 3 buffer refs
ROUTE_RESP = struct.Struct("<QQQIIQ")             # 40 bytes
HELLO_REQ = struct.Struct("<HHI64s")              # 72 bytes
LAYER_INFO = struct.Struct("<IBBBBIIIIBBHfII64s")  # 104 bytes
REGISTER_REQ = struct.Struct("<256sQ")            # 264 bytes
REGISTER_RESP = struct.Struct("<QQ")
STATS_RESP = struct.Struct("<16Q32s")             # 160 bytes

assert REQ_HEADER.size == 32 and RESP_HEADER.size == 32 and BUFFER_REF.size == 32
assert ROUTE_RESP.size == 40 and HELLO_REQ.size == 72 and LAYER_INFO.size == 104
assert REGISTER_REQ.size == 264 and STATS_RESP.size == 160


def header(op, body_size, request_id=1, magic=MAGIC, version=VERSION, deadline_ms=0, reserved=0):
    return REQ_HEADER.pack(magic, version, op, request_id, body_size, deadline_ms, reserved)


def frame0(op, body=b"", **kw):
    return header(op, len(body), **kw) + body


def buffer_ref(kind=INLINE, handle=0, offset=0, length=0, reserved=0):
    return BUFFER_REF.pack(kind, reserved, handle, offset, length)


def route_body(layer_id, dtype, tokens, inp, weights, ids, reserved0=b"\0\0\0"):
    return ROUTE_REQ_HEAD.pack(layer_id, dtype, reserved0, tokens) + inp + weights + ids


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
