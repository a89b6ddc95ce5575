/*
 * channel_parity — the C client's shared-memory channel against a real daemon: every ROUTE entry
 * point through a client that uses a channel and one told not to (moe_set_channel 0), compared
 * field by field and bit by bit. Driven by IntegrationTests/python/test_channels_c.py; every
 * check failure prints FAIL and exits 1.
 *
 * usage: channel_parity ENDPOINT MODE
 *   parity   deepseek-v3 fp32/bf16 1...1000 tokens (the data area grows), padding masks,
 *            deepseek-v4-hash with int32/int64 token ids, shm segments through moe_route_shm and
 *            moe_route_refs_ex, and errors (unknown layer, size mismatch, bad mask, token ids,
 *            dtype, bounds, handle): the same status, moe_route_info and outputs on both paths;
 *            moe_last_route_path says which path served
 *   envoff   run with MOE_ROUTER_CHANNEL=0: every ROUTE goes over ZeroMQ until moe_set_channel(1)
 *   zmqonly  the daemon offers no channel (tcp): every ROUTE goes over ZeroMQ, results as usual
 *   yield    against --max-registrations 3: the channel gives its registration back to a host
 *            segment that needs it, and comes back once one is released
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_router.h"
#include "route_dump.h"

#define OK(cl, call)                                                                                                   \
    do {                                                                                                               \
        int st_ = (call);                                                                                              \
        CHECK(st_ == MOE_OK, "%s: %s (%s)", #call, moe_status_name(st_), moe_last_error(cl));                         \
    } while (0)

static const char *endpoint;
static moe_client *chan, *zmq; /* the channel client and the ZeroMQ one */
static int compared;

static moe_client *connect_client(int channel) {
    moe_client *c = NULL;
    int st = moe_connect(endpoint, 5000, &c);
    CHECK(st == MOE_OK, "connect: %s", moe_status_name(st));
    if (!channel) OK(c, moe_set_channel(c, 0));
    return c;
}

static moe_layer_info find(moe_client *c, const char *name) {
    moe_layer_info l;
    OK(c, moe_find_layer(c, name, &l));
    return l;
}

/* What one call produced. */
typedef struct outcome {
    int status, path;
    moe_route_info info;
    float *w;
    int32_t *ids;
    size_t out_bytes;
    char message[512];
} outcome;

static void outcome_free(outcome *o) {
    free(o->w);
    free(o->ids);
}

/* Both outcomes agree: status, every moe_route_info field but the time and the path, the outputs (when OK). */
static void same(const char *what, outcome *a, outcome *b, int want_status) {
    CHECK(a->status == want_status, "%s: channel client got %s, expected %s (%s)", what, moe_status_name(a->status),
          moe_status_name(want_status), a->message);
    CHECK(a->status == b->status, "%s: channel %s, ZeroMQ %s (%s | %s)", what, moe_status_name(a->status),
          moe_status_name(b->status), a->message, b->message);
    a->info.compute_ns = b->info.compute_ns = 0;
    /* which path answered is the one field that differs (route_ex checks it against the path) */
    a->info.served_by = b->info.served_by = 0;
    CHECK(memcmp(&a->info, &b->info, sizeof a->info) == 0,
          "%s: route info differs: tokens %llu/%llu top_k %u/%u nonfinite %llu/%llu first_nonfinite %llu/%llu masked "
          "%llu/%llu first_bad %llu/%llu hash %d/%d fallback %d/%d",
          what, (unsigned long long)a->info.tokens, (unsigned long long)b->info.tokens, a->info.top_k, b->info.top_k,
          (unsigned long long)a->info.nonfinite_count, (unsigned long long)b->info.nonfinite_count,
          (unsigned long long)a->info.first_nonfinite_token, (unsigned long long)b->info.first_nonfinite_token,
          (unsigned long long)a->info.masked_tokens, (unsigned long long)b->info.masked_tokens,
          (unsigned long long)a->info.first_bad_token, (unsigned long long)b->info.first_bad_token, a->info.hash_routed,
          b->info.hash_routed, a->info.fallback_cast, b->info.fallback_cast);
    if (a->status == MOE_OK)
        CHECK(memcmp(a->w, b->w, a->out_bytes) == 0 && memcmp(a->ids, b->ids, a->out_bytes) == 0,
              "%s: outputs differ between the paths", what);
    if (a->status != MOE_OK) printf("error %s: %s | channel: %s | zmq: %s\n", what, moe_status_name(a->status), a->message, b->message);
    compared++;
}

static void expect_path(const char *what, const outcome *o, int want) {
    CHECK(o->path == want, "%s: served by path %d, expected %d", what, o->path, want);
}

/* moe_route_ex with every buffer inline. */
static outcome route_ex(moe_client *c, uint32_t layer, moe_dtype dtype, uint64_t T, const void *x, size_t in_bytes,
                        const void *tids, uint32_t tid_bytes, const uint8_t *mask, size_t out_count) {
    outcome o = {0};
    o.out_bytes = out_count * 4;
    o.w = calloc(out_count + 1, 4);
    o.ids = calloc(out_count + 1, 4);
    memset(o.w, 0x7f, o.out_bytes);
    memset(o.ids, 0x7f, o.out_bytes);
    o.status = moe_route_ex(c, layer, dtype, T, x, in_bytes, tids, tid_bytes, mask, o.w, o.ids, out_count, &o.info);
    o.path = moe_last_route_path(c);
    snprintf(o.message, sizeof o.message, "%s", moe_last_error(c));
    /* info.served_by names the path the daemon's answer came by; 0 when none came */
    const uint32_t served = o.status >= MOE_ERR_CLIENT_IO ? 0u
                            : o.path == MOE_ROUTE_PATH_CHANNEL ? MOE_SERVED_BY_CHANNEL : MOE_SERVED_BY_ZMQ;
    CHECK(o.info.served_by == served, "status %d, path %d: info.served_by %u, expected %u", o.status, o.path,
          o.info.served_by, served);
    return o;
}

/* The same moe_route_ex on both clients; the channel client must use its channel. */
static void both_ex(const char *what, uint32_t layer, moe_dtype dtype, uint64_t T, const void *x, size_t in_bytes,
                    const void *tids, uint32_t tid_bytes, const uint8_t *mask, size_t out_count, int want) {
    outcome a = route_ex(chan, layer, dtype, T, x, in_bytes, tids, tid_bytes, mask, out_count);
    outcome b = route_ex(zmq, layer, dtype, T, x, in_bytes, tids, tid_bytes, mask, out_count);
    expect_path(what, &a, MOE_ROUTE_PATH_CHANNEL);
    expect_path(what, &b, MOE_ROUTE_PATH_ZMQ);
    same(what, &a, &b, want);
    outcome_free(&a);
    outcome_free(&b);
}

static void *input(moe_dtype dtype, uint64_t T, uint32_t E) {
    void *x = malloc(T * E * 4 + 1);
    if (dtype == MOE_DTYPE_BF16) dump_fill_bf16(x, T, E);
    else dump_fill_fp32(x, T, E);
    return x;
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void scored_layers(void) {
    moe_layer_info l = find(chan, "deepseek-v3");
    const uint32_t E = l.num_experts, k = l.top_k;
    const uint64_t counts[] = {1, 2, 7, 64, 300, 1000};
    char what[128];
    for (int d = 0; d < 2; d++) {
        moe_dtype dtype = d ? MOE_DTYPE_BF16 : MOE_DTYPE_FP32;
        size_t esize = d ? 2 : 4;
        for (size_t n = 0; n < sizeof counts / sizeof *counts; n++) {
            uint64_t T = counts[n];
            void *x = input(dtype, T, E);
            snprintf(what, sizeof what, "deepseek-v3 %s %llu tokens", d ? "bf16" : "fp32", (unsigned long long)T);
            both_ex(what, l.layer_id, dtype, T, x, T * E * esize, NULL, 0, NULL, T * k, MOE_OK);
            /* padding masks: every third row */
            uint8_t *mask = calloc(T, 1);
            for (uint64_t t = 0; t < T; t += 3) mask[t] = 1;
            snprintf(what, sizeof what, "deepseek-v3 %s %llu tokens, masked", d ? "bf16" : "fp32", (unsigned long long)T);
            both_ex(what, l.layer_id, dtype, T, x, T * E * esize, NULL, 0, mask, T * k, MOE_OK);
            free(mask);
            free(x);
        }
    }
    /* the version-1 entry point and its result */
    const uint64_t T = 7;
    float *x = input(MOE_DTYPE_FP32, T, E);
    float w[2][7 * 8];
    int32_t ids[2][7 * 8];
    moe_route_result res[2];
    OK(chan, moe_route(chan, l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, w[0], ids[0], T * k, &res[0]));
    CHECK(moe_last_route_path(chan) == MOE_ROUTE_PATH_CHANNEL, "moe_route: path %d", moe_last_route_path(chan));
    OK(zmq, moe_route(zmq, l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, w[1], ids[1], T * k, &res[1]));
    CHECK(moe_last_route_path(zmq) == MOE_ROUTE_PATH_ZMQ, "moe_route over ZeroMQ: path %d", moe_last_route_path(zmq));
    res[0].compute_ns = res[1].compute_ns = 0;
    CHECK(memcmp(w[0], w[1], sizeof w[0]) == 0 && memcmp(ids[0], ids[1], sizeof ids[0]) == 0 &&
              memcmp(&res[0], &res[1], sizeof res[0]) == 0,
          "moe_route differs between the paths");
    /* non-finite input (clamped by default): the counts agree */
    x[5] = NAN;
    x[E + 3] = INFINITY;
    both_ex("deepseek-v3 non-finite input", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, NULL, 0, NULL, T * k, MOE_OK);
    /* moe_route_prepared: moe_route_ex's arguments in a struct, the same answer on either path */
    for (int i = 0; i < 2; i++) {
        moe_client *c = i ? zmq : chan;
        moe_route_info info;
        moe_route_call call = {.layer_id = l.layer_id, .dtype = MOE_DTYPE_FP32, .tokens = T, .input = x,
                               .input_bytes = T * E * 4, .weights = w[i], .ids = ids[i], .out_count = T * k, .info = &info};
        OK(c, moe_route_prepared(c, &call));
        CHECK(info.served_by == (i ? MOE_SERVED_BY_ZMQ : MOE_SERVED_BY_CHANNEL), "moe_route_prepared: served_by %u",
              info.served_by);
        CHECK(info.nonfinite_count == 2, "moe_route_prepared: nonfinite %llu", (unsigned long long)info.nonfinite_count);
        call.reserved = 1;
        CHECK(moe_route_prepared(c, &call) == MOE_ERR_CLIENT_ARG && strstr(moe_last_error(c), "reserved"),
              "moe_route_prepared with reserved != 0: %s", moe_last_error(c));
        CHECK(moe_route_prepared(c, NULL) == MOE_ERR_CLIENT_ARG, "moe_route_prepared(NULL call)");
    }
    CHECK(moe_route_prepared(NULL, NULL) == MOE_ERR_CLIENT_ARG, "moe_route_prepared(NULL client)");
    CHECK(memcmp(w[0], w[1], sizeof w[0]) == 0 && memcmp(ids[0], ids[1], sizeof ids[0]) == 0,
          "moe_route_prepared differs between the paths");
    free(x);
    printf("scored ok\n");
}

static void hash_layer(void) {
    moe_layer_info l = find(chan, "deepseek-v4-hash");
    moe_layer_info_v2 v2;
    OK(chan, moe_layer_v2(chan, l.layer_id, &v2));
    const uint32_t E = l.num_experts, k = l.top_k;
    const uint64_t vocab = v2.ext.hash_vocab, T = 100;
    CHECK(vocab > 0, "deepseek-v4-hash has no tid2eid");
    float *x = input(MOE_DTYPE_FP32, T, E);
    int32_t *t32 = malloc(T * 4);
    int64_t *t64 = malloc(T * 8);
    for (uint64_t t = 0; t < T; t++) {
        uint64_t id = t == 0 ? 0 : t == 1 ? vocab - 1 : splitmix64(t * 77) % vocab;
        t32[t] = (int32_t)id;
        t64[t] = (int64_t)id;
    }
    both_ex("hash int32 ids", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, t32, 4, NULL, T * k, MOE_OK);
    both_ex("hash int64 ids", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, t64, 8, NULL, T * k, MOE_OK);
    uint8_t *mask = calloc(T, 1);
    mask[3] = mask[50] = 1;
    both_ex("hash int64 ids, masked", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, t64, 8, mask, T * k, MOE_OK);
    /* the errors a hash layer has */
    both_ex("hash layer without token ids", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, NULL, 0, NULL, T * k,
            MOE_ERR_TOKEN_ID);
    t32[7] = (int32_t)vocab;
    both_ex("token id = vocab", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, t32, 4, NULL, T * k, MOE_ERR_TOKEN_ID);
    t32[7] = 0;
    t32[9] = -1;
    both_ex("token id -1", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, t32, 4, NULL, T * k, MOE_ERR_TOKEN_ID);
    t32[9] = 0;
    t32[3] = -5; /* a padding row's id is not looked at */
    both_ex("bad token id on a padding row", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, t32, 4, mask, T * k, MOE_OK);
    both_ex("token_id_bytes 2", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, t32, 2, NULL, T * k, MOE_ERR_BAD_FIELD);
    free(mask);
    free(t32);
    free(t64);
    free(x);
    printf("hash ok\n");
}

static void inline_errors(void) {
    moe_layer_info l = find(chan, "deepseek-v3");
    const uint32_t E = l.num_experts, k = l.top_k;
    const uint64_t T = 4;
    float *x = input(MOE_DTYPE_FP32, T, E);
    both_ex("unknown layer", 9999, MOE_DTYPE_FP32, T, x, T * E * 4, NULL, 0, NULL, T * k, MOE_ERR_UNKNOWN_LAYER);
    both_ex("input one value short", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4 - 4, NULL, 0, NULL, T * k,
            MOE_ERR_SIZE_MISMATCH);
    both_ex("outputs one row short", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, NULL, 0, NULL, (T - 1) * k,
            MOE_ERR_SIZE_MISMATCH);
    both_ex("input as bf16 of an fp32 size", l.layer_id, MOE_DTYPE_BF16, T, x, T * E * 4, NULL, 0, NULL, T * k,
            MOE_ERR_SIZE_MISMATCH);
    both_ex("dtype 7", l.layer_id, (moe_dtype)7, T, x, T * E * 4, NULL, 0, NULL, T * k, MOE_ERR_BAD_DTYPE);
    uint8_t mask[4] = {0, 2, 0, 1};
    both_ex("mask byte 2", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, NULL, 0, mask, T * k, MOE_ERR_BAD_MASK);
    both_ex("token ids on a scored layer", l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, (int32_t[4]){1, 2, 3, 4}, 4, NULL,
            T * k, MOE_OK);
    free(x);
    printf("errors ok\n");
}

/* Buffers in segments the client registered: moe_route_shm, moe_route_refs_ex (a mask in shm
 * too), moe_route_refs with inline buffers (always ZeroMQ), and shm errors. */
static void shm_buffers(void) {
    moe_layer_info l = find(chan, "deepseek-v3");
    const uint32_t E = l.num_experts, k = l.top_k;
    const uint64_t T = 64, in_bytes = T * E * 2, out_bytes = T * k * 4;
    void *x = input(MOE_DTYPE_BF16, T, E);
    moe_client *cl[2] = {chan, zmq};
    moe_segment seg[2];
    outcome o[2];
    for (int i = 0; i < 2; i++) {
        OK(cl[i], moe_segment_create(cl[i], in_bytes + 2 * out_bytes + 4096, &seg[i]));
        memcpy(seg[i].base, x, in_bytes);
        moe_route_result res;
        OK(cl[i], moe_route_shm(cl[i], l.layer_id, MOE_DTYPE_BF16, T, &seg[i], &l, 0, in_bytes, in_bytes + out_bytes, &res));
        CHECK(moe_last_route_path(cl[i]) == (i ? MOE_ROUTE_PATH_ZMQ : MOE_ROUTE_PATH_CHANNEL), "moe_route_shm path %d",
              moe_last_route_path(cl[i]));
    }
    CHECK(memcmp((char *)seg[0].base + in_bytes, (char *)seg[1].base + in_bytes, 2 * out_bytes) == 0,
          "moe_route_shm outputs differ between the paths");
    uint8_t *want = malloc(2 * out_bytes);
    memcpy(want, (char *)seg[0].base + in_bytes, 2 * out_bytes);
    /* the same through moe_route_refs_ex, a mask in the segment too */
    for (int i = 0; i < 2; i++) {
        uint8_t *m = (uint8_t *)seg[i].base + in_bytes + 2 * out_bytes;
        for (uint64_t t = 0; t < T; t++) m[t] = t % 5 == 0;
        memset((char *)seg[i].base + in_bytes, 0, 2 * out_bytes);
        moe_buffer_ref refs[5] = {{MOE_BUF_SHM, 0, seg[i].handle, 0, in_bytes},
                                  {MOE_BUF_SHM, 0, seg[i].handle, in_bytes, out_bytes},
                                  {MOE_BUF_SHM, 0, seg[i].handle, in_bytes + out_bytes, out_bytes},
                                  {MOE_BUF_NONE, 0, 0, 0, 0},
                                  {MOE_BUF_SHM, 0, seg[i].handle, in_bytes + 2 * out_bytes, T}};
        memset(&o[i], 0, sizeof o[i]);
        o[i].status = moe_route_refs_ex(cl[i], l.layer_id, MOE_DTYPE_BF16, T, refs, NULL, NULL, 0, NULL, NULL, NULL, &o[i].info);
        o[i].path = moe_last_route_path(cl[i]);
        snprintf(o[i].message, sizeof o[i].message, "%s", moe_last_error(cl[i]));
        o[i].w = malloc(out_bytes);
        o[i].ids = malloc(out_bytes);
        o[i].out_bytes = out_bytes;
        memcpy(o[i].w, (char *)seg[i].base + in_bytes, out_bytes);
        memcpy(o[i].ids, (char *)seg[i].base + in_bytes + out_bytes, out_bytes);
    }
    expect_path("moe_route_refs_ex shm", &o[0], MOE_ROUTE_PATH_CHANNEL);
    same("moe_route_refs_ex shm with a mask", &o[0], &o[1], MOE_OK);
    CHECK(o[0].info.masked_tokens == (T + 4) / 5, "masked_tokens %llu", (unsigned long long)o[0].info.masked_tokens);
    outcome_free(&o[0]);
    outcome_free(&o[1]);
    /* shm errors, the same on both paths */
    const struct {
        const char *what;
        uint64_t in_off, w_off, ids_off, handle_xor;
        int want;
    } bad[] = {
        {"input past the end", in_bytes + 2 * out_bytes, 0, out_bytes, 0, MOE_ERR_OUT_OF_BOUNDS},
        {"weights overlap the input", 0, 64, in_bytes + out_bytes, 0, MOE_ERR_OVERLAP},
        {"misaligned weights", 0, in_bytes + 2, in_bytes + out_bytes + 64, 0, MOE_ERR_MISALIGNED},
        {"unknown handle", 0, in_bytes, in_bytes + out_bytes, 0x5a5a, MOE_ERR_UNKNOWN_HANDLE},
    };
    for (size_t b = 0; b < sizeof bad / sizeof *bad; b++) {
        for (int i = 0; i < 2; i++) {
            moe_segment s = seg[i];
            s.handle ^= bad[b].handle_xor;
            memset(&o[i], 0, sizeof o[i]);
            moe_route_result res;
            o[i].status = moe_route_shm(cl[i], l.layer_id, MOE_DTYPE_BF16, T, &s, &l, bad[b].in_off, bad[b].w_off,
                                        bad[b].ids_off, &res);
            o[i].path = moe_last_route_path(cl[i]);
            snprintf(o[i].message, sizeof o[i].message, "%s", moe_last_error(cl[i]));
        }
        expect_path(bad[b].what, &o[0], MOE_ROUTE_PATH_CHANNEL);
        same(bad[b].what, &o[0], &o[1], bad[b].want);
    }
    /* inline buffers in moe_route_refs: ZeroMQ, even on the channel client */
    float w[64 * 8];
    int32_t ids[64 * 8];
    moe_buffer_ref inl[3] = {{MOE_BUF_INLINE, 0, 0, 0, in_bytes}, {MOE_BUF_INLINE, 0, 0, 0, out_bytes},
                             {MOE_BUF_INLINE, 0, 0, 0, out_bytes}};
    moe_route_result res;
    OK(chan, moe_route_refs(chan, l.layer_id, MOE_DTYPE_BF16, T, inl, x, w, ids, &res));
    CHECK(moe_last_route_path(chan) == MOE_ROUTE_PATH_ZMQ, "moe_route_refs with inline buffers: path %d",
          moe_last_route_path(chan));
    CHECK(memcmp(w, want, out_bytes) == 0 && memcmp(ids, want + out_bytes, out_bytes) == 0,
          "moe_route_refs (inline) differs from moe_route_shm");
    free(want);
    for (int i = 0; i < 2; i++) OK(cl[i], moe_segment_destroy(cl[i], &seg[i]));
    /* and the channel serves the next inline call again */
    both_ex("after shm", l.layer_id, MOE_DTYPE_BF16, T, x, in_bytes, NULL, 0, NULL, T * k, MOE_OK);
    free(x);
    printf("shm ok\n");
}

static void mode_parity(void) {
    chan = connect_client(1);
    zmq = connect_client(0);
    moe_hello_ext x;
    OK(chan, moe_limits(chan, &x));
    CHECK(x.features & MOE_FEATURE_CHANNELS, "the daemon offers no channels (features %#x)", x.features);
    CHECK(moe_last_route_path(chan) == MOE_ROUTE_PATH_ZMQ, "path before any ROUTE: %d", moe_last_route_path(chan));
    CHECK(moe_last_route_path(NULL) == -1, "moe_last_route_path(NULL)");
    scored_layers();
    hash_layer();
    inline_errors();
    shm_buffers();
    /* the statistics count every ROUTE, whichever path served it */
    moe_stats_resp a, b;
    OK(chan, moe_stats(chan, &a));
    moe_layer_info l = find(chan, "deepseek-v3");
    float x1[256] = {0}, w[8];
    int32_t ids[8];
    OK(chan, moe_route(chan, l.layer_id, MOE_DTYPE_FP32, 1, x1, sizeof x1, w, ids, 8, NULL));
    OK(chan, moe_stats(chan, &b));
    CHECK(b.routes == a.routes + 1, "STATS routes %llu then %llu after a channel ROUTE", (unsigned long long)a.routes,
          (unsigned long long)b.routes);
    moe_close(chan);
    moe_close(zmq);
    printf("parity ok (%d comparisons)\n", compared);
}

static void route_one(moe_client *c, int want_path, const char *what) {
    moe_layer_info l = find(c, "deepseek-v3");
    float x[256], w[8];
    int32_t ids[8];
    dump_fill_fp32(x, 1, 256);
    OK(c, moe_route(c, l.layer_id, MOE_DTYPE_FP32, 1, x, sizeof x, w, ids, 8, NULL));
    CHECK(moe_last_route_path(c) == want_path, "%s: path %d, expected %d", what, moe_last_route_path(c), want_path);
}

static void mode_envoff(void) {
    moe_client *c = connect_client(1);
    for (int i = 0; i < 3; i++) route_one(c, MOE_ROUTE_PATH_ZMQ, "MOE_ROUTER_CHANNEL=0");
    OK(c, moe_set_channel(c, 1));
    route_one(c, MOE_ROUTE_PATH_CHANNEL, "after moe_set_channel(1)");
    OK(c, moe_set_channel(c, 0));
    route_one(c, MOE_ROUTE_PATH_ZMQ, "after moe_set_channel(0)");
    moe_close(c);
    printf("envoff ok\n");
}

static void mode_zmqonly(void) {
    moe_client *c = connect_client(1);
    for (int i = 0; i < 3; i++) route_one(c, MOE_ROUTE_PATH_ZMQ, "no channel offered");
    moe_close(c);
    printf("zmqonly ok\n");
}

static void mode_yield(void) {
    moe_client *c = connect_client(1);
    route_one(c, MOE_ROUTE_PATH_CHANNEL, "first ROUTE");
    moe_stats_resp s;
    OK(c, moe_stats(c, &s));
    CHECK(s.registrations == 1, "registrations %llu with a channel open", (unsigned long long)s.registrations);
    moe_segment seg[3];
    for (int i = 0; i < 3; i++) OK(c, moe_segment_create(c, 4096, &seg[i])); /* the third takes the channel's place */
    OK(c, moe_stats(c, &s));
    CHECK(s.registrations == 3, "registrations %llu", (unsigned long long)s.registrations);
    route_one(c, MOE_ROUTE_PATH_ZMQ, "no room for a channel");
    route_one(c, MOE_ROUTE_PATH_ZMQ, "no room for a channel, again");
    OK(c, moe_segment_destroy(c, &seg[2]));
    route_one(c, MOE_ROUTE_PATH_CHANNEL, "room again");
    for (int i = 0; i < 2; i++) OK(c, moe_segment_destroy(c, &seg[i]));
    moe_close(c);
    printf("yield ok\n");
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    CHECK(argc >= 3, "usage: channel_parity ENDPOINT MODE");
    endpoint = argv[1];
    const char *mode = argv[2];
    if (strcmp(mode, "parity") == 0) mode_parity();
    else if (strcmp(mode, "envoff") == 0) mode_envoff();
    else if (strcmp(mode, "zmqonly") == 0) mode_zmqonly();
    else if (strcmp(mode, "yield") == 0) mode_yield();
    else CHECK(0, "unknown mode %s", mode);
    return 0;
}
