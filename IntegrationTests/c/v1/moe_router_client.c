/*
 * moe_router_client.c — the C client of moe-routerd (API in Include/moe_router_client.h).
 * Plain C11 against libzmq; no Swift runtime. One DEALER socket per client, one request in
 * flight; answers to an earlier request that timed out are recognised by id and dropped.
 */
#define _GNU_SOURCE
#include "moe_router_client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_REPLY_FRAMES 4

struct moe_client {
    void *ctx;
    void *sock;
    char endpoint[512];
    /* CURVE keys (Z85, 40 characters each; empty: plain connection). */
    char curve_server[41], curve_public[41], curve_secret[41];
    /* Zero-copy inputs libzmq has not released yet (its I/O thread may still read them). */
    atomic_int inputs_held;
    int timeout_ms;
    uint64_t next_id;
    moe_hello_resp hello;
    char error[MOE_MAX_MESSAGE_TEXT + 128];
};

typedef struct reply {
    zmq_msg_t frames[MAX_REPLY_FRAMES];
    int count;
    moe_resp_header header;
    const uint8_t *body;
} reply;

static int fail(moe_client *c, int status, const char *fmt, ...) {
    if (c) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->error, sizeof c->error, fmt, ap);
        va_end(ap);
    }
    return status;
}

static void reply_close(reply *r) {
    for (int i = 0; i < r->count; i++) zmq_msg_close(&r->frames[i]);
    r->count = 0;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Receives one whole multipart message into r (extra parts beyond MAX_REPLY_FRAMES dropped). */
/* Receives one whole answer, waiting at most `wait_ms` for its first frame (the others of a
 * multipart message are already there). MOE_ERR_CLIENT_TIMEOUT when nothing came. A blocking
 * receive with ZMQ_RCVTIMEO, not zmq_poll + receive: libzmq then checks the socket's mailbox
 * once instead of three times, a few syscalls fewer per call. */
static int recv_reply(moe_client *c, reply *r, int wait_ms) {
    r->count = 0;
    int more = 1;
    zmq_setsockopt(c->sock, ZMQ_RCVTIMEO, &wait_ms, sizeof wait_ms);
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->sock, 0) < 0) {
            int e = zmq_errno(), first = r->count == 0;
            zmq_msg_close(&m);
            reply_close(r);
            if (first && (e == EAGAIN || e == EINTR)) return MOE_ERR_CLIENT_TIMEOUT;
            return fail(c, MOE_ERR_CLIENT_IO, "receive: %s", zmq_strerror(e));
        }
        more = zmq_msg_more(&m);
        if (r->count < MAX_REPLY_FRAMES) r->frames[r->count++] = m;
        else zmq_msg_close(&m);
    }
    return MOE_OK;
}

/* libzmq's free callback of a zero-copy input: it no longer reads the caller's buffer. */
static void input_released(void *data, void *hint) {
    (void)data;
    atomic_fetch_sub((atomic_int *)hint, 1);
}

/* A socket and its own context, connected to c->endpoint; NULL socket on failure. */
static void open_socket(moe_client *c) {
    c->ctx = zmq_ctx_new();
    c->sock = c->ctx ? zmq_socket(c->ctx, ZMQ_DEALER) : NULL;
    int zero = 0;
    if (c->sock && c->curve_server[0] &&
        (zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, c->curve_server, 40) != 0 ||
         zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, c->curve_public, 40) != 0 ||
         zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, c->curve_secret, 40) != 0)) {
        zmq_close(c->sock);
        c->sock = NULL;
    }
    if (c->sock && (zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
                    zmq_connect(c->sock, c->endpoint) != 0)) {
        zmq_close(c->sock);
        c->sock = NULL;
    }
}

/* A call returns without its answer (timeout, I/O or protocol error). If libzmq still holds a
 * zero-copy input, the caller may free that buffer as soon as we return while libzmq's I/O
 * thread still reads it (a daemon that stopped reading, a reconnecting peer). So the
 * connection is torn down first: with linger 0, terminating the context discards the unsent
 * message and returns only once libzmq has let go of it. Then a fresh connection is opened; the
 * daemon treats it as a new client (the old one's registrations are released). */
static int unanswered(moe_client *c, int status) {
    if (atomic_load(&c->inputs_held) == 0) return status;
    zmq_close(c->sock);
    zmq_ctx_term(c->ctx);
    open_socket(c);
    size_t n = strlen(c->error);
    snprintf(c->error + n, sizeof c->error - n, " (connection reset: the daemon has released this client's shm registrations)");
    return status;
}

/* Sends one request and waits for its answer. `input` (may be NULL) goes as frame 1. */
static int call(moe_client *c, uint16_t op, const void *body, uint32_t body_size, const void *input,
                size_t input_size, int has_input, reply *r) {
    uint8_t frame0[sizeof(moe_req_header) + sizeof(moe_register_req)];
    moe_req_header h;
    memset(&h, 0, sizeof h);
    h.magic = MOE_PROTOCOL_MAGIC;
    h.version = MOE_PROTOCOL_VERSION;
    h.op = op;
    h.request_id = ++c->next_id;
    h.body_size = body_size;
    h.deadline_ms = (uint32_t)c->timeout_ms;
    memcpy(frame0, &h, sizeof h);
    if (body_size) memcpy(frame0 + sizeof h, body, body_size);
    if (!c->sock) return fail(c, MOE_ERR_CLIENT_IO, "the connection could not be re-established after a timeout");
    if (zmq_send(c->sock, frame0, sizeof h + body_size, has_input ? ZMQ_SNDMORE : 0) < 0)
        return fail(c, MOE_ERR_CLIENT_IO, "send: %s", zmq_strerror(zmq_errno()));
    if (has_input) {
        /* Zero-copy for large inputs: once the answer is here the daemon has received every
         * byte. Without an answer libzmq may still be reading the caller's buffer: see
         * unanswered(). */
        zmq_msg_t m;
        if (input_size >= 4096) {
            atomic_fetch_add(&c->inputs_held, 1);
            zmq_msg_init_data(&m, (void *)input, input_size, input_released, &c->inputs_held);
        } else {
            zmq_msg_init_size(&m, input_size);
            if (input_size) memcpy(zmq_msg_data(&m), input, input_size);
        }
        if (zmq_msg_send(&m, c->sock, 0) < 0) {
            zmq_msg_close(&m);
            return unanswered(c, fail(c, MOE_ERR_CLIENT_IO, "send: %s", zmq_strerror(zmq_errno())));
        }
    }
    int64_t deadline = now_ms() + c->timeout_ms;
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) return unanswered(c, fail(c, MOE_ERR_CLIENT_TIMEOUT, "no answer within %d ms", c->timeout_ms));
        int rc = recv_reply(c, r, left > INT32_MAX ? INT32_MAX : (int)left);
        if (rc == MOE_ERR_CLIENT_TIMEOUT) continue; /* timed out or interrupted: the loop decides */
        if (rc != MOE_OK) return unanswered(c, rc);
        if (zmq_msg_size(&r->frames[0]) < sizeof(moe_resp_header)) {
            reply_close(r);
            return unanswered(c, fail(c, MOE_ERR_CLIENT_PROTOCOL, "answer shorter than a header"));
        }
        memcpy(&r->header, zmq_msg_data(&r->frames[0]), sizeof r->header);
        if (r->header.request_id != h.request_id && r->header.request_id != 0) {
            reply_close(r); /* a late answer to an earlier request */
            continue;
        }
        size_t size = zmq_msg_size(&r->frames[0]);
        if (r->header.magic != MOE_PROTOCOL_MAGIC ||
            sizeof r->header + r->header.body_size + r->header.message_len != size) {
            reply_close(r);
            return unanswered(c, fail(c, MOE_ERR_CLIENT_PROTOCOL, "malformed answer"));
        }
        r->body = (const uint8_t *)zmq_msg_data(&r->frames[0]) + sizeof r->header;
        snprintf(c->error, sizeof c->error, "%.*s", (int)r->header.message_len,
                 (const char *)r->body + r->header.body_size);
        return (int)r->header.status;
    }
}

/* Copies the op body out when the answer has one of the expected size. */
static int take_body(moe_client *c, reply *r, int status, void *out, size_t size) {
    if (status == MOE_OK || r->header.body_size == size) {
        if (r->header.body_size != size) {
            reply_close(r);
            return fail(c, MOE_ERR_CLIENT_PROTOCOL, "answer body is %u bytes, expected %zu", r->header.body_size, size);
        }
        if (out) memcpy(out, r->body, size);
    }
    return status;
}

int moe_default_endpoint(char *out, size_t cap) {
    const char *e = getenv("MOE_ROUTER_ENDPOINT");
    const char *rt = getenv("RUNTIME_DIRECTORY");
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    int n;
    if (e && *e) n = snprintf(out, cap, "%s", e);
    else if (rt && *rt) n = snprintf(out, cap, "ipc://%.*s/routerd.sock", (int)strcspn(rt, ":"), rt);
    else if (xdg && *xdg) n = snprintf(out, cap, "ipc://%s/moe-router/routerd.sock", xdg);
    else n = snprintf(out, cap, "ipc:///tmp/moe-router-%u/routerd.sock", (unsigned)getuid());
    return n < 0 || (size_t)n >= cap ? MOE_ERR_CLIENT_ARG : MOE_OK;
}

static int z85_key(const char *key) {
    uint8_t raw[32];
    return key && strlen(key) == 40 && zmq_z85_decode(raw, key) != NULL;
}

int moe_connect(const char *endpoint, int timeout_ms, moe_client **out) {
    return moe_connect_curve(endpoint, timeout_ms, NULL, NULL, NULL, out);
}

int moe_connect_curve(const char *endpoint, int timeout_ms, const char *server_public, const char *client_public,
                      const char *client_secret, moe_client **out) {
    if (!out) return MOE_ERR_CLIENT_ARG;
    *out = NULL;
    int curve = server_public || client_public || client_secret;
    if (curve && (!z85_key(server_public) || !z85_key(client_public) || !z85_key(client_secret))) return MOE_ERR_CLIENT_ARG;
    char def[512];
    if (!endpoint) {
        if (moe_default_endpoint(def, sizeof def) != MOE_OK) return MOE_ERR_CLIENT_ARG;
        endpoint = def;
    }
    moe_client *c = calloc(1, sizeof *c);
    if (!c) return MOE_ERR_CLIENT_SYS;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    atomic_init(&c->inputs_held, 0);
    if ((size_t)snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint) >= sizeof c->endpoint) {
        free(c);
        return MOE_ERR_CLIENT_ARG;
    }
    if (curve) {
        memcpy(c->curve_server, server_public, 41);
        memcpy(c->curve_public, client_public, 41);
        memcpy(c->curve_secret, client_secret, 41);
    }
    open_socket(c);
    if (!c->sock) {
        moe_close(c);
        return MOE_ERR_CLIENT_IO;
    }
    int rc = moe_hello(c, &c->hello);
    if (rc != MOE_OK) {
        moe_close(c);
        return rc;
    }
    *out = c;
    return MOE_OK;
}

void moe_close(moe_client *c) {
    if (!c) return;
    if (c->sock) zmq_close(c->sock);
    if (c->ctx) zmq_ctx_term(c->ctx);
    free(c);
}

const char *moe_last_error(const moe_client *c) { return c ? c->error : "no client"; }

int moe_hello(moe_client *c, moe_hello_resp *out) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    moe_hello_req q;
    memset(&q, 0, sizeof q);
    q.min_version = MOE_PROTOCOL_VERSION;
    q.max_version = MOE_PROTOCOL_VERSION;
    snprintf(q.client_name, sizeof q.client_name, "libmoerouter-c pid %d", (int)getpid());
    reply r = {0};
    int st = call(c, MOE_OP_HELLO, &q, sizeof q, NULL, 0, 0, &r);
    if (st < MOE_ERR_CLIENT_IO) st = take_body(c, &r, st, out, sizeof *out);
    reply_close(&r);
    return st;
}

int moe_ping(moe_client *c) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    reply r = {0};
    int st = call(c, MOE_OP_PING, NULL, 0, NULL, 0, 0, &r);
    reply_close(&r);
    return st;
}

int moe_stats(moe_client *c, moe_stats_resp *out) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    reply r = {0};
    int st = call(c, MOE_OP_STATS, NULL, 0, NULL, 0, 0, &r);
    if (st < MOE_ERR_CLIENT_IO) st = take_body(c, &r, st, out, sizeof *out);
    reply_close(&r);
    return st;
}

/* LIST_LAYERS; hands out layer descriptions and/or one layer's bias. */
static int list(moe_client *c, moe_layer_info *out, uint32_t cap, uint32_t *count, int bias_layer,
                float *bias, uint32_t bias_cap) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    reply r = {0};
    int st = call(c, MOE_OP_LIST_LAYERS, NULL, 0, NULL, 0, 0, &r);
    if (st != MOE_OK) {
        reply_close(&r);
        return st;
    }
    moe_list_resp head;
    memcpy(&head, r.body, sizeof head);
    if (r.header.body_size != sizeof head + head.count * sizeof(moe_layer_info) || r.count < 2) {
        reply_close(&r);
        return fail(c, MOE_ERR_CLIENT_PROTOCOL, "malformed layer list");
    }
    if (count) *count = head.count;
    const uint8_t *infos = r.body + sizeof head;
    for (uint32_t i = 0; i < head.count; i++) {
        moe_layer_info info;
        memcpy(&info, infos + i * sizeof info, sizeof info);
        if (out && i < cap) out[i] = info;
        if (bias_layer >= 0 && info.layer_id == (uint32_t)bias_layer) {
            if (!info.has_bias) st = fail(c, MOE_ERR_CLIENT_ARG, "layer %u has no bias", info.layer_id);
            else if (bias_cap < info.num_experts) st = fail(c, MOE_ERR_CLIENT_ARG, "bias buffer holds %u values, need %u", bias_cap, info.num_experts);
            else if ((size_t)(info.bias_offset + info.num_experts) * 4 > zmq_msg_size(&r.frames[1])) st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "bias frame too short");
            else memcpy(bias, (const uint8_t *)zmq_msg_data(&r.frames[1]) + (size_t)info.bias_offset * 4, (size_t)info.num_experts * 4);
            reply_close(&r);
            return st;
        }
    }
    reply_close(&r);
    if (bias_layer >= 0) return fail(c, MOE_ERR_UNKNOWN_LAYER, "layer %d does not exist", bias_layer);
    return MOE_OK;
}

int moe_list_layers(moe_client *c, moe_layer_info *out, uint32_t cap, uint32_t *count) {
    return list(c, out, cap, count, -1, NULL, 0);
}

int moe_layer_bias(moe_client *c, uint32_t layer_id, float *out, uint32_t cap) {
    if (!out) return MOE_ERR_CLIENT_ARG;
    return list(c, NULL, 0, NULL, (int)layer_id, out, cap);
}

int moe_find_layer(moe_client *c, const char *name, moe_layer_info *out) {
    if (!c || !name) return MOE_ERR_CLIENT_ARG;
    moe_layer_info infos[256];
    uint32_t n = 0;
    int st = moe_list_layers(c, infos, 256, &n);
    if (st != MOE_OK) return st;
    for (uint32_t i = 0; i < n && i < 256; i++) {
        if (strncmp(infos[i].name, name, MOE_NAME_BYTES) == 0) {
            if (out) *out = infos[i];
            return MOE_OK;
        }
    }
    return fail(c, MOE_ERR_UNKNOWN_LAYER, "no layer named '%s'", name);
}

int moe_register_shm(moe_client *c, const char *name, uint64_t size, uint64_t *handle) {
    if (!c || !name || strlen(name) >= MOE_SHM_NAME_BYTES) return MOE_ERR_CLIENT_ARG;
    moe_register_req q;
    memset(&q, 0, sizeof q);
    strcpy(q.name, name);
    q.size = size;
    reply r = {0};
    int st = call(c, MOE_OP_REGISTER_SHM, &q, sizeof q, NULL, 0, 0, &r);
    moe_register_resp resp;
    if (st == MOE_OK) st = take_body(c, &r, st, &resp, sizeof resp);
    if (st == MOE_OK && handle) *handle = resp.handle;
    reply_close(&r);
    return st;
}

int moe_unregister_shm(moe_client *c, uint64_t handle, int *deferred) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    moe_unregister_req q = {handle};
    reply r = {0};
    int st = call(c, MOE_OP_UNREGISTER_SHM, &q, sizeof q, NULL, 0, 0, &r);
    moe_unregister_resp resp;
    if (st == MOE_OK) st = take_body(c, &r, st, &resp, sizeof resp);
    if (st == MOE_OK && deferred) *deferred = (int)resp.deferred;
    reply_close(&r);
    return st;
}

int moe_segment_create(moe_client *c, uint64_t size, moe_segment *out) {
    if (!c || !out || size == 0) return MOE_ERR_CLIENT_ARG;
    memset(out, 0, sizeof *out);
    out->fd = -1;
    static unsigned counter;
    char name[96];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(name, sizeof name, "/moe-router-%d-%u-%ld", (int)getpid(), __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED),
             (long)ts.tv_nsec);
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) return fail(c, MOE_ERR_CLIENT_SYS, "shm_open(%s): %s", name, strerror(errno));
    void *p = MAP_FAILED;
    if (ftruncate(fd, (off_t)size) == 0) p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        shm_unlink(name);
        close(fd);
        return fail(c, MOE_ERR_CLIENT_SYS, "ftruncate/mmap(%s, %llu): %s", name, (unsigned long long)size, strerror(e));
    }
    uint64_t handle = 0;
    int st = moe_register_shm(c, name, size, &handle);
    shm_unlink(name); /* the daemon holds its own mapping; the name is no longer needed */
    if (st != MOE_OK) {
        munmap(p, size);
        close(fd);
        return st;
    }
    out->handle = handle;
    out->base = p;
    out->size = size;
    out->fd = fd;
    return MOE_OK;
}

int moe_segment_destroy(moe_client *c, moe_segment *s) {
    if (!s || !s->base) return MOE_ERR_CLIENT_ARG;
    int st = c ? moe_unregister_shm(c, s->handle, NULL) : MOE_OK;
    munmap(s->base, s->size);
    close(s->fd);
    memset(s, 0, sizeof *s);
    s->fd = -1;
    return st;
}

static size_t dtype_size(moe_dtype d) { return d == MOE_DTYPE_FP32 ? 4 : 2; }

int moe_route_refs(moe_client *c, uint32_t layer_id, moe_dtype dtype, uint64_t tokens,
                   const moe_buffer_ref refs[3], const void *input, float *weights, int32_t *ids,
                   moe_route_result *result) {
    if (!c || !refs) return MOE_ERR_CLIENT_ARG;
    moe_route_req q;
    memset(&q, 0, sizeof q);
    q.layer_id = layer_id;
    q.dtype = (uint8_t)dtype;
    q.tokens = tokens;
    q.input = refs[0];
    q.weights = refs[1];
    q.ids = refs[2];
    int inline_in = refs[0].kind == MOE_BUF_INLINE;
    reply r = {0};
    int st = call(c, MOE_OP_ROUTE, &q, sizeof q, input, inline_in ? refs[0].length : 0, inline_in, &r);
    if (st >= MOE_ERR_CLIENT_IO) return st;
    moe_route_resp resp;
    memset(&resp, 0, sizeof resp);
    if (r.header.body_size == sizeof resp) memcpy(&resp, r.body, sizeof resp);
    if (result) {
        result->nonfinite_count = resp.nonfinite_count;
        result->first_nonfinite_token = resp.first_nonfinite_token;
        result->fallback_cast = (int)resp.fallback_cast;
        result->compute_ns = resp.compute_ns;
    }
    if (st == MOE_OK) {
        int f = 1;
        void *dst[2] = {weights, ids};
        for (int i = 0; i < 2; i++) {
            if (refs[1 + i].kind != MOE_BUF_INLINE) continue;
            if (f >= r.count || zmq_msg_size(&r.frames[f]) != refs[1 + i].length || !dst[i]) {
                st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "output frame %d missing or of the wrong size", f);
                break;
            }
            memcpy(dst[i], zmq_msg_data(&r.frames[f]), refs[1 + i].length);
            f++;
        }
    }
    reply_close(&r);
    return st;
}

int moe_route(moe_client *c, uint32_t layer_id, moe_dtype dtype, uint64_t tokens, const void *input,
              size_t input_bytes, float *weights, int32_t *ids, size_t out_count, moe_route_result *result) {
    moe_buffer_ref refs[3];
    memset(refs, 0, sizeof refs);
    refs[0].length = input_bytes;
    refs[1].length = out_count * 4;
    refs[2].length = out_count * 4;
    return moe_route_refs(c, layer_id, dtype, tokens, refs, input, weights, ids, result);
}

int moe_route_shm(moe_client *c, uint32_t layer_id, moe_dtype dtype, uint64_t tokens, const moe_segment *s,
                  const moe_layer_info *layer, uint64_t input_offset, uint64_t weights_offset,
                  uint64_t ids_offset, moe_route_result *result) {
    if (!s || !layer) return MOE_ERR_CLIENT_ARG;
    moe_buffer_ref refs[3];
    memset(refs, 0, sizeof refs);
    uint64_t offsets[3] = {input_offset, weights_offset, ids_offset};
    uint64_t lengths[3] = {tokens * layer->num_experts * dtype_size(dtype), tokens * layer->top_k * 4,
                           tokens * layer->top_k * 4};
    for (int i = 0; i < 3; i++) {
        refs[i].kind = MOE_BUF_SHM;
        refs[i].handle = s->handle;
        refs[i].offset = offsets[i];
        refs[i].length = lengths[i];
    }
    return moe_route_refs(c, layer_id, dtype, tokens, refs, NULL, NULL, NULL, result);
}
