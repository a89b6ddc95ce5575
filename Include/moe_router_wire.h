/*
 * moe_router_wire.h — moe-routerd's wire protocol (versions 1 and 2): every byte that crosses the
 * socket, as fixed-width, little-endian structs whose sizes and offsets are static-asserted
 * below. The daemon and every client (the C library, the Python client's tables) share these
 * very definitions; docs/PROTOCOL.md is the prose.
 *
 * Message shape (ZeroMQ, client DEALER <-> daemon ROUTER; one request in flight per client):
 *   request:  frame 0 = moe_req_header + op body (header.body_size bytes)
 *             frame 1 = inline ROUTE input (only when the input buffer is MOE_BUF_INLINE)
 *   response: frame 0 = moe_resp_header + op body (body_size) + UTF-8 message (message_len)
 *             frames 1.. = inline ROUTE outputs (weights, then ids; only those MOE_BUF_INLINE),
 *             or LIST_LAYERS' bias values, or EXPERT_LOAD's counters.
 *
 * Versions: every request header names its version (1 or 2) and the op bodies of that request
 * and of its answer are that version's (the answer's header echoes it). Version 2 adds fields at
 * the end of some bodies (the *_v2 structs embed the version-1 struct first) and new ops; a
 * version-1 request is served exactly as before. HELLO is sent with header version 1 so that
 * any daemon reads it; its answer appends moe_hello_ext when the negotiated protocol_version
 * (the highest both sides speak) is 2 or more.
 */
#ifndef MOE_ROUTER_WIRE_H
#define MOE_ROUTER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_PROTOCOL_MAGIC 0x52454F4Du /* bytes "MOER" on the wire */
#define MOE_PROTOCOL_VERSION 2u     /* the newest version; this header's structs */
#define MOE_PROTOCOL_MIN_VERSION 1u /* the oldest version a daemon still serves */
#define MOE_NAME_BYTES 64u        /* layer names, NUL-padded */
#define MOE_SHM_NAME_BYTES 256u   /* POSIX shm names ("/name"), NUL-padded */
#define MOE_TAG_BYTES 32u         /* daemon version, backend name */
#define MOE_MAX_MESSAGE_TEXT 1024u

/* Operation codes (moe_req_header.op; echoed in moe_resp_header.op). */
typedef enum moe_op {
    MOE_OP_HELLO = 1,
    MOE_OP_LIST_LAYERS = 2,
    MOE_OP_REGISTER_SHM = 3,
    MOE_OP_UNREGISTER_SHM = 4,
    MOE_OP_ROUTE = 5,
    MOE_OP_STATS = 6,
    MOE_OP_PING = 7,
    MOE_OP_SET_PLACEMENT = 8, /* version 2 */
    MOE_OP_EXPERT_LOAD = 9,   /* version 2 */
    MOE_OP_OPEN_CHANNEL = 10, /* version 2: a shared-memory request channel (moe_channel_ctrl) */
    MOE_OP_CLOSE_CHANNEL = 11,/* version 2 */
} moe_op;

/* Status codes: every response carries one. 0..99 come from the daemon, 100.. from the client
 * library itself (the request never got a daemon answer). */
typedef enum moe_status {
    MOE_OK = 0,
    MOE_ERR_MALFORMED = 1,        /* frame count or frame size wrong for the op */
    MOE_ERR_BAD_MAGIC = 2,
    MOE_ERR_BAD_VERSION = 3,
    MOE_ERR_UNKNOWN_OP = 4,
    MOE_ERR_UNKNOWN_LAYER = 5,
    MOE_ERR_BAD_DTYPE = 6,
    MOE_ERR_SIZE_MISMATCH = 7,    /* a length is not tokens*E*dtype (input) / tokens*k*4 (outputs) */
    MOE_ERR_OUT_OF_BOUNDS = 8,    /* offset/length past the end of the segment */
    MOE_ERR_OVERFLOW = 9,         /* offset+length or tokens*row overflows 64 bits */
    MOE_ERR_MISALIGNED = 10,      /* offset not a multiple of the element size */
    MOE_ERR_OVERLAP = 11,         /* input and outputs (or the two outputs) overlap */
    MOE_ERR_UNKNOWN_HANDLE = 12,  /* not registered by this client (or already unregistered) */
    MOE_ERR_SHM_REFUSED = 13,     /* shared memory over a non-ipc transport */
    MOE_ERR_SHM_OWNER = 14,       /* segment not owned by the requesting peer's uid */
    MOE_ERR_SHM_PERMISSIONS = 15, /* segment is world-writable, or not a regular shm object */
    MOE_ERR_SHM_OPEN = 16,        /* shm_open/fstat/mmap failed (errno text in the message) */
    MOE_ERR_SHM_SIZE = 17,        /* segment size differs from the registered size */
    MOE_ERR_SHM_TRUNCATED = 18,   /* segment shrank after registration; registration is dead */
    MOE_ERR_SHM_NAME = 19,        /* name is not "/[^/]{1,254}" NUL-terminated */
    MOE_ERR_NONFINITE = 20,       /* layer rejects NaN/Inf input; nothing was written */
    MOE_ERR_BUSY = 21,            /* queue full; retry later */
    MOE_ERR_DEADLINE = 22,        /* the request waited past its deadline; nothing was run */
    MOE_ERR_TOO_LARGE = 23,       /* over max_message_bytes or max_tokens */
    MOE_ERR_LIMIT = 24,           /* too many registrations for this client */
    MOE_ERR_SHUTTING_DOWN = 25,
    MOE_ERR_BAD_FIELD = 26,       /* reserved field not zero, unknown buffer kind, bad flag */
    MOE_ERR_INTERNAL = 27,
    MOE_ERR_NOT_PERMITTED = 28,   /* a control op (SET_PLACEMENT, resetting a load window) from a
                                     peer that is not the daemon's uid, root or a --control-uid */
    MOE_ERR_BAD_PLACEMENT = 29,   /* placement invalid: an expert unplaced, a physical id out of
                                     range or given twice; the layer keeps its placement */
    MOE_ERR_TOKEN_ID = 30,        /* hash-routed layer: token ids missing, or one outside tid2eid */
    MOE_ERR_BAD_MASK = 31,        /* a padding-mask byte other than 0 and 1 */
    MOE_ERR_CLIENT_IO = 100,      /* client library: socket error */
    MOE_ERR_CLIENT_TIMEOUT = 101, /* client library: no answer within the timeout */
    MOE_ERR_CLIENT_PROTOCOL = 102,/* client library: the answer was malformed */
    MOE_ERR_CLIENT_ARG = 103,     /* client library: bad argument (NULL, too small buffer) */
    MOE_ERR_CLIENT_SYS = 104,     /* client library: shm_open/mmap/ftruncate failed */
} moe_status;

/* Element types; equal to MoERouting's DType raw values. */
typedef enum moe_dtype { MOE_DTYPE_FP32 = 0, MOE_DTYPE_BF16 = 1, MOE_DTYPE_FP16 = 2 } moe_dtype;

/* Routing methods; equal to MoERouting's RoutingMethod raw values (shared/ROUTING.md). */
typedef enum moe_method {
    MOE_METHOD_SOFTMAX_TOPK = 0,
    MOE_METHOD_TOPK_SOFTMAX = 1,
    MOE_METHOD_GROUPED_TOPK = 2,
    MOE_METHOD_BIASED_GROUPED_TOPK = 3,
    MOE_METHOD_BIASED_TOPK = 4,
    MOE_METHOD_LLAMA4_TOP1 = 5,
} moe_method;

typedef enum moe_scoring {
    MOE_SCORING_SOFTMAX = 0,
    MOE_SCORING_SIGMOID = 1,
    MOE_SCORING_SQRTSOFTPLUS = 2, /* DeepSeek-V4 */
    MOE_SCORING_NONE = 3,         /* the logits themselves (vLLM TopK) */
} moe_scoring;
typedef enum moe_nonfinite { MOE_NONFINITE_CLAMP = 0, MOE_NONFINITE_REJECT = 1 } moe_nonfinite;

/* Where a ROUTE buffer lives. */
typedef enum moe_buffer_kind {
    MOE_BUF_INLINE = 0,
    MOE_BUF_SHM = 1,
    MOE_BUF_NONE = 2, /* version 2, optional buffers only: absent (handle, offset, length 0) */
} moe_buffer_kind;

/* Feature bits of moe_hello_ext.features. */
enum {
    MOE_FEATURE_MASK = 1u,        /* ROUTE v2 padding masks */
    MOE_FEATURE_TOKEN_IDS = 2u,   /* ROUTE v2 token ids (hash-routed layers) */
    MOE_FEATURE_PLACEMENT = 4u,   /* SET_PLACEMENT */
    MOE_FEATURE_EXPERT_LOAD = 8u, /* EXPERT_LOAD */
    MOE_FEATURE_CHANNELS = 16u,   /* OPEN_CHANNEL / CLOSE_CHANNEL (ipc only) */
};

typedef struct moe_req_header {
    uint32_t magic;       /* MOE_PROTOCOL_MAGIC */
    uint16_t version;     /* MOE_PROTOCOL_VERSION */
    uint16_t op;          /* moe_op */
    uint64_t request_id;  /* echoed in the response */
    uint32_t body_size;   /* op body bytes following this header in frame 0 */
    uint32_t deadline_ms; /* 0: the daemon's default deadline */
    uint64_t reserved;    /* 0 */
} moe_req_header;

typedef struct moe_resp_header {
    uint32_t magic;
    uint16_t version;
    uint16_t op;          /* the request's op (0 when the request's header was unreadable) */
    uint64_t request_id;  /* the request's id (0 when unreadable) */
    uint32_t status;      /* moe_status */
    uint32_t body_size;   /* op body bytes following this header */
    uint16_t message_len; /* UTF-8 message bytes following the body, <= MOE_MAX_MESSAGE_TEXT */
    uint16_t reserved0;
    uint32_t reserved1;
} moe_resp_header;

/* HELLO */
typedef struct moe_hello_req {
    uint16_t min_version; /* the client speaks min_version...max_version */
    uint16_t max_version;
    uint32_t reserved;
    char client_name[MOE_NAME_BYTES];
} moe_hello_req;

typedef struct moe_hello_resp {
    uint16_t protocol_version;
    uint16_t min_protocol_version;
    uint32_t layer_count;
    char daemon_version[MOE_TAG_BYTES];
    char backend[MOE_TAG_BYTES];
    uint64_t max_message_bytes;   /* largest request frame accepted with a typed error beyond */
    uint64_t max_tokens;          /* per ROUTE */
    uint32_t max_registrations;   /* per client */
    uint32_t default_deadline_ms;
    uint32_t workers;
    uint32_t queue_depth;
    uint32_t shm_allowed;         /* 1 when this connection may use shared memory (ipc) */
    uint32_t max_experts;
    uint32_t max_top_k;
    uint32_t reserved;
} moe_hello_resp;

/* Version 2: appended to moe_hello_resp. Limits a client meets without asking. */
typedef struct moe_hello_ext {
    uint64_t max_segment_bytes;            /* largest shm segment REGISTER_SHM accepts */
    uint64_t max_mapped_bytes_per_uid;     /* over all connections of one uid */
    uint32_t max_registrations_per_uid;
    uint32_t heartbeat_ivl_ms;             /* ZeroMQ heartbeats on every connection */
    uint32_t heartbeat_timeout_ms;         /* a silent peer is dropped (and its shm released) */
    uint32_t features;                     /* MOE_FEATURE_* */
    uint64_t max_queued_reply_bytes;       /* unread inline answers per connection */
    uint64_t max_queued_reply_bytes_total; /* ... and over all connections */
    uint32_t max_physical_experts;         /* largest placement */
    uint32_t control_allowed;              /* 1: this connection may run control ops */
} moe_hello_ext;

/* LIST_LAYERS: empty request body. Response body = moe_list_resp + count * moe_layer_info;
 * frame 1 holds the biases as fp32 (each value the exact widening of the stored bias). */
typedef struct moe_list_resp {
    uint32_t count;
    uint32_t reserved;
} moe_list_resp;

typedef struct moe_layer_info {
    uint32_t layer_id;
    uint8_t method;       /* moe_method */
    uint8_t scoring;      /* moe_scoring */
    uint8_t gate_dtype;   /* moe_dtype: the dtype the bias is stored in; other dtypes fall back */
    uint8_t nonfinite;    /* moe_nonfinite */
    uint32_t num_experts;
    uint32_t top_k;
    uint32_t num_expert_group;
    uint32_t topk_group;
    uint8_t renormalize;
    uint8_t has_bias;
    uint16_t reserved;
    float routed_scaling_factor;
    uint32_t bias_offset; /* index of this layer's first value in frame 1 (num_experts values) */
    uint32_t reserved2;
    char name[MOE_NAME_BYTES];
} moe_layer_info;

/* Version 2: LIST_LAYERS entries are moe_layer_info_v2. */
typedef struct moe_layer_ext {
    uint64_t hash_vocab;       /* hash-routed layer: rows of its tid2eid table; 0: scored */
    uint64_t placement_epoch;  /* 0: no placement (ids are logical expert ids) */
    uint32_t num_physical;     /* the placement's physical experts; 0: none */
    float renorm_epsilon;      /* 0, or MiniMax2's epsilon (weights / (sum + eps)) */
    uint64_t reserved;
} moe_layer_ext;

typedef struct moe_layer_info_v2 {
    moe_layer_info info;
    moe_layer_ext ext;
} moe_layer_info_v2;

/* REGISTER_SHM: the daemon opens `name` once, checks owner/mode/size, maps it, and answers a
 * handle valid for this connection only. The client may shm_unlink the name afterwards. */
typedef struct moe_register_req {
    char name[MOE_SHM_NAME_BYTES];
    uint64_t size; /* must equal the object's current size */
} moe_register_req;

typedef struct moe_register_resp {
    uint64_t handle;
    uint64_t size;
} moe_register_resp;

typedef struct moe_unregister_req {
    uint64_t handle;
} moe_unregister_req;

typedef struct moe_unregister_resp {
    uint32_t deferred; /* 1: in use by a running request; released when it ends */
    uint32_t reserved;
} moe_unregister_resp;

/* ROUTE */
typedef struct moe_buffer_ref {
    uint32_t kind;     /* moe_buffer_kind */
    uint32_t reserved;
    uint64_t handle;   /* MOE_BUF_SHM: a registered handle; MOE_BUF_INLINE: 0 */
    uint64_t offset;   /* MOE_BUF_SHM: byte offset in the segment; MOE_BUF_INLINE: 0 */
    uint64_t length;   /* byte length (inline input: must equal frame 1's size) */
} moe_buffer_ref;

typedef struct moe_route_req {
    uint32_t layer_id;
    uint8_t dtype;     /* moe_dtype of the input */
    uint8_t reserved0[3];
    uint64_t tokens;
    moe_buffer_ref input;   /* [tokens, num_experts] in dtype */
    moe_buffer_ref weights; /* [tokens, top_k] fp32 */
    moe_buffer_ref ids;     /* [tokens, top_k] int32 */
} moe_route_req;

/* Version 2 ROUTE: the version-1 fields, then two optional buffers (kind MOE_BUF_NONE when
 * absent). Inline ones follow the input in frames 1.. in this order: input (if inline), token
 * ids (if inline), mask (if inline). */
typedef struct moe_route_req_v2 {
    moe_route_req base;
    moe_buffer_ref token_ids; /* [tokens] int32 or int64 (token_id_bytes); hash-routed layers */
    moe_buffer_ref mask;      /* [tokens] uint8: 1 = padding row (ids -1, weights 0), 0 = token */
    uint32_t token_id_bytes;  /* 4 or 8 with token_ids; 0 without */
    uint32_t reserved;
    uint64_t reserved2;
} moe_route_req_v2;

/* Every ROUTE response carries this body (zero but for the fields its status defines). */
typedef struct moe_route_resp {
    uint64_t tokens;
    uint64_t nonfinite_count;       /* non-finite input values (OK: clamped; NONFINITE: rejected) */
    uint64_t first_nonfinite_token; /* MOE_ERR_NONFINITE: the first offending token */
    uint32_t fallback_cast;         /* 1: input dtype != gate dtype, the bias was converted */
    uint32_t top_k;
    uint64_t compute_ns;            /* time in the backend */
} moe_route_resp;

typedef struct moe_route_resp_v2 {
    moe_route_resp base;
    uint64_t masked_tokens;   /* padding rows in the request */
    uint64_t placement_epoch; /* the placement the ids were mapped with; 0: logical ids */
    uint64_t first_bad_token; /* MOE_ERR_TOKEN_ID / MOE_ERR_BAD_MASK: the offending token */
    uint32_t hash_routed;     /* 1: the experts came from the layer's tid2eid table */
    uint32_t reserved;
} moe_route_resp_v2;

/* SET_PLACEMENT (version 2): frame 1 = int32 replica counts [num_logical], then int32 physical
 * ids [total_replicas] in order (logical expert 0's replicas first). num_logical = 0 (and no
 * frame 1) removes the placement. The swap is atomic: requests already running finish on the
 * old placement. Control op (MOE_ERR_NOT_PERMITTED otherwise). */
typedef struct moe_placement_req {
    uint32_t layer_id;
    uint32_t num_physical;
    uint32_t num_logical;    /* = the layer's num_experts, or 0 to remove */
    uint32_t total_replicas;
} moe_placement_req;

typedef struct moe_placement_resp {
    uint64_t epoch;          /* the epoch this change took (each set or removal takes the next one);
                                answers carry it while this placement is in force, 0 when none */
    uint32_t num_physical;
    uint32_t total_replicas;
} moe_placement_resp;

/* EXPERT_LOAD (version 2): tokens routed to each logical expert of a layer (padding rows not
 * counted), since the daemon built the layer (kept across reloads that keep num_experts) and
 * since the window began. Frame 1 = uint64 totals [num_experts], then uint64 window
 * [num_experts]. MOE_LOAD_RESET_WINDOW (a control op) starts a new window after reading. */
enum { MOE_LOAD_RESET_WINDOW = 1u };

typedef struct moe_load_req {
    uint32_t layer_id;
    uint32_t flags;
} moe_load_req;

typedef struct moe_load_resp {
    uint32_t num_experts;
    uint32_t window_reset;    /* 1: a new window began with this read */
    uint64_t since_start_ns;
    uint64_t window_ns;       /* how long the window read here lasted */
    uint64_t total_assignments;  /* sum of totals */
    uint64_t window_assignments; /* sum of window */
} moe_load_resp;

/* STATS: empty request body. */
typedef struct moe_stats_resp {
    uint64_t uptime_ns;
    uint64_t requests;
    uint64_t errors;
    uint64_t routes;
    uint64_t tokens;
    uint64_t shm_routes;
    uint64_t busy_rejections;
    uint64_t deadline_misses;
    uint64_t nonfinite_inputs;
    uint64_t fallback_casts;
    uint64_t registrations;  /* live, all clients */
    uint64_t clients;        /* clients holding registrations */
    uint64_t mapped_bytes;
    uint64_t queued;         /* requests waiting for or running on a worker */
    uint64_t clients_released; /* clients whose registrations were dropped because they vanished */
    uint64_t compute_ns;
    char backend[MOE_TAG_BYTES];
} moe_stats_resp;

/* ---- Channels (version 2, ipc only): ROUTE through shared memory and a futex doorbell ----
 *
 * The client creates a segment of at least MOE_CHANNEL_CTRL_BYTES + its data area, registers it
 * (REGISTER_SHM: the same ownership checks as any segment), writes ctrl.magic, and sends
 * OPEN_CHANNEL with the handle. The daemon then serves ROUTEs placed in the control page at the
 * segment's start, until CLOSE_CHANNEL, an UNREGISTER of the segment, or the connection closing.
 *
 * One request at a time: the client writes `request` (a moe_route_req_v2: every buffer kind
 * MOE_BUF_SHM in a segment this connection registered — the channel's own data area past the
 * control page included — or MOE_BUF_NONE), then stores req_seq + 1 (release) and, if
 * daemon_sleeping, FUTEX_WAKEs req_seq. The daemon copies the request once, checks the copy
 * exactly as a ROUTE over ZeroMQ (the same request core), routes, writes status, message and
 * response, then stores resp_seq = req_seq (release) and, if client_sleeping, FUTEX_WAKEs
 * resp_seq. Either side spins briefly before it sleeps (FUTEX_WAIT, not private: the words are
 * shared between processes), setting *_sleeping first and checking the word again. A client
 * waiting for an answer also watches `state` and `daemon_epoch`: a closed channel or another
 * daemon (restart) is an error and the client reconnects. The daemon never trusts anything in
 * the page but the copy it took. */
#define MOE_CHANNEL_MAGIC 0x4E48434Du /* "MCHN" */
#define MOE_CHANNEL_CTRL_BYTES 4096u  /* the control page; buffers may start after it */

enum { MOE_CHANNEL_OPEN = 1u, MOE_CHANNEL_CLOSED = 2u };

typedef struct moe_channel_ctrl {
    uint32_t magic;            /* client: MOE_CHANNEL_MAGIC before OPEN_CHANNEL */
    uint32_t state;            /* daemon: MOE_CHANNEL_OPEN, then MOE_CHANNEL_CLOSED */
    uint64_t daemon_epoch;     /* daemon: its random start-up id, written at OPEN_CHANNEL */
    uint32_t req_seq;          /* client: +1 per request; the daemon's futex word */
    uint32_t daemon_sleeping;  /* daemon: 1 while it may sleep on req_seq */
    uint32_t resp_seq;         /* daemon: = req_seq once the answer is complete; the client's futex word */
    uint32_t client_sleeping;  /* client: 1 while it may sleep on resp_seq */
    uint64_t request_id;       /* client: echoed in answer_request_id */
    uint64_t answer_request_id;/* daemon */
    uint32_t status;           /* daemon: moe_status of the answer */
    uint32_t message_len;      /* daemon: bytes of `message` used */
    uint64_t compute_path_ns;  /* daemon: time from seeing req_seq to storing resp_seq */
    moe_route_req_v2 request;  /* client (offset 64) */
    moe_route_resp_v2 response;/* daemon (offset 256) */
    char message[256];         /* daemon (offset 328): UTF-8, not NUL-terminated */
} moe_channel_ctrl;

typedef struct moe_channel_open_req {
    uint64_t handle;           /* a segment this connection registered, >= MOE_CHANNEL_CTRL_BYTES */
    uint32_t spin_us;          /* how long the daemon spins after an answer before it sleeps (0: its default) */
    uint32_t reserved;
} moe_channel_open_req;

typedef struct moe_channel_open_resp {
    uint64_t channel_id;
    uint64_t daemon_epoch;
    uint32_t spin_us;          /* the daemon's spin budget for this channel */
    uint32_t max_channels;     /* per connection */
} moe_channel_open_resp;

typedef struct moe_channel_close_req {
    uint64_t channel_id;
} moe_channel_close_req;

/* Version 2: appended to moe_stats_resp. */
typedef struct moe_stats_ext {
    uint64_t uid_registrations;      /* the asking peer's uid: live registrations, all its connections */
    uint64_t uid_mapped_bytes;       /* ... and their bytes */
    uint64_t max_registrations_per_uid;
    uint64_t max_mapped_bytes_per_uid;
    uint64_t masked_tokens;          /* padding rows routed (not computed) since start */
    uint64_t hash_routes;            /* ROUTEs answered from a tid2eid table */
    uint64_t placement_sets;         /* successful SET_PLACEMENTs */
    uint64_t reserved;
} moe_stats_ext;

typedef struct moe_stats_resp_v2 {
    moe_stats_resp base;
    moe_stats_ext ext;
} moe_stats_resp_v2;

/* PING: empty bodies both ways. */

#if defined(__cplusplus)
#define MOE_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define MOE_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "moe_router.h: the wire format is little-endian; this host is not"
#endif
MOE_STATIC_ASSERT(sizeof(float) == 4, "fp32");
MOE_STATIC_ASSERT(sizeof(moe_req_header) == 32, "moe_req_header");
MOE_STATIC_ASSERT(offsetof(moe_req_header, request_id) == 8, "request_id");
MOE_STATIC_ASSERT(offsetof(moe_req_header, body_size) == 16, "body_size");
MOE_STATIC_ASSERT(offsetof(moe_req_header, deadline_ms) == 20, "deadline_ms");
MOE_STATIC_ASSERT(sizeof(moe_resp_header) == 32, "moe_resp_header");
MOE_STATIC_ASSERT(offsetof(moe_resp_header, status) == 16, "status");
MOE_STATIC_ASSERT(offsetof(moe_resp_header, body_size) == 20, "resp body_size");
MOE_STATIC_ASSERT(offsetof(moe_resp_header, message_len) == 24, "message_len");
MOE_STATIC_ASSERT(sizeof(moe_hello_req) == 72, "moe_hello_req");
MOE_STATIC_ASSERT(sizeof(moe_hello_resp) == 120, "moe_hello_resp");
MOE_STATIC_ASSERT(offsetof(moe_hello_resp, max_message_bytes) == 72, "max_message_bytes");
MOE_STATIC_ASSERT(sizeof(moe_list_resp) == 8, "moe_list_resp");
MOE_STATIC_ASSERT(sizeof(moe_layer_info) == 104, "moe_layer_info");
MOE_STATIC_ASSERT(offsetof(moe_layer_info, routed_scaling_factor) == 28, "rsf");
MOE_STATIC_ASSERT(offsetof(moe_layer_info, name) == 40, "layer name");
MOE_STATIC_ASSERT(sizeof(moe_register_req) == 264, "moe_register_req");
MOE_STATIC_ASSERT(sizeof(moe_register_resp) == 16, "moe_register_resp");
MOE_STATIC_ASSERT(sizeof(moe_unregister_req) == 8, "moe_unregister_req");
MOE_STATIC_ASSERT(sizeof(moe_unregister_resp) == 8, "moe_unregister_resp");
MOE_STATIC_ASSERT(sizeof(moe_buffer_ref) == 32, "moe_buffer_ref");
MOE_STATIC_ASSERT(sizeof(moe_route_req) == 112, "moe_route_req");
MOE_STATIC_ASSERT(offsetof(moe_route_req, tokens) == 8, "tokens");
MOE_STATIC_ASSERT(offsetof(moe_route_req, input) == 16, "input");
MOE_STATIC_ASSERT(offsetof(moe_route_req, weights) == 48, "weights");
MOE_STATIC_ASSERT(offsetof(moe_route_req, ids) == 80, "ids");
MOE_STATIC_ASSERT(sizeof(moe_route_resp) == 40, "moe_route_resp");
MOE_STATIC_ASSERT(sizeof(moe_stats_resp) == 160, "moe_stats_resp");
MOE_STATIC_ASSERT(sizeof(moe_hello_ext) == 56, "moe_hello_ext");
MOE_STATIC_ASSERT(sizeof(moe_layer_ext) == 32, "moe_layer_ext");
MOE_STATIC_ASSERT(sizeof(moe_layer_info_v2) == 136, "moe_layer_info_v2");
MOE_STATIC_ASSERT(sizeof(moe_route_req_v2) == 192, "moe_route_req_v2");
MOE_STATIC_ASSERT(offsetof(moe_route_req_v2, token_ids) == 112, "token_ids");
MOE_STATIC_ASSERT(offsetof(moe_route_req_v2, mask) == 144, "mask");
MOE_STATIC_ASSERT(offsetof(moe_route_req_v2, token_id_bytes) == 176, "token_id_bytes");
MOE_STATIC_ASSERT(sizeof(moe_route_resp_v2) == 72, "moe_route_resp_v2");
MOE_STATIC_ASSERT(sizeof(moe_placement_req) == 16, "moe_placement_req");
MOE_STATIC_ASSERT(sizeof(moe_placement_resp) == 16, "moe_placement_resp");
MOE_STATIC_ASSERT(sizeof(moe_load_req) == 8, "moe_load_req");
MOE_STATIC_ASSERT(sizeof(moe_load_resp) == 40, "moe_load_resp");
MOE_STATIC_ASSERT(sizeof(moe_stats_ext) == 64, "moe_stats_ext");
MOE_STATIC_ASSERT(sizeof(moe_stats_resp_v2) == 224, "moe_stats_resp_v2");
MOE_STATIC_ASSERT(offsetof(moe_channel_ctrl, req_seq) == 16, "req_seq");
MOE_STATIC_ASSERT(offsetof(moe_channel_ctrl, resp_seq) == 24, "resp_seq");
MOE_STATIC_ASSERT(offsetof(moe_channel_ctrl, request) == 64, "channel request");
MOE_STATIC_ASSERT(offsetof(moe_channel_ctrl, response) == 256, "channel response");
MOE_STATIC_ASSERT(offsetof(moe_channel_ctrl, message) == 328, "channel message");
MOE_STATIC_ASSERT(sizeof(moe_channel_ctrl) == 584, "moe_channel_ctrl");
MOE_STATIC_ASSERT(sizeof(moe_channel_ctrl) <= MOE_CHANNEL_CTRL_BYTES, "control page");
MOE_STATIC_ASSERT(sizeof(moe_channel_open_req) == 16, "moe_channel_open_req");
MOE_STATIC_ASSERT(sizeof(moe_channel_open_resp) == 24, "moe_channel_open_resp");

/* The name and a one-line explanation of a status (Sources/CMoERouterWire/moe_router_status.c). */
const char *moe_status_name(int status);    /* "MOE_ERR_BUSY" */
const char *moe_status_message(int status); /* "the daemon's queue is full; retry later" */

#ifdef __cplusplus
}
#endif

#endif /* MOE_ROUTER_WIRE_H */
