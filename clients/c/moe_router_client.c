/*
 * moe_router_client.c — the C client of moe-routerd (API in Include/moe_router_client.h).
 * Plain C11 against libzmq; no Swift runtime. One DEALER socket per client, one request in
 * flight; answers to an earlier request that timed out are recognised by id and dropped.
 * Protocol versions 1 and 2: HELLO (always sent as version 1) negotiates, and every other
 * request is sent, and its answer read, in the negotiated version. On ipc connections to a daemon
 * that offers MOE_FEATURE_CHANNELS, ROUTE goes through a shared-memory channel instead (see
 * "Channels" below); everything else stays on ZeroMQ.
 */
#define _GNU_SOURCE
#include "moe_router_client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_REPLY_FRAMES 4
/* The largest request body (REGISTER_SHM's). */
#define MAX_REQUEST_BODY sizeof(moe_register_req)
_Static_assert(sizeof(moe_route_req_v2) <= MAX_REQUEST_BODY, "request body buffer");
_Static_assert(sizeof(moe_hello_req) <= MAX_REQUEST_BODY, "request body buffer");

/* The shared-memory channel that serves this client's ROUTEs (moe_channel_ctrl in its first page,
 * inline buffers copied to and from the data area after it). */
typedef struct channel {
    moe_channel_ctrl *ctrl; /* NULL: no channel */
    uint8_t *data;          /* the data area, past the control page */
    uint64_t data_size;
    uint64_t size;          /* the whole segment */
    uint64_t handle;        /* its registration */
    uint64_t epoch;         /* the daemon's, from OPEN_CHANNEL */
    uint32_t seq;           /* the last req_seq stored */
    unsigned connection;    /* the moe_client.connection it was opened on */
    int fd;
    int unanswered;         /* a request ended without its answer, which may still come */
} channel;

struct moe_client {
    void *ctx;
    void *sock;
    void *monitor; /* ipc: receives the socket's DISCONNECTED events (a daemon gone or restarted) */
    unsigned connection; /* +1 whenever the socket is opened again */
    char endpoint[512];
    /* CURVE keys (Z85, 40 characters each; empty: plain connection). */
    char curve_server[41], curve_public[41], curve_secret[41];
    /* Zero-copy inputs libzmq has not released yet (its I/O thread may still read them). */
    atomic_int inputs_held;
    int timeout_ms;
    uint64_t next_id;
    uint16_t version; /* negotiated by HELLO; 1 until then */
    moe_hello_resp hello;
    moe_hello_ext limits; /* version 2: the connect-time HELLO's extension */
    char backend_device[MOE_MAX_MESSAGE_TEXT + 1]; /* the connect-time HELLO's message */
    channel ch;
    int channel_wanted;       /* MOE_ROUTER_CHANNEL=0 / moe_set_channel */
    int channel_yielded;      /* the channel gave its registration to the host's (moe_register_shm) */
    uint64_t channel_refused; /* the smallest data area refused lately (UINT64_MAX: none) ... */
    int64_t channel_refused_ns; /* ... and when (refusals are forgotten after CHANNEL_RETRY_NS) */
    int last_path;            /* MOE_ROUTE_PATH_* of the last ROUTE */
    int64_t monitor_looked_ns; /* when the channel path last looked at the monitor */
    int64_t call_ns;           /* when the channel call now under way began (channel_ready) */
    int yielding, yield_count; /* channel_wait's yields while spinning */
    char error[MOE_MAX_MESSAGE_TEXT + 128];
};

typedef struct reply {
    zmq_msg_t frames[MAX_REPLY_FRAMES];
    int count;
    int dropped; /* frames beyond MAX_REPLY_FRAMES (none in a well-formed answer) */
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
    r->dropped = 0;
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
        if (r->count < MAX_REPLY_FRAMES) {
            r->frames[r->count++] = m;
        } else {
            zmq_msg_close(&m);
            r->dropped++;
        }
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
    c->connection++;
    /* On ipc a channel lives as long as the connection: the monitor tells when that ended (the
     * daemon died, restarted or dropped us) without a round trip. */
    if (c->sock && strncmp(c->endpoint, "ipc://", 6) == 0 &&
        zmq_socket_monitor(c->sock, "inproc://moe-client-monitor", ZMQ_EVENT_DISCONNECTED) == 0) {
        c->monitor = zmq_socket(c->ctx, ZMQ_PAIR);
        if (c->monitor && (zmq_setsockopt(c->monitor, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
                           zmq_connect(c->monitor, "inproc://moe-client-monitor") != 0)) {
            zmq_close(c->monitor);
            c->monitor = NULL;
        }
        if (!c->monitor) zmq_socket_monitor(c->sock, NULL, 0);
    }
}

static void close_socket(moe_client *c) {
    if (c->monitor) {
        zmq_socket_monitor(c->sock, NULL, 0);
        zmq_close(c->monitor);
        c->monitor = NULL;
    }
    if (c->sock) zmq_close(c->sock);
    if (c->ctx) zmq_ctx_term(c->ctx);
    c->sock = c->ctx = NULL;
}

/* A call returns without its answer (timeout, I/O or protocol error). If libzmq still holds a
 * zero-copy input, the caller may free that buffer as soon as we return while libzmq's I/O
 * thread still reads it (a daemon that stopped reading, a reconnecting peer). So the
 * connection is torn down first: with linger 0, terminating the context discards the unsent
 * message and returns only once libzmq has let go of it. Then a fresh connection is opened; the
 * daemon treats it as a new client (the old one's registrations are released). */
static void channel_forget(moe_client *c);
static int channel_retire(moe_client *c);

static int reset_connection(moe_client *c, int status) {
    close_socket(c);
    open_socket(c);
    size_t n = strlen(c->error);
    snprintf(c->error + n, sizeof c->error - n, " (connection reset: the daemon has released this client's shm registrations)");
    return status;
}

static int unanswered(moe_client *c, int status) {
    return atomic_load(&c->inputs_held) == 0 ? status : reset_connection(c, status);
}

/* A request frame after frame 0: `size` bytes at `data`, then (copied into the same frame)
 * `tail_size` bytes at `tail`. */
typedef struct part {
    const void *data;
    size_t size;
    const void *tail;
    size_t tail_size;
} part;

/* One frame of a request. Zero-copy for large single-piece frames: once the answer is here the
 * daemon has received every byte. Without an answer libzmq may still be reading the caller's
 * buffer: see unanswered(). */
static int send_part(moe_client *c, const part *p, int more) {
    zmq_msg_t m;
    if (!p->tail_size && p->size >= 4096) {
        atomic_fetch_add(&c->inputs_held, 1);
        zmq_msg_init_data(&m, (void *)p->data, p->size, input_released, &c->inputs_held);
    } else {
        if (zmq_msg_init_size(&m, p->size + p->tail_size) != 0) return -1;
        if (p->size) memcpy(zmq_msg_data(&m), p->data, p->size);
        if (p->tail_size) memcpy((uint8_t *)zmq_msg_data(&m) + p->size, p->tail, p->tail_size);
    }
    if (zmq_msg_send(&m, c->sock, more ? ZMQ_SNDMORE : 0) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&m);
        errno = e;
        return -1;
    }
    return 0;
}

/* Sends one request in protocol `version` and waits for its answer; `parts` follow frame 0. */
static int call(moe_client *c, uint16_t version, uint16_t op, const void *body, uint32_t body_size,
                const part *parts, int nparts, reply *r) {
    uint8_t frame0[sizeof(moe_req_header) + MAX_REQUEST_BODY];
    moe_req_header h;
    memset(&h, 0, sizeof h);
    h.magic = MOE_PROTOCOL_MAGIC;
    h.version = version;
    h.op = op;
    h.request_id = ++c->next_id;
    h.body_size = body_size;
    h.deadline_ms = (uint32_t)c->timeout_ms;
    if (body_size > MAX_REQUEST_BODY) return fail(c, MOE_ERR_CLIENT_ARG, "request body of %u bytes", body_size);
    memcpy(frame0, &h, sizeof h);
    if (body_size) memcpy(frame0 + sizeof h, body, body_size);
    if (!c->sock) return fail(c, MOE_ERR_CLIENT_IO, "the connection could not be re-established after a timeout");
    if (zmq_send(c->sock, frame0, sizeof h + body_size, nparts ? ZMQ_SNDMORE : 0) < 0)
        return fail(c, MOE_ERR_CLIENT_IO, "send: %s", zmq_strerror(zmq_errno()));
    for (int i = 0; i < nparts; i++) {
        if (send_part(c, &parts[i], i + 1 < nparts) != 0) {
            /* A multipart message left half-sent would swallow the next request's frames. */
            return reset_connection(c, fail(c, MOE_ERR_CLIENT_IO, "send: %s", zmq_strerror(errno)));
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
        /* A successful answer is in the request's version (an error may come from a daemon that
         * could not read the request's header). */
        if (r->header.status == MOE_OK && r->header.version != version) {
            unsigned got = r->header.version;
            reply_close(r);
            return unanswered(c, fail(c, MOE_ERR_CLIENT_PROTOCOL, "answer in protocol version %u to a version %u request",
                                      got, (unsigned)version));
        }
        r->body = (const uint8_t *)zmq_msg_data(&r->frames[0]) + sizeof r->header;
        snprintf(c->error, sizeof c->error, "%.*s", (int)r->header.message_len,
                 (const char *)r->body + r->header.body_size);
        return (int)r->header.status;
    }
}

/* The frame count of a successful answer is exactly `frames` (frame 0 included). */
static int expect_frames(moe_client *c, reply *r, int frames, const char *what) {
    int got = r->count + r->dropped;
    if (got == frames) return MOE_OK;
    reply_close(r);
    return fail(c, MOE_ERR_CLIENT_PROTOCOL, "%s answer has %d frames, expected %d", what, got, frames);
}

/* Version-2-only calls against a version-1 daemon. */
static int need_v2(moe_client *c, const char *what) {
    if (c->version >= 2) return MOE_OK;
    return fail(c, MOE_ERR_BAD_VERSION, "%s needs protocol version 2; the daemon speaks version %u only", what,
                (unsigned)c->version);
}

/* Copies the op body out when the answer has one of the expected size; a successful answer
 * must have it, and no frame besides frame 0. */
static int take_body(moe_client *c, reply *r, int status, void *out, size_t size) {
    if (status == MOE_OK || r->header.body_size == size) {
        if (r->header.body_size != size) {
            reply_close(r);
            return fail(c, MOE_ERR_CLIENT_PROTOCOL, "answer body is %u bytes, expected %zu", r->header.body_size, size);
        }
        if (status == MOE_OK && expect_frames(c, r, 1, "the") != MOE_OK) return MOE_ERR_CLIENT_PROTOCOL;
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
    c->version = 1;
    const char *channel_env = getenv("MOE_ROUTER_CHANNEL");
    c->channel_wanted = !(channel_env && strcmp(channel_env, "0") == 0);
    c->channel_refused = UINT64_MAX;
    c->ch.fd = -1;
    c->yielding = 1;
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
    channel_forget(c); /* the daemon closes the channel with the connection */
    close_socket(c);
    free(c);
}

const char *moe_last_error(const moe_client *c) { return c ? c->error : "no client"; }

/* HELLO goes out as version 1 (any daemon reads it) offering versions 1...2; the answer's
 * protocol_version is the negotiated one, and from version 2 on moe_hello_ext follows. */
int moe_hello(moe_client *c, moe_hello_resp *out) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    moe_hello_req q;
    memset(&q, 0, sizeof q);
    q.min_version = MOE_PROTOCOL_MIN_VERSION;
    q.max_version = MOE_PROTOCOL_VERSION;
    snprintf(q.client_name, sizeof q.client_name, "libmoerouter-c pid %d", (int)getpid());
    reply r = {0};
    int st = call(c, 1, MOE_OP_HELLO, &q, sizeof q, NULL, 0, &r);
    if (st >= MOE_ERR_CLIENT_IO) return st;
    if (st != MOE_OK) {
        st = take_body(c, &r, st, out, sizeof *out);
        reply_close(&r);
        return st;
    }
    moe_hello_resp h;
    if (r.header.body_size < sizeof h) {
        st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "HELLO answer body is %u bytes, expected at least %zu", r.header.body_size, sizeof h);
    } else {
        memcpy(&h, r.body, sizeof h);
        size_t want = sizeof h + (h.protocol_version >= 2 ? sizeof(moe_hello_ext) : 0);
        if (h.protocol_version < MOE_PROTOCOL_MIN_VERSION || h.protocol_version > MOE_PROTOCOL_VERSION)
            st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "the daemon chose protocol version %u; this library offered %u...%u",
                      (unsigned)h.protocol_version, MOE_PROTOCOL_MIN_VERSION, MOE_PROTOCOL_VERSION);
        else if (r.header.body_size != want)
            st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "HELLO answer body is %u bytes, expected %zu for protocol version %u",
                      r.header.body_size, want, (unsigned)h.protocol_version);
        else
            st = expect_frames(c, &r, 1, "HELLO");
        if (st == MOE_OK) {
            c->version = h.protocol_version;
            c->hello = h;
            snprintf(c->backend_device, sizeof c->backend_device, "%.*s", (int)MOE_MAX_MESSAGE_TEXT, c->error);
            memset(&c->limits, 0, sizeof c->limits);
            if (h.protocol_version >= 2) memcpy(&c->limits, r.body + sizeof h, sizeof c->limits);
            if (out) *out = h;
        }
    }
    reply_close(&r);
    return st;
}

int moe_protocol_version(const moe_client *c) { return c ? (int)c->version : 0; }

const char *moe_backend_device(const moe_client *c) { return c ? c->backend_device : ""; }

int moe_limits(moe_client *c, moe_hello_ext *out) {
    if (!c || !out) return MOE_ERR_CLIENT_ARG;
    int st = need_v2(c, "moe_limits");
    if (st == MOE_OK) *out = c->limits;
    return st;
}

int moe_ping(moe_client *c) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    reply r = {0};
    int st = call(c, c->version, MOE_OP_PING, NULL, 0, NULL, 0, &r);
    if (st == MOE_OK) st = take_body(c, &r, st, NULL, 0);
    reply_close(&r);
    return st;
}

int moe_stats(moe_client *c, moe_stats_resp *out) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    reply r = {0};
    int st = call(c, c->version, MOE_OP_STATS, NULL, 0, NULL, 0, &r);
    if (st < MOE_ERR_CLIENT_IO) {
        if (c->version >= 2) {
            moe_stats_resp_v2 v2;
            st = take_body(c, &r, st, &v2, sizeof v2);
            if (st == MOE_OK && out) *out = v2.base;
        } else {
            st = take_body(c, &r, st, out, sizeof *out);
        }
    }
    reply_close(&r);
    return st;
}

int moe_stats_v2(moe_client *c, moe_stats_resp_v2 *out) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    int st = need_v2(c, "moe_stats_v2");
    if (st != MOE_OK) return st;
    reply r = {0};
    st = call(c, c->version, MOE_OP_STATS, NULL, 0, NULL, 0, &r);
    if (st < MOE_ERR_CLIENT_IO) st = take_body(c, &r, st, out, sizeof *out);
    reply_close(&r);
    return st;
}

/* LIST_LAYERS; hands out layer descriptions and/or one layer's bias or version-2 extension.
 * Entries are moe_layer_info (version 1) or moe_layer_info_v2 (version 2). */
static int list(moe_client *c, moe_layer_info *out, uint32_t cap, uint32_t *count, int64_t want_layer,
                float *bias, uint32_t bias_cap, moe_layer_info_v2 *v2) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    reply r = {0};
    int st = call(c, c->version, MOE_OP_LIST_LAYERS, NULL, 0, NULL, 0, &r);
    if (st != MOE_OK) {
        reply_close(&r);
        return st;
    }
    size_t entry = c->version >= 2 ? sizeof(moe_layer_info_v2) : sizeof(moe_layer_info);
    moe_list_resp head;
    if (r.header.body_size < sizeof head) {
        reply_close(&r);
        return fail(c, MOE_ERR_CLIENT_PROTOCOL, "malformed layer list: body of %u bytes", r.header.body_size);
    }
    memcpy(&head, r.body, sizeof head);
    if (r.header.body_size != sizeof head + (size_t)head.count * entry || r.count != 2 || r.dropped) {
        reply_close(&r);
        return fail(c, MOE_ERR_CLIENT_PROTOCOL, "malformed layer list");
    }
    if (count) *count = head.count;
    const uint8_t *infos = r.body + sizeof head;
    for (uint32_t i = 0; i < head.count; i++) {
        moe_layer_info info;
        memcpy(&info, infos + i * entry, sizeof info);
        if (out && i < cap) out[i] = info;
        if (want_layer >= 0 && info.layer_id == want_layer) {
            if (v2) {
                memcpy(v2, infos + i * entry, sizeof *v2);
            } else if (!info.has_bias) {
                st = fail(c, MOE_ERR_CLIENT_ARG, "layer %u has no bias", info.layer_id);
            } else if (bias_cap < info.num_experts) {
                st = fail(c, MOE_ERR_CLIENT_ARG, "bias buffer holds %u values, need %u", bias_cap, info.num_experts);
            } else if (((size_t)info.bias_offset + info.num_experts) * 4 > zmq_msg_size(&r.frames[1])) {
                st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "bias frame too short");
            } else {
                memcpy(bias, (const uint8_t *)zmq_msg_data(&r.frames[1]) + (size_t)info.bias_offset * 4, (size_t)info.num_experts * 4);
            }
            reply_close(&r);
            return st;
        }
    }
    reply_close(&r);
    if (want_layer >= 0) return fail(c, MOE_ERR_UNKNOWN_LAYER, "layer %lld does not exist", (long long)want_layer);
    return MOE_OK;
}

int moe_list_layers(moe_client *c, moe_layer_info *out, uint32_t cap, uint32_t *count) {
    return list(c, out, cap, count, -1, NULL, 0, NULL);
}

int moe_layer_bias(moe_client *c, uint32_t layer_id, float *out, uint32_t cap) {
    if (!out) return MOE_ERR_CLIENT_ARG;
    return list(c, NULL, 0, NULL, layer_id, out, cap, NULL);
}

int moe_layer_v2(moe_client *c, uint32_t layer_id, moe_layer_info_v2 *out) {
    if (!c || !out) return MOE_ERR_CLIENT_ARG;
    int st = need_v2(c, "moe_layer_v2");
    return st != MOE_OK ? st : list(c, NULL, 0, NULL, layer_id, NULL, 0, out);
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

static int register_shm(moe_client *c, const char *name, uint64_t size, uint64_t *handle) {
    moe_register_req q;
    memset(&q, 0, sizeof q);
    strcpy(q.name, name);
    q.size = size;
    reply r = {0};
    int st = call(c, c->version, MOE_OP_REGISTER_SHM, &q, sizeof q, NULL, 0, &r);
    moe_register_resp resp;
    if (st == MOE_OK) st = take_body(c, &r, st, &resp, sizeof resp);
    if (st == MOE_OK && handle) *handle = resp.handle;
    reply_close(&r);
    return st;
}

static int unregister_shm(moe_client *c, uint64_t handle, int *deferred) {
    moe_unregister_req q = {handle};
    reply r = {0};
    int st = call(c, c->version, MOE_OP_UNREGISTER_SHM, &q, sizeof q, NULL, 0, &r);
    moe_unregister_resp resp;
    if (st == MOE_OK) st = take_body(c, &r, st, &resp, sizeof resp);
    if (st == MOE_OK && deferred) *deferred = (int)resp.deferred;
    reply_close(&r);
    return st;
}

int moe_register_shm(moe_client *c, const char *name, uint64_t size, uint64_t *handle) {
    if (!c || !name || strlen(name) >= MOE_SHM_NAME_BYTES) return MOE_ERR_CLIENT_ARG;
    int st = register_shm(c, name, size, handle);
    /* The channel holds one of this connection's registrations, and its bytes count against the
     * uid's quota: a host that runs into a limit gets that room back (ROUTE then goes over
     * ZeroMQ until a registration is released). */
    if (st == MOE_ERR_LIMIT && c->ch.ctrl) {
        int retired = channel_retire(c);
        c->channel_yielded = 1;
        if (retired >= MOE_ERR_CLIENT_IO) return retired;
        st = register_shm(c, name, size, handle);
    }
    return st;
}

int moe_unregister_shm(moe_client *c, uint64_t handle, int *deferred) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    int st = unregister_shm(c, handle, deferred);
    if (st == MOE_OK) c->channel_yielded = 0; /* room for a channel again, perhaps */
    return st;
}

/* A private shm object of `size` bytes, mapped, registered (with moe_register_shm's room-making
 * for a host's segment, plainly for a channel's), its name unlinked. */
static int segment_create(moe_client *c, uint64_t size, moe_segment *out, int for_channel) {
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
    int st = for_channel ? register_shm(c, name, size, &handle) : moe_register_shm(c, name, size, &handle);
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

int moe_segment_create(moe_client *c, uint64_t size, moe_segment *out) {
    if (!c || !out || size == 0) return MOE_ERR_CLIENT_ARG;
    return segment_create(c, size, out, 0);
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

/* ---- Channels ------------------------------------------------------------------------------
 * ROUTE through shared memory (moe_channel_ctrl, Include/moe_router_wire.h): the request goes
 * into the channel's control page and a futex word, the answer comes back the same way, with no
 * ZeroMQ message and no daemon I/O thread in between. A channel is opened on the first ROUTE that
 * can use one (an ipc connection, protocol 2, MOE_FEATURE_CHANNELS) and reopened bigger when an
 * inline request does not fit its data area. Anything a channel cannot carry, and any refusal to
 * open one, goes over ZeroMQ; the daemon answers both paths from the same request core. */

#define CHANNEL_UNUSABLE (-1)
#define CHANNEL_MIN_DATA (64u << 10)
/* Spinning this long before sleeping catches the answer to a small route without a futex wake
 * (a wake-up costs tens of µs on a VM); the cost is bounded by the call itself. */
#define CHANNEL_SPIN_NS 50000
/* A caller asleep waiting looks at the channel's state and the connection this often. */
#define CHANNEL_SLICE_NS 20000000
/* Yielding while spinning (see channel_wait): a yield this long means another thread ran. */
#define CHANNEL_SWITCH_NS 1500
#define CHANNEL_YIELD_TRIES 16
#define CHANNEL_YIELD_RETRY 1024
/* A ROUTE this long after the last look at the connection looks again before it uses the channel
 * (a restarted daemon takes far longer to start). */
#define CHANNEL_LOOK_NS 1000000
/* A daemon's refusal to open a channel (a limit) is tried again after this long. */
#define CHANNEL_RETRY_NS 1000000000

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Shared (not FUTEX_PRIVATE): the daemon waits and wakes on the same physical page. */
static void futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
    syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static void futex_wake(uint32_t *word) { syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0); }

/* Whether the socket lost its connection since the last look: the daemon died, restarted or
 * dropped this client, and with the connection went its registrations and channels. */
static int connection_dropped(moe_client *c) {
    if (!c->monitor) return 0;
    int dropped = 0;
    zmq_msg_t m;
    for (;;) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->monitor, ZMQ_DONTWAIT) < 0) break;
        uint16_t event = 0;
        if (zmq_msg_size(&m) >= 2) memcpy(&event, zmq_msg_data(&m), 2);
        dropped |= event == ZMQ_EVENT_DISCONNECTED;
        while (zmq_msg_more(&m)) { /* the event's address frame */
            zmq_msg_close(&m);
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, c->monitor, ZMQ_DONTWAIT) < 0) break;
        }
        zmq_msg_close(&m);
    }
    zmq_msg_close(&m);
    return dropped;
}

/* Lets go of the channel here only (the daemon has closed it, or will with the connection). */
static void channel_forget(moe_client *c) {
    if (c->ch.ctrl) {
        munmap(c->ch.ctrl, c->ch.size);
        close(c->ch.fd);
    }
    memset(&c->ch, 0, sizeof c->ch);
    c->ch.fd = -1;
}

/* Closes the channel: UNREGISTER of its segment closes it on the daemon's side (any request
 * still running there keeps the daemon's mapping until it ends). Only a client-level status is
 * passed on: UNKNOWN_HANDLE means it is gone already. */
static int channel_retire(moe_client *c) {
    uint64_t handle = c->ch.handle;
    channel_forget(c);
    int st = unregister_shm(c, handle, NULL);
    return st >= MOE_ERR_CLIENT_IO ? st : MOE_OK;
}

/* Whether this connection could carry a channel at all (whether the daemon refused one aside). */
static int channel_possible(const moe_client *c) {
    return c->channel_wanted && c->version >= 2 && (c->limits.features & MOE_FEATURE_CHANNELS) && c->hello.shm_allowed &&
           strncmp(c->endpoint, "ipc://", 6) == 0;
}

/* A REGISTER_SHM or OPEN_CHANNEL for a new channel failed with `st`. Without an answer the daemon
 * may still register the segment, and nothing here could release it but the end of the
 * connection: so the connection is reset (as a timed-out zero-copy send resets it) and the error
 * returned. A refusal (a limit, shm not allowed, an old daemon) sends this call, and later ones
 * needing as much room, over ZeroMQ. */
static int channel_setup_failed(moe_client *c, int st, uint64_t data_size) {
    if (st == MOE_ERR_CLIENT_TIMEOUT || st == MOE_ERR_CLIENT_IO || st == MOE_ERR_CLIENT_PROTOCOL)
        return reset_connection(c, st);
    if (data_size < c->channel_refused) c->channel_refused = data_size;
    c->channel_refused_ns = now_ns();
    return CHANNEL_UNUSABLE;
}

static int channel_open(moe_client *c, uint64_t data_size) {
    moe_segment seg;
    int st = segment_create(c, MOE_CHANNEL_CTRL_BYTES + data_size, &seg, 1);
    if (st != MOE_OK) return channel_setup_failed(c, st, data_size);
    moe_channel_ctrl *k = seg.base;
    k->magic = MOE_CHANNEL_MAGIC; /* every other field is 0: a new object reads as zeros */
    moe_channel_open_req q = {seg.handle, 0, 0};
    moe_channel_open_resp resp;
    reply r = {0};
    st = call(c, 2, MOE_OP_OPEN_CHANNEL, &q, sizeof q, NULL, 0, &r);
    if (st < MOE_ERR_CLIENT_IO) st = take_body(c, &r, st, &resp, sizeof resp);
    reply_close(&r);
    if (st == MOE_OK && __atomic_load_n(&k->state, __ATOMIC_ACQUIRE) != MOE_CHANNEL_OPEN)
        st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "OPEN_CHANNEL answered, but the channel's state is %u", k->state);
    if (st != MOE_OK) {
        munmap(seg.base, seg.size);
        close(seg.fd);
        if (st < MOE_ERR_CLIENT_IO) {
            int unreg = unregister_shm(c, seg.handle, NULL);
            if (unreg >= MOE_ERR_CLIENT_IO) st = unreg;
        }
        return channel_setup_failed(c, st, data_size);
    }
    c->ch = (channel){.ctrl = k, .data = (uint8_t *)seg.base + MOE_CHANNEL_CTRL_BYTES, .data_size = data_size,
                      .size = seg.size, .handle = seg.handle, .epoch = resp.daemon_epoch,
                      .seq = __atomic_load_n(&k->req_seq, __ATOMIC_RELAXED), .connection = c->connection, .fd = seg.fd};
    return MOE_OK;
}

static uint64_t align64(uint64_t n) { return (n + 63) & ~(uint64_t)63; }

/* A channel whose data area holds `need` bytes: the current one, or a new one. MOE_OK,
 * CHANNEL_UNUSABLE (go over ZeroMQ) or a client-level error. */
static int channel_ready(moe_client *c, uint64_t need) {
    channel *ch = &c->ch;
    /* A look at the monitor costs about half a µs: calls in quick succession skip it. A daemon
     * gone since is noticed by the waiting call instead (an error, as for one killed while it
     * computes). Before a channel is opened the look drains events from before it. */
    const int64_t t = now_ns();
    c->call_ns = t;
    if (!ch->ctrl || t - c->monitor_looked_ns > CHANNEL_LOOK_NS) {
        c->monitor_looked_ns = t;
        if (connection_dropped(c)) {
            if (ch->ctrl) ch->connection = 0;
            c->channel_refused = UINT64_MAX; /* perhaps another daemon */
            c->channel_yielded = 0;          /* and the host's registrations are gone */
        }
    }
    if (ch->ctrl && ch->connection != c->connection) channel_forget(c); /* released with the connection */
    if (ch->ctrl) {
        moe_channel_ctrl *k = ch->ctrl;
        if (ch->unanswered && __atomic_load_n(&k->resp_seq, __ATOMIC_ACQUIRE) == ch->seq) ch->unanswered = 0;
        if (!ch->unanswered && need <= ch->data_size && __atomic_load_n(&k->state, __ATOMIC_ACQUIRE) == MOE_CHANNEL_OPEN &&
            k->daemon_epoch == ch->epoch)
            return MOE_OK;
        int st = channel_retire(c);
        if (st != MOE_OK) return st;
    }
    if (!channel_possible(c) || c->channel_yielded) return CHANNEL_UNUSABLE;
    if (c->channel_refused != UINT64_MAX && t - c->channel_refused_ns > CHANNEL_RETRY_NS) c->channel_refused = UINT64_MAX;
    /* The data area: a power of two from CHANNEL_MIN_DATA, or just what this call needs where
     * that was refused or exceeds the daemon's largest segment. */
    const uint64_t most = c->limits.max_segment_bytes ? c->limits.max_segment_bytes : UINT64_MAX / 4;
    if (most <= MOE_CHANNEL_CTRL_BYTES || need > most - MOE_CHANNEL_CTRL_BYTES) return CHANNEL_UNUSABLE;
    const uint64_t room = most - MOE_CHANNEL_CTRL_BYTES;
    uint64_t size = CHANNEL_MIN_DATA;
    while (size < need && size <= room / 2) size *= 2;
    if (size > room || size >= c->channel_refused) size = (need + 4095) & ~(uint64_t)4095;
    if (size < need || size > room || size >= c->channel_refused) return CHANNEL_UNUSABLE;
    return channel_open(c, size);
}

/* A spin answered; `switched`: one of its yields gave the CPU to another thread for a while. */
static void spin_answered(moe_client *c, int switched) {
    if (c->yielding) {
        c->yield_count = switched ? 0 : c->yield_count + 1;
        if (c->yield_count < CHANNEL_YIELD_TRIES) return;
    } else if (++c->yield_count < CHANNEL_YIELD_RETRY) {
        return;
    }
    c->yielding = !c->yielding;
    c->yield_count = 0;
}

/* Waits for resp_seq == seq: spinning first, then asleep on the futex in slices, looking at the
 * channel's state and the connection between them. A spin on the CPU the daemon's channel thread
 * shares would keep that thread from answering until the spin ends, so while `yielding` the spin
 * yields the CPU every round (every 8 rounds cost a same-CPU 1-token route ~0.3 µs more); where no
 * one else wants the CPU a yield only costs a system call, and the client stops yielding once
 * CHANNEL_YIELD_TRIES answers in a row came without one that switched (trying again every
 * CHANNEL_YIELD_RETRY answers, and whenever the spin saw no answer). */
static int channel_wait(moe_client *c, moe_channel_ctrl *k, uint32_t seq) {
    /* (Each clock read costs ~25 ns here, a share of a same-CPU route: the call's start and the
     * time after each yield serve twice.) */
    const int64_t start = c->call_ns;
    int64_t t = start;
    int switched = 0;
    for (unsigned i = 1;; i++) {
        if (__atomic_load_n(&k->resp_seq, __ATOMIC_ACQUIRE) == seq) {
            spin_answered(c, switched);
            return MOE_OK;
        }
        if (c->yielding || i % 8 == 0) {
            if (!c->yielding) t = now_ns();
            if (t - start >= CHANNEL_SPIN_NS) break;
            if (c->yielding) {
                sched_yield();
                const int64_t after = now_ns();
                switched |= after - t >= CHANNEL_SWITCH_NS;
                t = after;
                continue;
            }
        }
        cpu_relax();
    }
    c->yielding = 1;
    c->yield_count = 0;
    const int64_t deadline = start + (int64_t)c->timeout_ms * 1000000;
    int st = MOE_OK;
    for (;;) {
        __atomic_store_n(&k->client_sleeping, 1, __ATOMIC_SEQ_CST);
        uint32_t now = __atomic_load_n(&k->resp_seq, __ATOMIC_SEQ_CST);
        if (now == seq) break;
        if (__atomic_load_n(&k->state, __ATOMIC_ACQUIRE) != MOE_CHANNEL_OPEN || k->daemon_epoch != c->ch.epoch) {
            st = fail(c, MOE_ERR_CLIENT_IO, "the daemon closed the channel before it answered");
            break;
        }
        if (connection_dropped(c)) {
            c->ch.connection = 0; /* the daemon released it with the connection */
            c->channel_refused = UINT64_MAX;
            st = fail(c, MOE_ERR_CLIENT_IO, "the connection to the daemon ended before it answered (the daemon "
                                            "stopped or restarted; the next call reconnects)");
            break;
        }
        int64_t left = deadline - now_ns();
        if (left <= 0) {
            st = fail(c, MOE_ERR_CLIENT_TIMEOUT, "no answer within %d ms", c->timeout_ms);
            break;
        }
        futex_wait(&k->resp_seq, now, left < CHANNEL_SLICE_NS ? left : CHANNEL_SLICE_NS);
    }
    __atomic_store_n(&k->client_sleeping, 0, __ATOMIC_RELAXED);
    return st;
}

/* One request on the channel: descriptor, then req_seq (seq_cst: the daemon's sleeping flag is
 * read after it, the other half of the doorbell's Dekker pair), then a wake-up if it sleeps. */
static int channel_exchange(moe_client *c, const moe_route_req_v2 *q, moe_route_resp_v2 *resp) {
    channel *ch = &c->ch;
    moe_channel_ctrl *k = ch->ctrl;
    const uint64_t id = ++c->next_id;
    memcpy(&k->request, q, sizeof *q);
    k->request_id = id;
    const uint32_t seq = ch->seq + 1;
    __atomic_store_n(&k->req_seq, seq, __ATOMIC_SEQ_CST);
    ch->seq = seq;
    if (__atomic_load_n(&k->daemon_sleeping, __ATOMIC_SEQ_CST)) futex_wake(&k->req_seq);
    int st = channel_wait(c, k, seq);
    if (st != MOE_OK) {
        ch->unanswered = 1;
        return st;
    }
    if (k->answer_request_id != id) {
        ch->unanswered = 1;
        return fail(c, MOE_ERR_CLIENT_PROTOCOL, "channel answer for request %llu, expected %llu",
                    (unsigned long long)k->answer_request_id, (unsigned long long)id);
    }
    /* the daemon's text (not formatted: snprintf cost ~0.1 µs a call) */
    uint32_t n = k->message_len < sizeof k->message ? k->message_len : (uint32_t)sizeof k->message;
    if (n > sizeof c->error - 1) n = sizeof c->error - 1;
    memcpy(c->error, k->message, n);
    c->error[n] = '\0';
    memcpy(resp, &k->response, sizeof *resp);
    return (int)k->status;
}

/* ROUTE over the channel. Inline buffers (copy_inline: moe_route, moe_route_ex) are copied into
 * the data area and the outputs back on success; shm buffers pass through. CHANNEL_UNUSABLE: the
 * call goes over ZeroMQ (no channel, an inline buffer without copy_inline, inputs larger than
 * ZeroMQ would accept, which the daemon answers TOO_LARGE there). */
static int channel_route(moe_client *c, const moe_route_req_v2 *request, const void *const src[5], void *const dst[5],
                         moe_route_resp_v2 *resp, int copy_inline) {
    if (!c->ch.ctrl && !channel_possible(c)) return CHANNEL_UNUSABLE;
    moe_route_req_v2 q = *request;
    moe_buffer_ref *ref[5] = {&q.base.input, &q.base.weights, &q.base.ids, &q.token_ids, &q.mask};
    uint64_t at[5] = {0}, need = 0, inline_in = 0;
    int copied[5] = {0};
    const uint64_t most = c->limits.max_segment_bytes ? c->limits.max_segment_bytes : UINT64_MAX / 8;
    for (int i = 0; i < 5; i++) {
        if (ref[i]->kind == MOE_BUF_SHM || ref[i]->kind == MOE_BUF_NONE) continue;
        const int output = i == 1 || i == 2;
        if (ref[i]->kind != MOE_BUF_INLINE || !copy_inline || ref[i]->length > most ||
            (ref[i]->length && !(output ? dst[i] : src[i])))
            return CHANNEL_UNUSABLE;
        copied[i] = 1;
        at[i] = need;
        need += align64(ref[i]->length);
        if (!output) inline_in += ref[i]->length;
    }
    if (inline_in > c->hello.max_message_bytes) return CHANNEL_UNUSABLE;
    int st = channel_ready(c, need);
    if (st != MOE_OK) return st;
    for (int i = 0; i < 5; i++) {
        if (!copied[i]) continue;
        ref[i]->kind = MOE_BUF_SHM;
        ref[i]->handle = c->ch.handle;
        ref[i]->offset = MOE_CHANNEL_CTRL_BYTES + at[i];
        if (i != 1 && i != 2 && ref[i]->length) memcpy(c->ch.data + at[i], src[i], ref[i]->length);
    }
    c->last_path = MOE_ROUTE_PATH_CHANNEL;
    st = channel_exchange(c, &q, resp);
    if (st == MOE_OK) {
        for (int i = 1; i <= 2; i++)
            if (copied[i] && ref[i]->length) memcpy(dst[i], c->ch.data + at[i], ref[i]->length);
    }
    return st;
}

static void route_info(const moe_route_resp_v2 *resp, moe_route_info *info, uint32_t served_by) {
    info->served_by = served_by;
    info->tokens = resp->base.tokens;
    info->nonfinite_count = resp->base.nonfinite_count;
    info->first_nonfinite_token = resp->base.first_nonfinite_token;
    info->compute_ns = resp->base.compute_ns;
    info->top_k = resp->base.top_k;
    info->fallback_cast = (int32_t)resp->base.fallback_cast;
    info->masked_tokens = resp->masked_tokens;
    info->placement_epoch = resp->placement_epoch;
    info->first_bad_token = resp->first_bad_token;
    info->hash_routed = (int32_t)resp->hash_routed;
}

/* ROUTE in the negotiated version, on the channel when there is one for it (copy_inline: inline
 * buffers may be copied through it), else over ZeroMQ. refs: input, weights, ids, token ids, mask
 * (the last two MOE_BUF_NONE when absent; a version-1 request cannot carry them). */
static int route(moe_client *c, uint32_t layer_id, moe_dtype dtype, uint64_t tokens, const moe_buffer_ref refs[5],
                 const void *input, const void *token_ids, uint32_t token_id_bytes, const uint8_t *mask,
                 float *weights, int32_t *ids, moe_route_info *info, int copy_inline) {
    if (info) memset(info, 0, sizeof *info);
    c->last_path = MOE_ROUTE_PATH_ZMQ;
    moe_route_req_v2 q;
    memset(&q, 0, sizeof q);
    q.base.layer_id = layer_id;
    q.base.dtype = (uint8_t)dtype;
    q.base.tokens = tokens;
    q.base.input = refs[0];
    q.base.weights = refs[1];
    q.base.ids = refs[2];
    q.token_ids = refs[3];
    q.mask = refs[4];
    q.token_id_bytes = token_id_bytes;
    uint16_t version = c->version >= 2 ? 2 : 1;
    if (version < 2 && (refs[3].kind != MOE_BUF_NONE || refs[4].kind != MOE_BUF_NONE || token_id_bytes))
        return need_v2(c, "a ROUTE with token ids or a padding mask");
    part parts[3];
    int n = 0;
    const void *src[3] = {input, token_ids, mask};
    const int in_ref[3] = {0, 3, 4};
    for (int i = 0; i < 3; i++) {
        const moe_buffer_ref *b = &refs[in_ref[i]];
        if (b->kind != MOE_BUF_INLINE) continue;
        if (b->length && !src[i])
            return fail(c, MOE_ERR_CLIENT_ARG, "inline buffer %d has no memory for %llu bytes", in_ref[i],
                        (unsigned long long)b->length);
        parts[n++] = (part){src[i], (size_t)b->length, NULL, 0};
    }
    moe_route_resp_v2 resp;
    memset(&resp, 0, sizeof resp);
    if (version >= 2) {
        const void *const from[5] = {input, NULL, NULL, token_ids, mask};
        void *const to[5] = {NULL, weights, ids, NULL, NULL};
        int st = channel_route(c, &q, from, to, &resp, copy_inline);
        if (st != CHANNEL_UNUSABLE) {
            if (info && st < MOE_ERR_CLIENT_IO) route_info(&resp, info, MOE_SERVED_BY_CHANNEL);
            return st;
        }
    }
    reply r = {0};
    int st = version >= 2 ? call(c, 2, MOE_OP_ROUTE, &q, sizeof q, parts, n, &r)
                          : call(c, 1, MOE_OP_ROUTE, &q.base, sizeof q.base, parts, n, &r);
    if (st >= MOE_ERR_CLIENT_IO) return st;
    /* Every ROUTE answer carries the route body of its version; an error answer without it (a
     * header the daemon could not read) keeps its status. */
    size_t want = version >= 2 ? sizeof resp : sizeof resp.base;
    if (r.header.body_size == want) {
        memcpy(&resp, r.body, want);
    } else if (st == MOE_OK) {
        st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "ROUTE answer body is %u bytes, expected %zu", r.header.body_size, want);
    }
    if (info && r.header.body_size == want) route_info(&resp, info, MOE_SERVED_BY_ZMQ);
    if (st == MOE_OK) {
        int f = 1;
        void *dst[2] = {weights, ids};
        for (int i = 0; i < 2; i++) {
            if (refs[1 + i].kind != MOE_BUF_INLINE) continue;
            if (f >= r.count || zmq_msg_size(&r.frames[f]) != refs[1 + i].length || (refs[1 + i].length && !dst[i])) {
                st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "output frame %d missing or of the wrong size", f);
                break;
            }
            if (refs[1 + i].length) memcpy(dst[i], zmq_msg_data(&r.frames[f]), refs[1 + i].length);
            f++;
        }
        if (st == MOE_OK && (f != r.count || r.dropped))
            st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "ROUTE answer has %d frames, expected %d", r.count + r.dropped, f);
    }
    reply_close(&r);
    return st;
}

/* moe_route_refs; copy_inline: inline buffers may go through the channel (moe_route). */
static int route_refs(moe_client *c, uint32_t layer_id, moe_dtype dtype, uint64_t tokens, const moe_buffer_ref refs[3],
                      const void *input, float *weights, int32_t *ids, moe_route_result *result, int copy_inline) {
    if (!c || !refs) return MOE_ERR_CLIENT_ARG;
    moe_buffer_ref all[5];
    memset(all, 0, sizeof all);
    memcpy(all, refs, 3 * sizeof *refs);
    all[3].kind = all[4].kind = MOE_BUF_NONE;
    moe_route_info info;
    int st = route(c, layer_id, dtype, tokens, all, input, NULL, 0, NULL, weights, ids, &info, copy_inline);
    if (result && st < MOE_ERR_CLIENT_IO) {
        result->nonfinite_count = info.nonfinite_count;
        result->first_nonfinite_token = info.first_nonfinite_token;
        result->fallback_cast = info.fallback_cast;
        result->compute_ns = info.compute_ns;
    }
    return st;
}

int moe_route_refs(moe_client *c, uint32_t layer_id, moe_dtype dtype, uint64_t tokens,
                   const moe_buffer_ref refs[3], const void *input, float *weights, int32_t *ids,
                   moe_route_result *result) {
    return route_refs(c, layer_id, dtype, tokens, refs, input, weights, ids, result, 0);
}

int moe_route_refs_ex(moe_client *c, uint32_t layer_id, moe_dtype dtype, uint64_t tokens,
                      const moe_buffer_ref refs[5], const void *input, const void *token_ids,
                      uint32_t token_id_bytes, const uint8_t *mask, float *weights, int32_t *ids,
                      moe_route_info *info) {
    if (!c || !refs) return MOE_ERR_CLIENT_ARG;
    return route(c, layer_id, dtype, tokens, refs, input, token_ids, token_id_bytes, mask, weights, ids, info, 0);
}

int moe_route_ex(moe_client *c, uint32_t layer_id, moe_dtype dtype, uint64_t tokens, const void *input,
                 size_t input_bytes, const void *token_ids, uint32_t token_id_bytes, const uint8_t *mask,
                 float *weights, int32_t *ids, size_t out_count, moe_route_info *info) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    moe_buffer_ref refs[5];
    memset(refs, 0, sizeof refs);
    refs[0].length = input_bytes;
    refs[1].length = (uint64_t)out_count * 4;
    refs[2].length = (uint64_t)out_count * 4;
    refs[3].kind = token_ids ? MOE_BUF_INLINE : MOE_BUF_NONE;
    refs[4].kind = mask ? MOE_BUF_INLINE : MOE_BUF_NONE;
    if (token_ids) {
        if (token_id_bytes && tokens > UINT64_MAX / token_id_bytes)
            return fail(c, MOE_ERR_CLIENT_ARG, "tokens = %llu: token ids too large", (unsigned long long)tokens);
        refs[3].length = tokens * token_id_bytes;
    } else if (token_id_bytes) {
        return fail(c, MOE_ERR_CLIENT_ARG, "token_id_bytes = %u without token ids", token_id_bytes);
    }
    if (mask) refs[4].length = tokens;
    if (out_count > UINT64_MAX / 4) return fail(c, MOE_ERR_CLIENT_ARG, "out_count = %zu too large", out_count);
    return route(c, layer_id, dtype, tokens, refs, input, token_ids, token_id_bytes, mask, weights, ids, info, 1);
}

int moe_route_prepared(moe_client *c, const moe_route_call *a) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    if (!a) return fail(c, MOE_ERR_CLIENT_ARG, "moe_route_prepared: no call");
    if (a->reserved) return fail(c, MOE_ERR_CLIENT_ARG, "moe_route_call.reserved = %u, must be 0", a->reserved);
    return moe_route_ex(c, a->layer_id, a->dtype, a->tokens, a->input, a->input_bytes, a->token_ids, a->token_id_bytes,
                        a->mask, a->weights, a->ids, a->out_count, a->info);
}

int moe_route(moe_client *c, uint32_t layer_id, moe_dtype dtype, uint64_t tokens, const void *input,
              size_t input_bytes, float *weights, int32_t *ids, size_t out_count, moe_route_result *result) {
    moe_buffer_ref refs[3];
    memset(refs, 0, sizeof refs);
    refs[0].length = input_bytes;
    refs[1].length = out_count * 4;
    refs[2].length = out_count * 4;
    return route_refs(c, layer_id, dtype, tokens, refs, input, weights, ids, result, 1);
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

int moe_set_placement(moe_client *c, uint32_t layer_id, uint32_t num_physical, uint32_t num_logical,
                      const int32_t *counts, const int32_t *physical, uint32_t total_replicas, uint64_t *epoch) {
    if (!c || (num_logical && !counts) || (total_replicas && !physical) || (!num_logical && total_replicas))
        return fail(c, MOE_ERR_CLIENT_ARG, "placement arrays missing (num_logical %u, total_replicas %u)", num_logical,
                    total_replicas);
    int st = need_v2(c, "moe_set_placement");
    if (st != MOE_OK) return st;
    moe_placement_req q = {layer_id, num_physical, num_logical, total_replicas};
    /* counts then physical ids, one frame (copied); removal (num_logical 0) has none. */
    part p = {counts, (size_t)num_logical * 4, physical, (size_t)total_replicas * 4};
    reply r = {0};
    st = num_logical ? call(c, c->version, MOE_OP_SET_PLACEMENT, &q, sizeof q, &p, 1, &r)
                     : call(c, c->version, MOE_OP_SET_PLACEMENT, &q, sizeof q, NULL, 0, &r);
    if (st >= MOE_ERR_CLIENT_IO) return st;
    moe_placement_resp resp;
    st = take_body(c, &r, st, &resp, sizeof resp);
    if (st == MOE_OK && epoch) *epoch = resp.epoch;
    reply_close(&r);
    return st;
}

int moe_clear_placement(moe_client *c, uint32_t layer_id, uint64_t *epoch) {
    return moe_set_placement(c, layer_id, 0, 0, NULL, NULL, 0, epoch);
}

int moe_expert_load(moe_client *c, uint32_t layer_id, int reset_window, uint64_t *totals, uint64_t *window,
                    uint32_t cap, moe_load_resp *out) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    int st = need_v2(c, "moe_expert_load");
    if (st != MOE_OK) return st;
    moe_load_req q = {layer_id, reset_window ? MOE_LOAD_RESET_WINDOW : 0u};
    reply r = {0};
    st = call(c, c->version, MOE_OP_EXPERT_LOAD, &q, sizeof q, NULL, 0, &r);
    if (st >= MOE_ERR_CLIENT_IO) return st;
    moe_load_resp resp;
    if (st != MOE_OK) {
        st = take_body(c, &r, st, out, sizeof *out);
        reply_close(&r);
        return st;
    }
    if (r.header.body_size != sizeof resp) {
        st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "EXPERT_LOAD answer body is %u bytes, expected %zu", r.header.body_size, sizeof resp);
    } else if (r.count != 2 || r.dropped) {
        st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "EXPERT_LOAD answer has %d frames, expected 2", r.count + r.dropped);
    } else {
        memcpy(&resp, r.body, sizeof resp);
        size_t e = resp.num_experts;
        if (zmq_msg_size(&r.frames[1]) != e * 16) {
            st = fail(c, MOE_ERR_CLIENT_PROTOCOL, "EXPERT_LOAD counters frame is %zu bytes, expected %zu for %zu experts",
                      zmq_msg_size(&r.frames[1]), e * 16, e);
        } else {
            const uint8_t *f = zmq_msg_data(&r.frames[1]);
            size_t n = e < cap ? e : cap;
            if (totals && n) memcpy(totals, f, n * 8);
            if (window && n) memcpy(window, f + e * 8, n * 8);
            if (out) *out = resp;
            if ((totals || window) && cap < e)
                st = fail(c, MOE_ERR_CLIENT_ARG, "counter buffers hold %u values, the layer has %zu experts (the first %u copied)",
                          cap, e, cap);
        }
    }
    reply_close(&r);
    return st;
}

int moe_set_channel(moe_client *c, int enabled) {
    if (!c) return MOE_ERR_CLIENT_ARG;
    c->channel_wanted = enabled != 0;
    c->channel_refused = UINT64_MAX;
    c->channel_yielded = 0;
    return !enabled && c->ch.ctrl ? channel_retire(c) : MOE_OK;
}

int moe_last_route_path(const moe_client *c) { return c ? c->last_path : -1; }
