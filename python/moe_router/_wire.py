"""The wire protocol (versions 1 and 2) of Include/moe_router_wire.h, as struct layouts.

Every struct is a list of (C field name, struct format) pairs; nested structs are flattened with
dotted names (``input.kind``) so IntegrationTests/python/test_python_client_wire.py can compare each offset
with the C compiler's ``offsetof``. All formats are little-endian with no implicit padding: the
header's explicit reserved fields make the C layout padding-free.
"""
import struct

MAGIC = 0x52454F4D
VERSION = 2      # MOE_PROTOCOL_VERSION: the newest version (this module's structs)
MIN_VERSION = 1  # MOE_PROTOCOL_MIN_VERSION; HELLO is always sent with this header version
NAME_BYTES = 64
SHM_NAME_BYTES = 256
TAG_BYTES = 32
MAX_MESSAGE_TEXT = 1024

OP_HELLO, OP_LIST_LAYERS, OP_REGISTER_SHM, OP_UNREGISTER_SHM, OP_ROUTE, OP_STATS, OP_PING = range(1, 8)
OP_SET_PLACEMENT, OP_EXPERT_LOAD = 8, 9  # version 2
OP_OPEN_CHANNEL, OP_CLOSE_CHANNEL = 10, 11  # version 2, ipc: a shared-memory ROUTE channel
BUF_INLINE, BUF_SHM, BUF_NONE = 0, 1, 2  # BUF_NONE: version 2, an absent optional buffer

# moe_hello_ext.features
FEATURE_MASK, FEATURE_TOKEN_IDS, FEATURE_PLACEMENT, FEATURE_EXPERT_LOAD = 1, 2, 4, 8
FEATURE_CHANNELS = 16
LOAD_RESET_WINDOW = 1  # moe_load_req.flags


class WireStruct:
    """One C struct of the header: its fields in order, their offsets, and a struct.Struct."""

    def __init__(self, c_name, fields):
        self.c_name = c_name
        self.fields = list(fields)
        self.names = [n for n, _ in self.fields]
        self.struct = struct.Struct("<" + "".join(f for _, f in self.fields))
        self.size = self.struct.size
        self.offsets = {}
        at = 0
        for name, fmt in self.fields:
            self.offsets[name] = at
            at += struct.calcsize("<" + fmt)

    def pack(self, **values):
        """Packs the named fields; every field not given is zero (reserved fields included)."""
        unknown = set(values) - set(self.names)
        if unknown:
            raise KeyError(f"{self.c_name} has no field {sorted(unknown)}")
        return self.struct.pack(*[values.get(n, b"" if f.endswith("s") else 0) for n, f in self.fields])

    def unpack(self, buf, offset=0):
        return dict(zip(self.names, self.struct.unpack_from(buf, offset)))


def _nest(prefix, inner):
    """The fields of struct ``inner`` embedded as member ``prefix`` (dotted names)."""
    return [(f"{prefix}.{n}", f) for n, f in inner.fields]


def _ref(prefix):
    return [(f"{prefix}.kind", "I"), (f"{prefix}.reserved", "I"), (f"{prefix}.handle", "Q"),
            (f"{prefix}.offset", "Q"), (f"{prefix}.length", "Q")]


REQ_HEADER = WireStruct("moe_req_header", [
    ("magic", "I"), ("version", "H"), ("op", "H"), ("request_id", "Q"), ("body_size", "I"),
    ("deadline_ms", "I"), ("reserved", "Q")])
RESP_HEADER = WireStruct("moe_resp_header", [
    ("magic", "I"), ("version", "H"), ("op", "H"), ("request_id", "Q"), ("status", "I"),
    ("body_size", "I"), ("message_len", "H"), ("reserved0", "H"), ("reserved1", "I")])
HELLO_REQ = WireStruct("moe_hello_req", [
    ("min_version", "H"), ("max_version", "H"), ("reserved", "I"), ("client_name", f"{NAME_BYTES}s")])
HELLO_RESP = WireStruct("moe_hello_resp", [
    ("protocol_version", "H"), ("min_protocol_version", "H"), ("layer_count", "I"),
    ("daemon_version", f"{TAG_BYTES}s"), ("backend", f"{TAG_BYTES}s"), ("max_message_bytes", "Q"),
    ("max_tokens", "Q"), ("max_registrations", "I"), ("default_deadline_ms", "I"), ("workers", "I"),
    ("queue_depth", "I"), ("shm_allowed", "I"), ("max_experts", "I"), ("max_top_k", "I"),
    ("reserved", "I")])
LIST_RESP = WireStruct("moe_list_resp", [("count", "I"), ("reserved", "I")])
LAYER_INFO = WireStruct("moe_layer_info", [
    ("layer_id", "I"), ("method", "B"), ("scoring", "B"), ("gate_dtype", "B"), ("nonfinite", "B"),
    ("num_experts", "I"), ("top_k", "I"), ("num_expert_group", "I"), ("topk_group", "I"),
    ("renormalize", "B"), ("has_bias", "B"), ("reserved", "H"), ("routed_scaling_factor", "f"),
    ("bias_offset", "I"), ("reserved2", "I"), ("name", f"{NAME_BYTES}s")])
REGISTER_REQ = WireStruct("moe_register_req", [("name", f"{SHM_NAME_BYTES}s"), ("size", "Q")])
REGISTER_RESP = WireStruct("moe_register_resp", [("handle", "Q"), ("size", "Q")])
UNREGISTER_REQ = WireStruct("moe_unregister_req", [("handle", "Q")])
UNREGISTER_RESP = WireStruct("moe_unregister_resp", [("deferred", "I"), ("reserved", "I")])
BUFFER_REF = WireStruct("moe_buffer_ref", [
    ("kind", "I"), ("reserved", "I"), ("handle", "Q"), ("offset", "Q"), ("length", "Q")])
ROUTE_REQ = WireStruct("moe_route_req", [
    ("layer_id", "I"), ("dtype", "B"), ("reserved0", "3s"), ("tokens", "Q"),
    *_ref("input"), *_ref("weights"), *_ref("ids")])
ROUTE_RESP = WireStruct("moe_route_resp", [
    ("tokens", "Q"), ("nonfinite_count", "Q"), ("first_nonfinite_token", "Q"), ("fallback_cast", "I"),
    ("top_k", "I"), ("compute_ns", "Q")])
STATS_RESP = WireStruct("moe_stats_resp", [
    ("uptime_ns", "Q"), ("requests", "Q"), ("errors", "Q"), ("routes", "Q"), ("tokens", "Q"),
    ("shm_routes", "Q"), ("busy_rejections", "Q"), ("deadline_misses", "Q"), ("nonfinite_inputs", "Q"),
    ("fallback_casts", "Q"), ("registrations", "Q"), ("clients", "Q"), ("mapped_bytes", "Q"),
    ("queued", "Q"), ("clients_released", "Q"), ("compute_ns", "Q"), ("backend", f"{TAG_BYTES}s")])


# ---- version 2 -------------------------------------------------------------------------------
HELLO_EXT = WireStruct("moe_hello_ext", [
    ("max_segment_bytes", "Q"), ("max_mapped_bytes_per_uid", "Q"), ("max_registrations_per_uid", "I"),
    ("heartbeat_ivl_ms", "I"), ("heartbeat_timeout_ms", "I"), ("features", "I"), ("max_queued_reply_bytes", "Q"),
    ("max_queued_reply_bytes_total", "Q"), ("max_physical_experts", "I"), ("control_allowed", "I")])
LAYER_EXT = WireStruct("moe_layer_ext", [
    ("hash_vocab", "Q"), ("placement_epoch", "Q"), ("num_physical", "I"), ("renorm_epsilon", "f"),
    ("reserved", "Q")])
LAYER_INFO_V2 = WireStruct("moe_layer_info_v2", [*_nest("info", LAYER_INFO), *_nest("ext", LAYER_EXT)])
ROUTE_REQ_V2 = WireStruct("moe_route_req_v2", [
    *_nest("base", ROUTE_REQ), *_ref("token_ids"), *_ref("mask"), ("token_id_bytes", "I"), ("reserved", "I"),
    ("reserved2", "Q")])
ROUTE_RESP_V2 = WireStruct("moe_route_resp_v2", [
    *_nest("base", ROUTE_RESP), ("masked_tokens", "Q"), ("placement_epoch", "Q"), ("first_bad_token", "Q"),
    ("hash_routed", "I"), ("reserved", "I")])
PLACEMENT_REQ = WireStruct("moe_placement_req", [
    ("layer_id", "I"), ("num_physical", "I"), ("num_logical", "I"), ("total_replicas", "I")])
PLACEMENT_RESP = WireStruct("moe_placement_resp", [("epoch", "Q"), ("num_physical", "I"), ("total_replicas", "I")])
LOAD_REQ = WireStruct("moe_load_req", [("layer_id", "I"), ("flags", "I")])
LOAD_RESP = WireStruct("moe_load_resp", [
    ("num_experts", "I"), ("window_reset", "I"), ("since_start_ns", "Q"), ("window_ns", "Q"),
    ("total_assignments", "Q"), ("window_assignments", "Q")])
STATS_EXT = WireStruct("moe_stats_ext", [
    ("uid_registrations", "Q"), ("uid_mapped_bytes", "Q"), ("max_registrations_per_uid", "Q"),
    ("max_mapped_bytes_per_uid", "Q"), ("masked_tokens", "Q"), ("hash_routes", "Q"), ("placement_sets", "Q"),
    ("reserved", "Q")])
STATS_RESP_V2 = WireStruct("moe_stats_resp_v2", [*_nest("base", STATS_RESP), *_nest("ext", STATS_EXT)])
# Channels (the C client library runs them; moe_router uses it through moe_router._native).
CHANNEL_MAGIC = 0x4E48434D
CHANNEL_CTRL_BYTES = 4096
CHANNEL_OPEN, CHANNEL_CLOSED = 1, 2
CHANNEL_CTRL = WireStruct("moe_channel_ctrl", [
    ("magic", "I"), ("state", "I"), ("daemon_epoch", "Q"), ("req_seq", "I"), ("daemon_sleeping", "I"),
    ("resp_seq", "I"), ("client_sleeping", "I"), ("request_id", "Q"), ("answer_request_id", "Q"), ("status", "I"),
    ("message_len", "I"), ("compute_path_ns", "Q"), *_nest("request", ROUTE_REQ_V2),
    *_nest("response", ROUTE_RESP_V2), ("message", "256s")])
CHANNEL_OPEN_REQ = WireStruct("moe_channel_open_req", [("handle", "Q"), ("spin_us", "I"), ("reserved", "I")])
CHANNEL_OPEN_RESP = WireStruct("moe_channel_open_resp", [
    ("channel_id", "Q"), ("daemon_epoch", "Q"), ("spin_us", "I"), ("max_channels", "I")])
CHANNEL_CLOSE_REQ = WireStruct("moe_channel_close_req", [("channel_id", "Q")])
# A version-2 HELLO answer's body: moe_hello_resp, then moe_hello_ext (not a C struct).
HELLO_ANSWER_V2 = WireStruct("moe_hello_resp + moe_hello_ext", HELLO_RESP.fields + HELLO_EXT.fields)

ALL_STRUCTS = [REQ_HEADER, RESP_HEADER, HELLO_REQ, HELLO_RESP, LIST_RESP, LAYER_INFO, REGISTER_REQ,
               REGISTER_RESP, UNREGISTER_REQ, UNREGISTER_RESP, BUFFER_REF, ROUTE_REQ, ROUTE_RESP, STATS_RESP,
               HELLO_EXT, LAYER_EXT, LAYER_INFO_V2, ROUTE_REQ_V2, ROUTE_RESP_V2, PLACEMENT_REQ, PLACEMENT_RESP,
               LOAD_REQ, LOAD_RESP, STATS_EXT, STATS_RESP_V2, CHANNEL_CTRL, CHANNEL_OPEN_REQ, CHANNEL_OPEN_RESP,
               CHANNEL_CLOSE_REQ]

# The ROUTE request is the hot path: packed positionally (field order of ROUTE_REQ).
_ROUTE_PACK = ROUTE_REQ.struct.pack
_ZERO3 = b"\0\0\0"


def route_body(layer_id, dtype, tokens, refs):
    """refs: three (kind, handle, offset, length) tuples: input, weights, ids."""
    (k0, h0, o0, n0), (k1, h1, o1, n1), (k2, h2, o2, n2) = refs
    return _ROUTE_PACK(layer_id, dtype, _ZERO3, tokens, k0, 0, h0, o0, n0, k1, 0, h1, o1, n1, k2, 0, h2, o2, n2)


_ROUTE_V2_PACK = ROUTE_REQ_V2.struct.pack


def route_body_v2(layer_id, dtype, tokens, refs, token_id_bytes):
    """refs: five (kind, handle, offset, length) tuples: input, weights, ids, token_ids, mask
    (kind BUF_NONE with zeros for an absent optional buffer)."""
    (k0, h0, o0, n0), (k1, h1, o1, n1), (k2, h2, o2, n2), (k3, h3, o3, n3), (k4, h4, o4, n4) = refs
    return _ROUTE_V2_PACK(layer_id, dtype, _ZERO3, tokens, k0, 0, h0, o0, n0, k1, 0, h1, o1, n1, k2, 0, h2, o2, n2,
                          k3, 0, h3, o3, n3, k4, 0, h4, o4, n4, token_id_bytes, 0, 0)


def cstr(raw):
    """A NUL-padded C char array as str."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
