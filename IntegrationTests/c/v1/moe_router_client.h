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

#ifdef __cplusplus
}
#endif

#endif /* MOE_ROUTER_CLIENT_H */
