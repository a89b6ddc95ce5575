/*
 * moe_router_client.h — the C client library of moe-routerd (libmoerouter.so, pkg-config name
 * `moe-router`), implemented in plain C against libzmq: a host process needs no Swift runtime.
 * The structs it takes and returns are the wire's (moe_router_wire.h).
 */
#ifndef MOE_ROUTER_CLIENT_H
#define MOE_ROUTER_CLIENT_H

#include "moe_router_wire.h"

#ifdef __cplusplus
extern "C" {
#endif

/* All functions return a moe_status (0 = MOE_OK). A client is one DEALER connection; use it
 * from one thread at a time. After an error, moe_last_error() holds the daemon's message (or
 * the library's). Link with `pkg-config --cflags --libs moe-router`. */

typedef struct moe_client moe_client;

/* A POSIX shm segment created by this client and registered with the daemon. */
typedef struct moe_segment {
    uint64_t handle; /* the daemon's handle (valid on the connection that registered it) */
    void *base;      /* this process's mapping */
    uint64_t size;
    int fd;
} moe_segment;

/* What ROUTE reported besides the outputs. */
typedef struct moe_route_result {
    uint64_t nonfinite_count;
    uint64_t first_nonfinite_token;
    int fallback_cast;
    uint64_t compute_ns;
} moe_route_result;

/* The default endpoint: ipc://$RUNTIME_DIRECTORY/routerd.sock, else
 * ipc://$XDG_RUNTIME_DIR/moe-router/routerd.sock, else ipc:///tmp/moe-router-$UID/routerd.sock.
 * $MOE_ROUTER_ENDPOINT overrides all three. Writes at most `cap` bytes including the NUL. */
int moe_default_endpoint(char *out, size_t cap);

/* Connects (endpoint NULL: the default) and performs HELLO. `timeout_ms` bounds every later
 * call's wait for an answer (<= 0: 5000). On failure *out is NULL.
 * Inline inputs of 4 KiB or more are sent without a copy; every call returns only once the
 * library no longer reads the caller's buffers. When such a call ends without its answer
 * (MOE_ERR_CLIENT_TIMEOUT, an I/O or protocol error), that takes resetting the connection: the
 * client stays usable, but the daemon sees a new client and has released the old connection's
 * shm registrations (moe_last_error() says "connection reset"; register segments again). */
int moe_connect(const char *endpoint, int timeout_ms, moe_client **out);
/* The same over a tcp endpoint that requires ZeroMQ CURVE (moe-routerd --tcp-curve-key): the
 * daemon's public key and this client's key pair, each 40 Z85 characters (moe-routerctl keygen
 * writes them). The daemon admits only public keys on its allow-list; a refused key shows as
 * MOE_ERR_CLIENT_TIMEOUT (the handshake never completes). A malformed key: MOE_ERR_CLIENT_ARG. */
int moe_connect_curve(const char *endpoint, int timeout_ms, const char *server_public, const char *client_public,
                      const char *client_secret, moe_client **out);
/* Unregisters nothing by itself: destroy segments first (the daemon also releases a closed
 * client's registrations). Frees the client. NULL is fine. */
void moe_close(moe_client *client);

const char *moe_last_error(const moe_client *client);

int moe_hello(moe_client *client, moe_hello_resp *out);
int moe_ping(moe_client *client);
int moe_stats(moe_client *client, moe_stats_resp *out);

/* Copies up to `cap` layer descriptions into `out`; *count = the daemon's layer count. */
int moe_list_layers(moe_client *client, moe_layer_info *out, uint32_t cap, uint32_t *count);
/* Finds a layer by name. */
int moe_find_layer(moe_client *client, const char *name, moe_layer_info *out);
/* The bias of `layer_id` as fp32 (num_experts values) into `out` (cap values). */
int moe_layer_bias(moe_client *client, uint32_t layer_id, float *out, uint32_t cap);

/* Creates a private shm object of `size` bytes (mode 0600), maps it, registers it, then
 * unlinks its name (nothing is left in /dev/shm if either side dies). */
int moe_segment_create(moe_client *client, uint64_t size, moe_segment *out);
/* Unregisters (if registered), unmaps and closes. */
int moe_segment_destroy(moe_client *client, moe_segment *segment);
/* Registers an existing shm object by name (for hosts that manage their own segments). */
int moe_register_shm(moe_client *client, const char *name, uint64_t size, uint64_t *handle);
int moe_unregister_shm(moe_client *client, uint64_t handle, int *deferred);

/* Routes `tokens` rows of `input` (input_bytes = tokens*E*dtype size) with bytes inline;
 * writes tokens*top_k weights and ids. `result` may be NULL. */
int moe_route(moe_client *client, uint32_t layer_id, moe_dtype dtype, uint64_t tokens,
              const void *input, size_t input_bytes, float *weights, int32_t *ids,
              size_t out_count, moe_route_result *result);

/* Routes with every buffer in `segment` at the given byte offsets; lengths follow from the
 * layer's shape. The daemon reads the input and writes the outputs in place. */
int moe_route_shm(moe_client *client, uint32_t layer_id, moe_dtype dtype, uint64_t tokens,
                  const moe_segment *segment, const moe_layer_info *layer, uint64_t input_offset,
                  uint64_t weights_offset, uint64_t ids_offset, moe_route_result *result);

/* The general form: any buffer inline or in any registered segment. Inline buffers take their
 * pointers from `input`/`weights`/`ids`; shm buffers take (handle, offset, length) from refs. */
int moe_route_refs(moe_client *client, uint32_t layer_id, moe_dtype dtype, uint64_t tokens,
                   const moe_buffer_ref refs[3], const void *input, float *weights, int32_t *ids,
                   moe_route_result *result);

/* ---- Protocol version 2 -------------------------------------------------------------------
 * moe_connect negotiates the protocol with HELLO (this library speaks versions 1 and 2) and sends
 * every later request with the negotiated version; every function above works with either. The
 * functions below need version 2: against a daemon that speaks only version 1 they return
 * MOE_ERR_BAD_VERSION (moe_last_error() says so) without sending anything, except where noted. */

/* The negotiated protocol version (1 or 2); 0 for NULL. */
int moe_protocol_version(const moe_client *client);

/* The limits the daemon reported in the connect-time HELLO (no request is sent). */
int moe_limits(moe_client *client, moe_hello_ext *out);

/* The connect-time HELLO's message: which backend serves and on what device, e.g. "backend
 * cuda: cuda device NVIDIA H200" or "backend cpu-avx512: cpu device AMD EPYC ..." (the fixed
 * HELLO body names only the backend). Either protocol version. "" for NULL. Valid until moe_close. */
const char *moe_backend_device(const moe_client *client);

/* One layer's version-2 description from LIST_LAYERS: moe_layer_info and moe_layer_ext (hash
 * routing, the current placement and its epoch). (Not named moe_layer_ext: that is the type.) */
int moe_layer_v2(moe_client *client, uint32_t layer_id, moe_layer_info_v2 *out);

/* What a ROUTE reported besides its outputs (all of moe_route_resp_v2). On an error answer the
 * fields its status defines are set: first_nonfinite_token for MOE_ERR_NONFINITE,
 * first_bad_token for MOE_ERR_TOKEN_ID and MOE_ERR_BAD_MASK. */
typedef struct moe_route_info {
    uint64_t tokens;
    uint64_t nonfinite_count;
    uint64_t first_nonfinite_token;
    uint64_t compute_ns;
    uint64_t masked_tokens;   /* padding rows (ids -1, weights 0) */
    uint64_t placement_epoch; /* the placement the ids were mapped with; 0: logical ids */
    uint64_t first_bad_token;
    uint32_t top_k;
    int32_t fallback_cast;
    int32_t hash_routed;      /* 1: the experts came from the layer's tid2eid table */
    uint32_t served_by;       /* MOE_SERVED_BY_ZMQ or MOE_SERVED_BY_CHANNEL: the path the daemon's
                                 answer came by; 0: no answer (the call failed in the client), or a
                                 library older than this field */
    uint64_t reserved2[4];    /* zero; room for later fields at the same size */
} moe_route_info;

enum { MOE_SERVED_BY_ZMQ = 1, MOE_SERVED_BY_CHANNEL = 2 };

/* moe_route with the version-2 inputs, every buffer inline. `token_ids` (may be NULL) holds
 * `tokens` int32 or int64 values (token_id_bytes 4 or 8; hash-routed layers need them);
 * `mask` (may be NULL) holds `tokens` bytes, 1 = padding row (its ids come back -1, its
 * weights 0). `info` may be NULL. Without token ids and mask this also works against a
 * version-1 daemon (the version-2 fields of info are then 0). */
int moe_route_ex(moe_client *client, uint32_t layer_id, moe_dtype dtype, uint64_t tokens,
                 const void *input, size_t input_bytes, const void *token_ids, uint32_t token_id_bytes,
                 const uint8_t *mask, float *weights, int32_t *ids, size_t out_count, moe_route_info *info);

/* moe_route_ex with its arguments in one struct, for language bindings whose foreign calls pay
 * per argument (Python's ctypes: ~0.3 µs less per call than the 13 arguments of moe_route_ex). A
 * binding fills one moe_route_call per request shape and buffers, changes what differs (e.g.
 * layer_id) and passes it to every call. Same checks, errors and results as moe_route_ex. */
typedef struct moe_route_call {
    uint32_t layer_id;
    uint32_t token_id_bytes;
    moe_dtype dtype;
    uint32_t reserved;        /* 0 */
    uint64_t tokens;
    const void *input;
    size_t input_bytes;
    const void *token_ids;
    const uint8_t *mask;
    float *weights;
    int32_t *ids;
    size_t out_count;
    moe_route_info *info;     /* may be NULL */
} moe_route_call;

int moe_route_prepared(moe_client *client, const moe_route_call *call);

/* The general form of moe_route_ex: refs = input, weights, ids, token ids, mask; each inline
 * (its bytes from/to the pointer argument, refs[i].length bytes), in a registered segment, or
 * (token ids, mask only) MOE_BUF_NONE when absent. token_id_bytes goes to the wire as given
 * (0 without token ids). Nothing is checked here that the daemon checks. */
int moe_route_refs_ex(moe_client *client, uint32_t layer_id, moe_dtype dtype, uint64_t tokens,
                      const moe_buffer_ref refs[5], const void *input, const void *token_ids,
                      uint32_t token_id_bytes, const uint8_t *mask, float *weights, int32_t *ids,
                      moe_route_info *info);

/* Sets a layer's expert placement (a control op: MOE_ERR_NOT_PERMITTED unless this process runs
 * as the daemon's uid, root or a --control-uid): logical expert e gets the counts[e] physical ids
 * that follow those of experts 0..e-1 in `physical` (total_replicas values, each < num_physical).
 * num_logical must be the layer's num_experts. *epoch (may be NULL): the new placement epoch. */
int moe_set_placement(moe_client *client, uint32_t layer_id, uint32_t num_physical, uint32_t num_logical,
                      const int32_t *counts, const int32_t *physical, uint32_t total_replicas, uint64_t *epoch);
/* Removes a layer's placement: its ids are logical expert ids again. */
int moe_clear_placement(moe_client *client, uint32_t layer_id, uint64_t *epoch);

/* Tokens routed to each logical expert of a layer: since the daemon built it (`totals`) and in
 * the current window (`window`); each array (may be NULL) takes up to `cap` values. reset_window
 * != 0 starts a new window after this read (a control op). `out` (may be NULL) gets the counts'
 * summary. When cap < the layer's num_experts: the first cap values are copied, *out is set and
 * MOE_ERR_CLIENT_ARG is returned (a requested window reset has happened). */
int moe_expert_load(moe_client *client, uint32_t layer_id, int reset_window, uint64_t *totals, uint64_t *window,
                    uint32_t cap, moe_load_resp *out);

/* STATS with the version-2 counters (per-uid quotas, masked tokens, hash routes, placements). */
int moe_stats_v2(moe_client *client, moe_stats_resp_v2 *out);

/* ---- Channels (protocol 2, ipc) ------------------------------------------------------------
 * On an ipc connection to a daemon whose HELLO offers MOE_FEATURE_CHANNELS, ROUTE goes through a
 * shared-memory channel (moe_channel_ctrl): a segment of this client's, registered like any
 * other, and a futex doorbell instead of a ZeroMQ round trip. The library opens it on the first
 * ROUTE that can use it and serves moe_route, moe_route_ex (inline buffers copied through the
 * channel's data area, which grows by reopening when a request does not fit), moe_route_shm, and
 * moe_route_refs / moe_route_refs_ex when none of their buffers is inline. Everything else, and
 * every ROUTE a channel cannot carry (tcp, a version-1 or older daemon, OPEN_CHANNEL refused,
 * inline inputs over max_message_bytes), goes over ZeroMQ. Both paths give the same statuses,
 * the same moe_route_info and bit-identical outputs; an error message from a channel is cut at
 * 256 bytes.
 *
 * The channel takes one of the connection's registrations: a moe_register_shm or
 * moe_segment_create that meets MOE_ERR_LIMIT closes it and tries again (ROUTE then goes over
 * ZeroMQ until a registration is released). A daemon's refusal to open one is tried again after
 * a second. A call whose answer does not come in time returns MOE_ERR_CLIENT_TIMEOUT (the
 * connection and the registrations stay; the next ROUTE reuses the channel if the late answer
 * has come, else opens another); a channel the daemon closed, or a connection that ended (the
 * daemon stopped or restarted), returns MOE_ERR_CLIENT_IO as soon as the waiting call notices
 * (within 20 ms), and the next ROUTE opens a new channel, on the new daemon if one came. A
 * REGISTER_SHM or OPEN_CHANNEL for a channel that gets no answer resets the connection as a
 * timed-out zero-copy send does ("connection reset"). While it waits the caller spins up to
 * 50 µs (yielding the CPU now and then, which matters when the daemon's thread shares it), then
 * sleeps on a futex: an idle client uses no CPU. */

enum { MOE_ROUTE_PATH_ZMQ = 0, MOE_ROUTE_PATH_CHANNEL = 1 };

/* enabled = 0 closes the channel (if open) and sends ROUTEs over ZeroMQ; 1 (the default, unless
 * the environment had MOE_ROUTER_CHANNEL=0 at moe_connect) allows one again and forgets earlier
 * refusals. Returns a client-level status if closing the channel got no answer. */
int moe_set_channel(moe_client *client, int enabled);

/* Which path carried the last ROUTE call (its request, whatever its status):
 * MOE_ROUTE_PATH_ZMQ or MOE_ROUTE_PATH_CHANNEL; -1 for NULL. */
int moe_last_route_path(const moe_client *client);

#ifdef __cplusplus
}
#endif

#endif /* MOE_ROUTER_CLIENT_H */
