/*
 * protocol_v2 — the C client's protocol-2 API against a real daemon (or, mode v1daemon, against
 * one that speaks version 1 only). Driven by IntegrationTests/python/test_c_client_v2.py, which
 * starts the daemon each mode needs; every check failure prints FAIL and exits 1.
 *
 * usage: protocol_v2 ENDPOINT MODE [ARG]
 *   dump        deepseek-v3 ROUTE lines (route_dump.h) via moe_route, moe_route_ex and shm, which
 *               must agree (compared by the suite with the frozen version-1 client's)
 *   masks       padding masks: masked rows ids -1 / weights 0, the others as without a mask
 *   hash        deepseek-v4-hash: ids from the synthetic tid2eid, int32 and int64 token ids,
 *               weights sqrt(softplus) renormalized x rsf, typed errors for bad token ids
 *   placement   SET_PLACEMENT on deepseek-v3: physical ids replicas[e][t mod n], epochs, clear
 *   place-only  sets the placement that `placement` uses and leaves it (for the v1 client)
 *   load        EXPERT_LOAD totals/window against a count of the returned ids; window reset
 *   limits N    moe_limits / moe_stats_v2 against --max-registrations-per-uid N
 *   hostile     malformed version-2 requests, each with its typed status; the daemon serves on
 *   denied      run as a uid the daemon does not trust: control ops get MOE_ERR_NOT_PERMITTED
 *   v1daemon    against a version-1-only daemon: version-2 calls say MOE_ERR_BAD_VERSION
 *   malformed   against a scripted daemon whose answers break the protocol: MOE_ERR_CLIENT_PROTOCOL
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "moe_router.h"
#include "route_dump.h"

#define OK(call) CHECK((st = (call)) == MOE_OK, "%s: %s (%s)", #call, moe_status_name(st), moe_last_error(c))
#define EXPECT(call, want)                                                                                             \
    CHECK((st = (call)) == (want), "%s: %s, expected %s (%s)", #call, moe_status_name(st), moe_status_name(want),     \
          moe_last_error(c))

static const char *endpoint;
static moe_client *c;
static int st;

static moe_layer_info find(const char *name) {
    moe_layer_info l;
    OK(moe_find_layer(c, name, &l));
    return l;
}

/* One fp32 inline ROUTE of T rows through moe_route_ex. */
typedef struct routed {
    uint64_t T;
    uint32_t k;
    float *w;
    int32_t *ids;
    moe_route_info info;
} routed;

static routed route_ex(const moe_layer_info *l, const float *x, uint64_t T, const void *tids, uint32_t tid_bytes,
                       const uint8_t *mask, int want) {
    routed r = {T, l->top_k, calloc(T * l->top_k + 1, 4), calloc(T * l->top_k + 1, 4), {0}};
    st = moe_route_ex(c, l->layer_id, MOE_DTYPE_FP32, T, x, T * l->num_experts * 4, tids, tid_bytes, mask, r.w, r.ids,
                      T * l->top_k, &r.info);
    CHECK(st == want, "moe_route_ex: %s, expected %s (%s)", moe_status_name(st), moe_status_name(want), moe_last_error(c));
    return r;
}

static void routed_free(routed *r) {
    free(r->w);
    free(r->ids);
}

static float *logits(uint64_t T, uint32_t E) {
    float *x = malloc(T * E * 4);
    dump_fill_fp32(x, T, E);
    return x;
}

/* ---- dump ---------------------------------------------------------------------------------- */

static void mode_dump(void) {
    moe_layer_info l = find("deepseek-v3");
    const uint64_t counts[] = {7, 300};
    for (int d = 0; d < 2; d++) {
        moe_dtype dtype = d ? MOE_DTYPE_BF16 : MOE_DTYPE_FP32;
        size_t esize = d ? 2 : 4;
        for (int n = 0; n < 2; n++) {
            uint64_t T = counts[n];
            const uint32_t E = l.num_experts, k = l.top_k;
            size_t in_bytes = T * E * esize, out_bytes = T * k * 4;
            void *x = malloc(in_bytes);
            if (d) dump_fill_bf16(x, T, E);
            else dump_fill_fp32(x, T, E);
            float *w = malloc(out_bytes), *w2 = malloc(out_bytes);
            int32_t *ids = malloc(out_bytes), *ids2 = malloc(out_bytes);
            moe_route_result res;
            OK(moe_route(c, l.layer_id, dtype, T, x, in_bytes, w, ids, T * k, &res));
            moe_route_info info;
            OK(moe_route_ex(c, l.layer_id, dtype, T, x, in_bytes, NULL, 0, NULL, w2, ids2, T * k, &info));
            CHECK(memcmp(w, w2, out_bytes) == 0 && memcmp(ids, ids2, out_bytes) == 0, "moe_route_ex differs from moe_route");
            CHECK(info.tokens == T && info.top_k == k && info.masked_tokens == 0 && info.hash_routed == 0,
                  "route info tokens %llu top_k %u masked %llu hash %d", (unsigned long long)info.tokens, info.top_k,
                  (unsigned long long)info.masked_tokens, info.hash_routed);
            CHECK(info.fallback_cast == res.fallback_cast, "fallback_cast %d vs %d", info.fallback_cast, res.fallback_cast);
            /* shm: input and outputs in one segment, through both entry points. */
            moe_segment seg;
            OK(moe_segment_create(c, in_bytes + 2 * out_bytes, &seg));
            memcpy(seg.base, x, in_bytes);
            OK(moe_route_shm(c, l.layer_id, dtype, T, &seg, &l, 0, in_bytes, in_bytes + out_bytes, &res));
            CHECK(memcmp((char *)seg.base + in_bytes, w, out_bytes) == 0 &&
                      memcmp((char *)seg.base + in_bytes + out_bytes, ids, out_bytes) == 0,
                  "moe_route_shm differs from inline");
            memset((char *)seg.base + in_bytes, 0, 2 * out_bytes);
            moe_buffer_ref refs[5] = {{MOE_BUF_SHM, 0, seg.handle, 0, in_bytes},
                                      {MOE_BUF_SHM, 0, seg.handle, in_bytes, out_bytes},
                                      {MOE_BUF_SHM, 0, seg.handle, in_bytes + out_bytes, out_bytes},
                                      {MOE_BUF_NONE, 0, 0, 0, 0},
                                      {MOE_BUF_NONE, 0, 0, 0, 0}};
            OK(moe_route_refs_ex(c, l.layer_id, dtype, T, refs, NULL, NULL, 0, NULL, NULL, NULL, &info));
            CHECK(memcmp((char *)seg.base + in_bytes, w, out_bytes) == 0 &&
                      memcmp((char *)seg.base + in_bytes + out_bytes, ids, out_bytes) == 0,
                  "moe_route_refs_ex (shm) differs from inline");
            OK(moe_segment_destroy(c, &seg));
            dump_print(d ? "bf16" : "fp32", T, k, w, ids);
            free(x);
            free(w);
            free(w2);
            free(ids);
            free(ids2);
        }
    }
}

/* ---- masks --------------------------------------------------------------------------------- */

static void mode_masks(void) {
    moe_layer_info l = find("deepseek-v3");
    const uint32_t E = l.num_experts, k = l.top_k;
    moe_stats_resp_v2 s0, s1;
    OK(moe_stats_v2(c, &s0));
    const uint64_t sizes[] = {1, 16, 200}; /* 200 > --inline-tokens: a worker runs it */
    uint64_t masked_sent = 0;
    for (int n = 0; n < 3; n++) {
        uint64_t T = sizes[n];
        float *x = logits(T, E);
        routed plain = route_ex(&l, x, T, NULL, 0, NULL, MOE_OK);
        uint8_t *mask = calloc(T, 1);
        /* all zero: the same as no mask */
        routed zero = route_ex(&l, x, T, NULL, 0, mask, MOE_OK);
        CHECK(memcmp(plain.ids, zero.ids, T * k * 4) == 0 && memcmp(plain.w, zero.w, T * k * 4) == 0,
              "an all-zero mask changed the answer (T %llu)", (unsigned long long)T);
        CHECK(zero.info.masked_tokens == 0, "masked_tokens %llu", (unsigned long long)zero.info.masked_tokens);
        /* every third row padding, its logits NaN: they must not be read */
        uint64_t masked = 0;
        for (uint64_t t = 0; t < T; t++) {
            mask[t] = t % 3 == 1 || T == 1;
            if (mask[t]) {
                masked++;
                for (uint32_t e = 0; e < E; e++) x[t * E + e] = NAN;
            }
        }
        routed m = route_ex(&l, x, T, NULL, 0, mask, MOE_OK);
        masked_sent += masked;
        CHECK(m.info.masked_tokens == masked, "masked_tokens %llu, sent %llu", (unsigned long long)m.info.masked_tokens,
              (unsigned long long)masked);
        CHECK(m.info.nonfinite_count == 0, "nonfinite_count %llu: the padding rows' logits were read",
              (unsigned long long)m.info.nonfinite_count);
        for (uint64_t t = 0; t < T; t++)
            for (uint32_t j = 0; j < k; j++) {
                size_t i = t * k + j;
                if (mask[t])
                    CHECK(m.ids[i] == -1 && m.w[i] == 0.0f, "masked row %llu: id %d weight %g",
                          (unsigned long long)t, m.ids[i], m.w[i]);
                else
                    CHECK(m.ids[i] == plain.ids[i] && m.w[i] == plain.w[i], "row %llu col %u: %d:%g, unmasked %d:%g",
                          (unsigned long long)t, j, m.ids[i], m.w[i], plain.ids[i], plain.w[i]);
            }
        /* the mask in shared memory, outputs there too */
        size_t in_bytes = T * E * 4, out_bytes = T * k * 4;
        moe_segment seg;
        OK(moe_segment_create(c, in_bytes + 2 * out_bytes + T, &seg));
        memcpy(seg.base, x, in_bytes);
        memcpy((char *)seg.base + in_bytes + 2 * out_bytes, mask, T);
        moe_buffer_ref refs[5] = {{MOE_BUF_SHM, 0, seg.handle, 0, in_bytes},
                                  {MOE_BUF_SHM, 0, seg.handle, in_bytes, out_bytes},
                                  {MOE_BUF_SHM, 0, seg.handle, in_bytes + out_bytes, out_bytes},
                                  {MOE_BUF_NONE, 0, 0, 0, 0},
                                  {MOE_BUF_SHM, 0, seg.handle, in_bytes + 2 * out_bytes, T}};
        moe_route_info info;
        OK(moe_route_refs_ex(c, l.layer_id, MOE_DTYPE_FP32, T, refs, NULL, NULL, 0, NULL, NULL, NULL, &info));
        masked_sent += masked;
        CHECK(memcmp((char *)seg.base + in_bytes, m.w, out_bytes) == 0 &&
                  memcmp((char *)seg.base + in_bytes + out_bytes, m.ids, out_bytes) == 0,
              "shm mask answer differs from inline");
        CHECK(info.masked_tokens == masked, "shm masked_tokens %llu", (unsigned long long)info.masked_tokens);
        /* mixed: inline input and mask, shm outputs */
        moe_buffer_ref mixed[5] = {{MOE_BUF_INLINE, 0, 0, 0, in_bytes},
                                   {MOE_BUF_SHM, 0, seg.handle, in_bytes, out_bytes},
                                   {MOE_BUF_SHM, 0, seg.handle, in_bytes + out_bytes, out_bytes},
                                   {MOE_BUF_NONE, 0, 0, 0, 0},
                                   {MOE_BUF_INLINE, 0, 0, 0, T}};
        memset((char *)seg.base + in_bytes, 0, 2 * out_bytes);
        OK(moe_route_refs_ex(c, l.layer_id, MOE_DTYPE_FP32, T, mixed, x, NULL, 0, mask, NULL, NULL, &info));
        masked_sent += masked;
        CHECK(memcmp((char *)seg.base + in_bytes + out_bytes, m.ids, out_bytes) == 0, "mixed-buffer mask answer differs");
        OK(moe_segment_destroy(c, &seg));
        /* a mask byte other than 0/1 */
        if (T > 5) {
            mask[5] = 2;
            routed bad = route_ex(&l, x, T, NULL, 0, mask, MOE_ERR_BAD_MASK);
            CHECK(bad.info.first_bad_token == 5, "first_bad_token %llu, expected 5", (unsigned long long)bad.info.first_bad_token);
            routed_free(&bad);
        }
        routed_free(&plain);
        routed_free(&zero);
        routed_free(&m);
        free(mask);
        free(x);
    }
    OK(moe_stats_v2(c, &s1));
    CHECK(s1.ext.masked_tokens - s0.ext.masked_tokens == masked_sent, "STATS masked_tokens grew by %llu, sent %llu",
          (unsigned long long)(s1.ext.masked_tokens - s0.ext.masked_tokens), (unsigned long long)masked_sent);
    printf("masks ok (%llu padding rows)\n", (unsigned long long)masked_sent);
}

/* ---- hash ---------------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t i) {
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* TokenTable.synthetic (Sources/MoERouting/LayerSpec.swift): row t, column j. */
static int32_t table_id(uint64_t t, uint32_t j, uint32_t E, uint32_t k) {
    uint64_t base = splitmix64(t) % E, step = 1 + splitmix64(t + (1ull << 32)) % (E / k);
    return (int32_t)((base + j * step) % E);
}

static double sqrt_softplus(double x) { return sqrt(x > 20 ? x : log1p(exp(x))); }

static void mode_hash(void) {
    moe_layer_info l = find("deepseek-v4-hash");
    moe_layer_info_v2 v2;
    OK(moe_layer_v2(c, l.layer_id, &v2));
    const uint32_t E = l.num_experts, k = l.top_k;
    const uint64_t vocab = v2.ext.hash_vocab;
    CHECK(E == 384 && k == 6 && vocab == 129280, "deepseek-v4-hash: E %u k %u vocab %llu", E, k, (unsigned long long)vocab);
    CHECK(v2.info.scoring == MOE_SCORING_SQRTSOFTPLUS && v2.info.renormalize, "scoring %u renormalize %u", v2.info.scoring,
          v2.info.renormalize);
    CHECK(memcmp(&v2.info, &l, sizeof l) == 0, "moe_layer_v2's info differs from moe_find_layer's");
    moe_layer_info_v2 v3;
    OK(moe_layer_v2(c, find("deepseek-v3").layer_id, &v3));
    CHECK(v3.ext.hash_vocab == 0 && v3.ext.placement_epoch == 0 && v3.ext.num_physical == 0, "deepseek-v3's extension");

    moe_stats_resp_v2 s0, s1;
    OK(moe_stats_v2(c, &s0));
    const uint64_t T = 100;
    float *x = logits(T, E);
    int32_t *t32 = malloc(T * 4);
    int64_t *t64 = malloc(T * 8);
    for (uint64_t t = 0; t < T; t++) {
        uint64_t id = t == 0 ? 0 : t == 1 ? vocab - 1 : splitmix64(t * 77) % vocab;
        t32[t] = (int32_t)id;
        t64[t] = (int64_t)id;
    }
    routed a = route_ex(&l, x, T, t32, 4, NULL, MOE_OK);
    routed b = route_ex(&l, x, T, t64, 8, NULL, MOE_OK);
    CHECK(a.info.hash_routed == 1 && b.info.hash_routed == 1, "hash_routed %d %d", a.info.hash_routed, b.info.hash_routed);
    CHECK(memcmp(a.ids, b.ids, T * k * 4) == 0 && memcmp(a.w, b.w, T * k * 4) == 0, "int32 and int64 token ids differ");
    for (uint64_t t = 0; t < T; t++) {
        double sum = 0, s[64];
        for (uint32_t j = 0; j < k; j++) {
            int32_t want = table_id((uint64_t)t32[t], j, E, k);
            CHECK(a.ids[t * k + j] == want, "token %llu (id %d) column %u: expert %d, tid2eid says %d", (unsigned long long)t,
                  t32[t], j, a.ids[t * k + j], want);
            s[j] = sqrt_softplus(x[t * E + (uint32_t)want]);
            sum += s[j];
        }
        for (uint32_t j = 0; j < k; j++) {
            double want = s[j] / sum * v2.info.routed_scaling_factor;
            CHECK(fabs(a.w[t * k + j] - want) <= 2e-6 * want + 1e-7, "token %llu column %u: weight %.9g, expected %.9g",
                  (unsigned long long)t, j, a.w[t * k + j], want);
        }
    }
    /* a padding row among token ids */
    uint8_t *mask = calloc(T, 1);
    mask[3] = 1;
    routed m = route_ex(&l, x, T, t64, 8, mask, MOE_OK);
    CHECK(m.ids[3 * k] == -1 && m.w[3 * k] == 0 && m.ids[4 * k] == a.ids[4 * k] && m.info.masked_tokens == 1,
          "hash layer with a mask");
    routed_free(&m);

    /* bad and missing token ids */
    t32[7] = (int32_t)vocab;
    routed e1 = route_ex(&l, x, T, t32, 4, NULL, MOE_ERR_TOKEN_ID);
    CHECK(e1.info.first_bad_token == 7, "first_bad_token %llu, expected 7", (unsigned long long)e1.info.first_bad_token);
    t32[7] = 0;
    t32[9] = -1;
    routed e2 = route_ex(&l, x, T, t32, 4, NULL, MOE_ERR_TOKEN_ID);
    CHECK(e2.info.first_bad_token == 9, "negative id: first_bad_token %llu", (unsigned long long)e2.info.first_bad_token);
    t64[11] = (int64_t)1 << 32; /* int32-truncated it would be 0, a valid id */
    routed e3 = route_ex(&l, x, T, t64, 8, NULL, MOE_ERR_TOKEN_ID);
    CHECK(e3.info.first_bad_token == 11, "int64 id 2^32: first_bad_token %llu", (unsigned long long)e3.info.first_bad_token);
    routed e4 = route_ex(&l, x, T, NULL, 0, NULL, MOE_ERR_TOKEN_ID);
    CHECK(strlen(moe_last_error(c)) > 0, "no message for missing token ids");
    printf("missing ids: %s\n", moe_last_error(c));
    routed_free(&e1);
    routed_free(&e2);
    routed_free(&e3);
    routed_free(&e4);

    /* token ids in shared memory */
    size_t in_bytes = T * E * 4, out_bytes = T * k * 4;
    moe_segment seg;
    OK(moe_segment_create(c, in_bytes + 2 * out_bytes + T * 8, &seg));
    for (uint64_t t = 0; t < T; t++) t64[t] = t32[t] < 0 ? 5 : t32[t];
    memcpy(seg.base, x, in_bytes);
    memcpy((char *)seg.base + in_bytes + 2 * out_bytes, t64, T * 8);
    moe_buffer_ref refs[5] = {{MOE_BUF_SHM, 0, seg.handle, 0, in_bytes},
                              {MOE_BUF_SHM, 0, seg.handle, in_bytes, out_bytes},
                              {MOE_BUF_SHM, 0, seg.handle, in_bytes + out_bytes, out_bytes},
                              {MOE_BUF_SHM, 0, seg.handle, in_bytes + 2 * out_bytes, T * 8},
                              {MOE_BUF_NONE, 0, 0, 0, 0}};
    moe_route_info info;
    OK(moe_route_refs_ex(c, l.layer_id, MOE_DTYPE_FP32, T, refs, NULL, NULL, 8, NULL, NULL, NULL, &info));
    const int32_t *sids = (const int32_t *)((char *)seg.base + in_bytes + out_bytes);
    for (uint64_t t = 0; t < T; t++)
        for (uint32_t j = 0; j < k; j++)
            CHECK(sids[t * k + j] == table_id((uint64_t)t64[t], j, E, k), "shm token ids: token %llu", (unsigned long long)t);
    CHECK(info.hash_routed == 1, "shm hash_routed");
    OK(moe_segment_destroy(c, &seg));

    /* token ids on a scored layer: accepted and not used (the answer equals one without) */
    moe_layer_info ds = find("deepseek-v3");
    float *xs = logits(4, ds.num_experts);
    int32_t four[4] = {1, 2, 3, 4};
    routed p1 = route_ex(&ds, xs, 4, NULL, 0, NULL, MOE_OK);
    routed p2 = route_ex(&ds, xs, 4, four, 4, NULL, MOE_OK);
    CHECK(memcmp(p1.ids, p2.ids, 4 * ds.top_k * 4) == 0 && p2.info.hash_routed == 0, "token ids changed a scored layer");
    routed_free(&p1);
    routed_free(&p2);
    free(xs);

    OK(moe_stats_v2(c, &s1));
    CHECK(s1.ext.hash_routes - s0.ext.hash_routes == 4, "STATS hash_routes grew by %llu, expected 4",
          (unsigned long long)(s1.ext.hash_routes - s0.ext.hash_routes));
    routed_free(&a);
    routed_free(&b);
    free(mask);
    free(x);
    free(t32);
    free(t64);
    printf("hash ok\n");
}

/* ---- placement ----------------------------------------------------------------------------- */

/* A placement of E logical experts: every third expert has two replicas, physical ids a
 * permutation of 0..P-1 (a deterministic shuffle). */
typedef struct placement {
    uint32_t E, P;
    int32_t *counts, *physical, *offsets;
} placement;

static placement make_placement(uint32_t E, uint32_t seed) {
    placement p = {E, 0, malloc(E * 4), NULL, malloc((E + 1) * 4)};
    for (uint32_t e = 0; e < E; e++) {
        p.counts[e] = e % 3 == 0 ? 2 : 1;
        p.offsets[e] = (int32_t)p.P;
        p.P += (uint32_t)p.counts[e];
    }
    p.offsets[E] = (int32_t)p.P;
    p.physical = malloc(p.P * 4);
    for (uint32_t i = 0; i < p.P; i++) p.physical[i] = (int32_t)i;
    for (uint32_t i = p.P - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(splitmix64(i + seed * 100000ull) % (i + 1));
        int32_t tmp = p.physical[i];
        p.physical[i] = p.physical[j];
        p.physical[j] = tmp;
    }
    return p;
}

static void placement_free(placement *p) {
    free(p->counts);
    free(p->physical);
    free(p->offsets);
}

static int32_t physical_of(const placement *p, int32_t logical, uint64_t t) {
    int32_t n = p->counts[logical];
    return p->physical[p->offsets[logical] + (int32_t)(t % (uint64_t)n)];
}

static void check_mapped(const placement *p, const routed *logical, const routed *mapped, const char *what) {
    for (uint64_t t = 0; t < logical->T; t++)
        for (uint32_t j = 0; j < logical->k; j++) {
            size_t i = t * logical->k + j;
            int32_t want = logical->ids[i] < 0 ? -1 : physical_of(p, logical->ids[i], t);
            CHECK(mapped->ids[i] == want, "%s: token %llu column %u: id %d, expected %d (logical %d)", what,
                  (unsigned long long)t, j, mapped->ids[i], want, logical->ids[i]);
            CHECK(mapped->w[i] == logical->w[i], "%s: token %llu column %u: weight changed", what, (unsigned long long)t, j);
        }
}

static void mode_place_only(void) {
    moe_layer_info l = find("deepseek-v3");
    placement p = make_placement(l.num_experts, 1);
    uint64_t epoch = 0;
    OK(moe_set_placement(c, l.layer_id, p.P, l.num_experts, p.counts, p.physical, p.P, &epoch));
    printf("placement set epoch=%llu\n", (unsigned long long)epoch);
    placement_free(&p);
}

static void mode_placement(void) {
    moe_layer_info l = find("deepseek-v3");
    const uint32_t E = l.num_experts, k = l.top_k;
    moe_stats_resp_v2 s0, s1;
    OK(moe_stats_v2(c, &s0));
    const uint64_t T = 150;
    float *x = logits(T, E);
    uint8_t *mask = calloc(T, 1);
    mask[2] = mask[77] = 1;
    routed logical = route_ex(&l, x, T, NULL, 0, NULL, MOE_OK);
    routed logical_m = route_ex(&l, x, T, NULL, 0, mask, MOE_OK);
    CHECK(logical.info.placement_epoch == 0, "placement_epoch %llu before any placement",
          (unsigned long long)logical.info.placement_epoch);

    placement p = make_placement(E, 1);
    uint64_t epoch1 = 0, epoch2 = 0, epoch3 = 0;
    OK(moe_set_placement(c, l.layer_id, p.P, E, p.counts, p.physical, p.P, &epoch1));
    CHECK(epoch1 > 0, "epoch %llu", (unsigned long long)epoch1);
    moe_layer_info_v2 v2;
    OK(moe_layer_v2(c, l.layer_id, &v2));
    CHECK(v2.ext.placement_epoch == epoch1 && v2.ext.num_physical == p.P, "layer ext: epoch %llu num_physical %u",
          (unsigned long long)v2.ext.placement_epoch, v2.ext.num_physical);

    routed mapped = route_ex(&l, x, T, NULL, 0, NULL, MOE_OK);
    CHECK(mapped.info.placement_epoch == epoch1, "answer's placement_epoch %llu, set %llu",
          (unsigned long long)mapped.info.placement_epoch, (unsigned long long)epoch1);
    check_mapped(&p, &logical, &mapped, "inline");
    routed mapped_m = route_ex(&l, x, T, NULL, 0, mask, MOE_OK);
    check_mapped(&p, &logical_m, &mapped_m, "inline with a mask");
    routed_free(&mapped_m);

    /* the version-1 entry point and shm outputs see physical ids too */
    float *w = malloc(T * k * 4);
    int32_t *ids = malloc(T * k * 4);
    OK(moe_route(c, l.layer_id, MOE_DTYPE_FP32, T, x, T * E * 4, w, ids, T * k, NULL));
    CHECK(memcmp(ids, mapped.ids, T * k * 4) == 0, "moe_route without placement ids");
    size_t in_bytes = T * E * 4, out_bytes = T * k * 4;
    moe_segment seg;
    OK(moe_segment_create(c, in_bytes + 2 * out_bytes, &seg));
    memcpy(seg.base, x, in_bytes);
    OK(moe_route_shm(c, l.layer_id, MOE_DTYPE_FP32, T, &seg, &l, 0, in_bytes, in_bytes + out_bytes, NULL));
    CHECK(memcmp((char *)seg.base + in_bytes + out_bytes, mapped.ids, out_bytes) == 0, "shm ids not physical");
    OK(moe_segment_destroy(c, &seg));

    /* expert load counts logical experts */
    uint64_t *totals = calloc(E, 8), *window = calloc(E, 8);
    moe_load_resp load;
    OK(moe_expert_load(c, l.layer_id, 0, totals, window, E, &load));
    uint64_t sum = 0;
    for (uint32_t e = 0; e < E; e++) sum += totals[e];
    CHECK(load.num_experts == E && sum == load.total_assignments, "load: %u experts, sum %llu vs %llu", load.num_experts,
          (unsigned long long)sum, (unsigned long long)load.total_assignments);

    /* a second placement: the epoch moves on */
    placement p2 = make_placement(E, 2);
    OK(moe_set_placement(c, l.layer_id, p2.P + 10, E, p2.counts, p2.physical, p2.P, &epoch2));
    CHECK(epoch2 == epoch1 + 1, "second epoch %llu after %llu", (unsigned long long)epoch2, (unsigned long long)epoch1);
    routed mapped2 = route_ex(&l, x, T, NULL, 0, NULL, MOE_OK);
    CHECK(mapped2.info.placement_epoch == epoch2, "answer epoch %llu", (unsigned long long)mapped2.info.placement_epoch);
    check_mapped(&p2, &logical, &mapped2, "second placement");
    OK(moe_layer_v2(c, l.layer_id, &v2));
    CHECK(v2.ext.num_physical == p2.P + 10, "num_physical %u", v2.ext.num_physical);
    OK(moe_stats_v2(c, &s1));
    CHECK(s1.ext.placement_sets - s0.ext.placement_sets == 2, "STATS placement_sets grew by %llu",
          (unsigned long long)(s1.ext.placement_sets - s0.ext.placement_sets));

    /* clear: logical ids again */
    OK(moe_clear_placement(c, l.layer_id, &epoch3));
    routed back = route_ex(&l, x, T, NULL, 0, NULL, MOE_OK);
    CHECK(back.info.placement_epoch == 0, "placement_epoch %llu after clearing", (unsigned long long)back.info.placement_epoch);
    CHECK(memcmp(back.ids, logical.ids, T * k * 4) == 0, "ids after clearing are not the logical ones");
    OK(moe_layer_v2(c, l.layer_id, &v2));
    CHECK(v2.ext.placement_epoch == 0 && v2.ext.num_physical == 0, "layer ext after clearing: epoch %llu num_physical %u",
          (unsigned long long)v2.ext.placement_epoch, v2.ext.num_physical);
    printf("placement ok: epochs %llu %llu, cleared -> %llu\n", (unsigned long long)epoch1, (unsigned long long)epoch2,
           (unsigned long long)epoch3);
    /* set again after a clear: the epoch keeps growing (answers never reuse one) */
    uint64_t epoch4 = 0;
    OK(moe_set_placement(c, l.layer_id, p.P, E, p.counts, p.physical, p.P, &epoch4));
    CHECK(epoch4 > epoch2, "epoch %llu after clear, earlier %llu", (unsigned long long)epoch4, (unsigned long long)epoch2);
    OK(moe_clear_placement(c, l.layer_id, NULL));

    routed_free(&logical);
    routed_free(&logical_m);
    routed_free(&mapped);
    routed_free(&mapped2);
    routed_free(&back);
    placement_free(&p);
    placement_free(&p2);
    free(totals);
    free(window);
    free(w);
    free(ids);
    free(mask);
    free(x);
}

/* ---- load ---------------------------------------------------------------------------------- */

static void mode_load(void) {
    moe_layer_info l = find("deepseek-v3");
    const uint32_t E = l.num_experts, k = l.top_k;
    uint64_t *t0 = calloc(E, 8), *w0 = calloc(E, 8), *t1 = calloc(E, 8), *w1 = calloc(E, 8), *want = calloc(E, 8);
    moe_load_resp r0, r1;
    OK(moe_expert_load(c, l.layer_id, 1, t0, w0, E, &r0)); /* a new window from here */
    CHECK(r0.num_experts == E && r0.window_reset == 1, "first read: %u experts, window_reset %u", r0.num_experts,
          r0.window_reset);
    uint64_t sum = 0;
    for (uint32_t e = 0; e < E; e++) sum += t0[e];
    CHECK(sum == r0.total_assignments, "total_assignments %llu, sum %llu", (unsigned long long)r0.total_assignments,
          (unsigned long long)sum);

    const uint64_t sizes[] = {3, 64, 500};
    uint64_t assigned = 0;
    for (int n = 0; n < 3; n++) {
        uint64_t T = sizes[n];
        float *x = malloc(T * E * 4);
        for (uint64_t i = 0; i < T * E; i++) x[i] = dump_logit(i / E + 1000 * (uint64_t)n, i % E);
        uint8_t *mask = calloc(T, 1);
        for (uint64_t t = 0; t < T; t += 4) mask[t] = 1;
        for (int with_mask = 0; with_mask < 2; with_mask++) {
            routed r = route_ex(&l, x, T, NULL, 0, with_mask ? mask : NULL, MOE_OK);
            for (uint64_t i = 0; i < T * k; i++)
                if (r.ids[i] >= 0) {
                    want[r.ids[i]]++;
                    assigned++;
                }
            routed_free(&r);
        }
        free(x);
        free(mask);
    }
    OK(moe_expert_load(c, l.layer_id, 0, t1, w1, E, &r1));
    CHECK(r1.window_reset == 0, "window_reset %u without the flag", r1.window_reset);
    for (uint32_t e = 0; e < E; e++) {
        CHECK(t1[e] - t0[e] == want[e], "expert %u: totals grew by %llu, routed %llu", e, (unsigned long long)(t1[e] - t0[e]),
              (unsigned long long)want[e]);
        CHECK(w1[e] == want[e], "expert %u: window %llu, routed %llu", e, (unsigned long long)w1[e], (unsigned long long)want[e]);
    }
    CHECK(r1.window_assignments == assigned && r1.total_assignments == r0.total_assignments + assigned,
          "assignments: window %llu total %llu, routed %llu", (unsigned long long)r1.window_assignments,
          (unsigned long long)r1.total_assignments, (unsigned long long)assigned);
    CHECK(r1.since_start_ns >= r1.window_ns && r1.window_ns > 0, "since_start_ns %llu window_ns %llu",
          (unsigned long long)r1.since_start_ns, (unsigned long long)r1.window_ns);

    /* reset: this read still returns the old window, the next one an empty window */
    OK(moe_expert_load(c, l.layer_id, 1, NULL, w1, E, &r1));
    CHECK(r1.window_reset == 1 && r1.window_assignments == assigned, "reset read: window_reset %u assignments %llu",
          r1.window_reset, (unsigned long long)r1.window_assignments);
    OK(moe_expert_load(c, l.layer_id, 0, t1, w1, E, &r1));
    for (uint32_t e = 0; e < E; e++) CHECK(w1[e] == 0, "expert %u: window %llu after a reset", e, (unsigned long long)w1[e]);
    CHECK(r1.window_assignments == 0 && r1.total_assignments == r0.total_assignments + assigned, "after reset");

    /* caps and errors */
    EXPECT(moe_expert_load(c, l.layer_id, 0, t1, NULL, 8, &r1), MOE_ERR_CLIENT_ARG);
    CHECK(r1.num_experts == E && t1[0] == t0[0] + want[0], "short buffer: the first values are still copied");
    OK(moe_expert_load(c, l.layer_id, 0, NULL, NULL, 0, &r1));
    EXPECT(moe_expert_load(c, 9999, 0, t1, w1, E, &r1), MOE_ERR_UNKNOWN_LAYER);
    printf("load ok (%llu assignments)\n", (unsigned long long)assigned);
    free(t0);
    free(w0);
    free(t1);
    free(w1);
    free(want);
}

/* ---- limits -------------------------------------------------------------------------------- */

static void mode_limits(uint32_t per_uid) {
    CHECK(moe_protocol_version(c) == 2, "negotiated version %d", moe_protocol_version(c));
    moe_hello_ext x;
    OK(moe_limits(c, &x));
    printf("limits: segment %llu mapped/uid %llu regs/uid %u heartbeat %u/%u features %#x replies %llu/%llu physical %u "
           "control %u\n",
           (unsigned long long)x.max_segment_bytes, (unsigned long long)x.max_mapped_bytes_per_uid,
           x.max_registrations_per_uid, x.heartbeat_ivl_ms, x.heartbeat_timeout_ms, x.features,
           (unsigned long long)x.max_queued_reply_bytes, (unsigned long long)x.max_queued_reply_bytes_total,
           x.max_physical_experts, x.control_allowed);
    CHECK(x.max_registrations_per_uid == per_uid, "max_registrations_per_uid %u, daemon flag %u", x.max_registrations_per_uid,
          per_uid);
    CHECK(x.max_segment_bytes > 0, "max_segment_bytes 0");
    CHECK(x.max_mapped_bytes_per_uid == 64ull << 20, "max_mapped_bytes_per_uid %llu, daemon flag 64 MiB",
          (unsigned long long)x.max_mapped_bytes_per_uid);
    CHECK(x.heartbeat_ivl_ms > 0 && x.heartbeat_timeout_ms > x.heartbeat_ivl_ms, "heartbeats");
    CHECK((x.features & 15u) == 15u, "features %#x", x.features);
    CHECK(x.max_queued_reply_bytes == 2ull << 20 && x.max_queued_reply_bytes_total >= x.max_queued_reply_bytes,
          "queued reply bytes %llu / %llu (flag 2 MiB)", (unsigned long long)x.max_queued_reply_bytes,
          (unsigned long long)x.max_queued_reply_bytes_total);
    CHECK(x.max_physical_experts >= 256, "max_physical_experts %u", x.max_physical_experts);
    CHECK(x.control_allowed == 1, "control_allowed %u for the daemon's own uid", x.control_allowed);

    moe_stats_resp_v2 s0, s1;
    OK(moe_stats_v2(c, &s0));
    CHECK(s0.ext.max_registrations_per_uid == per_uid && s0.ext.max_mapped_bytes_per_uid == x.max_mapped_bytes_per_uid,
          "STATS quotas %llu %llu", (unsigned long long)s0.ext.max_registrations_per_uid,
          (unsigned long long)s0.ext.max_mapped_bytes_per_uid);
    moe_stats_resp plain;
    OK(moe_stats(c, &plain));
    CHECK(plain.requests > s0.base.requests && strcmp(plain.backend, s0.base.backend) == 0, "moe_stats under version 2");
    /* per-uid counters follow this uid's registrations, over two connections */
    moe_client *c2 = NULL;
    OK(moe_connect(endpoint, 5000, &c2));
    moe_segment a, b;
    OK(moe_segment_create(c, 8192, &a));
    OK(moe_segment_create(c2, 4096, &b));
    OK(moe_stats_v2(c, &s1));
    CHECK(s1.ext.uid_registrations == s0.ext.uid_registrations + 2 && s1.ext.uid_mapped_bytes == s0.ext.uid_mapped_bytes + 12288,
          "uid_registrations %llu uid_mapped_bytes %llu", (unsigned long long)s1.ext.uid_registrations,
          (unsigned long long)s1.ext.uid_mapped_bytes);
    /* the quota itself: per_uid registrations in all, then LIMIT */
    moe_segment more[64];
    uint32_t made = 2, n = 0;
    while (made < per_uid && n < 64) {
        OK(moe_segment_create(c2, 4096, &more[n]));
        n++;
        made++;
    }
    moe_segment over;
    EXPECT(moe_segment_create(c, 4096, &over), MOE_ERR_LIMIT);
    printf("quota: %s\n", moe_last_error(c));
    for (uint32_t i = 0; i < n; i++) OK(moe_segment_destroy(c2, &more[i]));
    OK(moe_segment_destroy(c, &a));
    OK(moe_segment_destroy(c2, &b));
    moe_close(c2);
    /* moe_hello again: same negotiated version, limits unchanged */
    moe_hello_resp h;
    OK(moe_hello(c, &h));
    CHECK(h.protocol_version == 2 && h.min_protocol_version == 1, "HELLO versions %u..%u", h.min_protocol_version,
          h.protocol_version);
    moe_hello_ext y;
    OK(moe_limits(c, &y));
    CHECK(memcmp(&x, &y, sizeof x) == 0, "limits changed between HELLOs");
    printf("limits ok\n");
}

/* ---- hostile ------------------------------------------------------------------------------- */

/* A raw request on its own DEALER: frame 0 = header + body, then the given frames. */
typedef struct raw_answer {
    int status;
    uint32_t body_size;
    uint8_t body[256];
    char message[MOE_MAX_MESSAGE_TEXT + 1];
    int frames;
} raw_answer;

static raw_answer raw_call(uint16_t version, uint16_t op, const void *body, uint32_t body_size, int nframes,
                           const void *const *frames, const size_t *sizes) {
    raw_answer a;
    memset(&a, 0, sizeof a);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0, timeout = 5000;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    CHECK(zmq_connect(s, endpoint) == 0, "connect");
    uint8_t f0[512];
    moe_req_header h = {MOE_PROTOCOL_MAGIC, version, op, 42, body_size, 0, 0};
    memcpy(f0, &h, sizeof h);
    memcpy(f0 + sizeof h, body, body_size);
    CHECK(zmq_send(s, f0, sizeof h + body_size, nframes ? ZMQ_SNDMORE : 0) >= 0, "send");
    for (int i = 0; i < nframes; i++) CHECK(zmq_send(s, frames[i], sizes[i], i + 1 < nframes ? ZMQ_SNDMORE : 0) >= 0, "send");
    zmq_msg_t m;
    zmq_msg_init(&m);
    CHECK(zmq_msg_recv(&m, s, 0) >= (int)sizeof(moe_resp_header), "no answer to a raw request (op %u)", op);
    moe_resp_header rh;
    memcpy(&rh, zmq_msg_data(&m), sizeof rh);
    CHECK(rh.request_id == 42 || rh.request_id == 0, "request id");
    CHECK(zmq_msg_size(&m) == sizeof rh + rh.body_size + rh.message_len, "answer frame 0 size");
    a.status = (int)rh.status;
    a.body_size = rh.body_size;
    memcpy(a.body, (uint8_t *)zmq_msg_data(&m) + sizeof rh, rh.body_size < sizeof a.body ? rh.body_size : sizeof a.body);
    snprintf(a.message, sizeof a.message, "%.*s", (int)rh.message_len, (char *)zmq_msg_data(&m) + sizeof rh + rh.body_size);
    a.frames = 1;
    while (zmq_msg_more(&m)) {
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        zmq_msg_recv(&m, s, 0);
        a.frames++;
    }
    zmq_msg_close(&m);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return a;
}

#define RAW_EXPECT(a, want, what)                                                                                      \
    do {                                                                                                               \
        raw_answer a_ = (a);                                                                                           \
        CHECK(a_.status == (want), "%s: %s, expected %s (%s)", what, moe_status_name(a_.status), moe_status_name(want), \
              a_.message);                                                                                             \
        printf("%-44s %s: %s\n", what, moe_status_name(a_.status), a_.message);                                       \
    } while (0)

/* moe_route_refs_ex with a deliberately wrong request; the daemon must answer `want`. */
static void bad_route(const char *what, const moe_layer_info *l, uint64_t T, moe_buffer_ref refs[5], const void *x,
                      const void *tids, uint32_t tid_bytes, const uint8_t *mask, int want) {
    float *w = calloc(T * l->top_k + 1, 4);
    int32_t *ids = calloc(T * l->top_k + 1, 4);
    moe_route_info info;
    st = moe_route_refs_ex(c, l->layer_id, MOE_DTYPE_FP32, T, refs, x, tids, tid_bytes, mask, w, ids, &info);
    CHECK(st == want, "%s: %s, expected %s (%s)", what, moe_status_name(st), moe_status_name(want), moe_last_error(c));
    CHECK(moe_last_error(c)[0], "%s: no message", what);
    printf("%-44s %s: %s\n", what, moe_status_name(st), moe_last_error(c));
    free(w);
    free(ids);
}

static void inline_refs(moe_buffer_ref refs[5], const moe_layer_info *l, uint64_t T) {
    memset(refs, 0, 5 * sizeof *refs);
    refs[0].length = T * l->num_experts * 4;
    refs[1].length = refs[2].length = T * l->top_k * 4;
    refs[3].kind = refs[4].kind = MOE_BUF_NONE;
}

static void mode_hostile(void) {
    moe_layer_info l = find("deepseek-v3"), h = find("deepseek-v4-hash");
    const uint32_t E = l.num_experts;
    const uint64_t T = 8;
    float *x = logits(T, h.num_experts > E ? h.num_experts : E);
    int64_t tids[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    uint8_t mask[16] = {0};
    moe_buffer_ref refs[5];

    /* token ids */
    inline_refs(refs, &h, T);
    refs[3].kind = MOE_BUF_INLINE;
    refs[3].length = T * 3;
    bad_route("token_id_bytes 3", &h, T, refs, x, tids, 3, NULL, MOE_ERR_BAD_FIELD);
    refs[3].length = T * 4;
    bad_route("token_id_bytes 0 with token ids", &h, T, refs, x, tids, 0, NULL, MOE_ERR_BAD_FIELD);
    refs[3].length = T * 4 + 4;
    bad_route("token ids one value too long", &h, T, refs, x, tids, 4, NULL, MOE_ERR_SIZE_MISMATCH);
    refs[3].length = T * 8 - 8;
    bad_route("int64 token ids one value short", &h, T, refs, x, tids, 8, NULL, MOE_ERR_SIZE_MISMATCH);
    inline_refs(refs, &h, T);
    bad_route("token_id_bytes 4 without token ids", &h, T, refs, x, NULL, 4, NULL, MOE_ERR_BAD_FIELD);

    /* masks */
    inline_refs(refs, &l, T);
    refs[4].kind = MOE_BUF_INLINE;
    refs[4].length = T - 1;
    bad_route("mask one byte short", &l, T, refs, x, NULL, 0, mask, MOE_ERR_SIZE_MISMATCH);
    refs[4].length = T + 1;
    bad_route("mask one byte long", &l, T, refs, x, NULL, 0, mask, MOE_ERR_SIZE_MISMATCH);

    /* MOE_BUF_NONE: only for the optional buffers, and all zero */
    inline_refs(refs, &l, T);
    refs[4].length = T;
    bad_route("MOE_BUF_NONE mask with a length", &l, T, refs, x, NULL, 0, NULL, MOE_ERR_BAD_FIELD);
    inline_refs(refs, &l, T);
    refs[3].handle = 7;
    bad_route("MOE_BUF_NONE token ids with a handle", &l, T, refs, x, NULL, 0, NULL, MOE_ERR_BAD_FIELD);
    inline_refs(refs, &l, T);
    refs[4].offset = 64;
    bad_route("MOE_BUF_NONE mask with an offset", &l, T, refs, x, NULL, 0, NULL, MOE_ERR_BAD_FIELD);
    inline_refs(refs, &l, T);
    refs[3].reserved = 1;
    bad_route("MOE_BUF_NONE token ids, reserved set", &l, T, refs, x, NULL, 0, NULL, MOE_ERR_BAD_FIELD);
    inline_refs(refs, &l, T);
    refs[1].kind = MOE_BUF_NONE;
    refs[1].length = 0;
    bad_route("MOE_BUF_NONE weights", &l, T, refs, x, NULL, 0, NULL, MOE_ERR_BAD_FIELD);
    inline_refs(refs, &l, T);
    refs[0].kind = MOE_BUF_NONE;
    refs[0].length = 0;
    bad_route("MOE_BUF_NONE input", &l, T, refs, NULL, NULL, 0, NULL, MOE_ERR_BAD_FIELD);
    inline_refs(refs, &l, T);
    refs[4].kind = 3;
    bad_route("mask of buffer kind 3", &l, T, refs, x, NULL, 0, NULL, MOE_ERR_BAD_FIELD);
    inline_refs(refs, &l, T);
    refs[4].kind = MOE_BUF_SHM;
    refs[4].handle = 0x1234;
    refs[4].length = T;
    bad_route("mask in an unknown segment", &l, T, refs, x, NULL, 0, NULL, MOE_ERR_UNKNOWN_HANDLE);

    /* raw version-2 ROUTEs the client library cannot produce */
    moe_route_req_v2 q;
    memset(&q, 0, sizeof q);
    q.base.layer_id = l.layer_id;
    q.base.tokens = T;
    q.base.input.length = T * E * 4;
    q.base.weights.length = q.base.ids.length = T * l.top_k * 4;
    q.token_ids.kind = MOE_BUF_NONE;
    q.mask.kind = MOE_BUF_NONE;
    const void *fr[3] = {x, mask, mask};
    size_t sz[3] = {T * E * 4, T, T};
    RAW_EXPECT(raw_call(2, MOE_OP_ROUTE, &q, sizeof q, 1, fr, sz), MOE_OK, "raw v2 ROUTE (control)");
    q.reserved = 1;
    RAW_EXPECT(raw_call(2, MOE_OP_ROUTE, &q, sizeof q, 1, fr, sz), MOE_ERR_BAD_FIELD, "v2 ROUTE reserved != 0");
    q.reserved = 0;
    q.reserved2 = 5;
    RAW_EXPECT(raw_call(2, MOE_OP_ROUTE, &q, sizeof q, 1, fr, sz), MOE_ERR_BAD_FIELD, "v2 ROUTE reserved2 != 0");
    q.reserved2 = 0;
    q.mask.kind = MOE_BUF_INLINE;
    q.mask.length = T;
    RAW_EXPECT(raw_call(2, MOE_OP_ROUTE, &q, sizeof q, 1, fr, sz), MOE_ERR_MALFORMED, "inline mask without its frame");
    RAW_EXPECT(raw_call(2, MOE_OP_ROUTE, &q, sizeof q, 3, fr, sz), MOE_ERR_MALFORMED, "one frame too many");
    raw_answer ok2 = raw_call(2, MOE_OP_ROUTE, &q, sizeof q, 2, fr, sz);
    RAW_EXPECT(ok2, MOE_OK, "inline mask with its frame");
    CHECK(ok2.body_size == sizeof(moe_route_resp_v2) && ok2.frames == 3, "v2 ROUTE answer body %u frames %d", ok2.body_size,
          ok2.frames);
    q.mask.kind = MOE_BUF_NONE;
    q.mask.length = 0;
    RAW_EXPECT(raw_call(2, MOE_OP_ROUTE, &q, sizeof q.base, 1, fr, sz), MOE_ERR_MALFORMED, "v2 header, v1 ROUTE body");
    RAW_EXPECT(raw_call(1, MOE_OP_ROUTE, &q, sizeof q, 1, fr, sz), MOE_ERR_MALFORMED, "v1 header, v2 ROUTE body");
    raw_answer v1 = raw_call(1, MOE_OP_ROUTE, &q, sizeof q.base, 1, fr, sz);
    RAW_EXPECT(v1, MOE_OK, "v1 ROUTE");
    CHECK(v1.body_size == sizeof(moe_route_resp), "v1 ROUTE answer body %u", v1.body_size);
    RAW_EXPECT(raw_call(3, MOE_OP_PING, NULL, 0, 0, NULL, NULL), MOE_ERR_BAD_VERSION, "header version 3");
    RAW_EXPECT(raw_call(0, MOE_OP_PING, NULL, 0, 0, NULL, NULL), MOE_ERR_BAD_VERSION, "header version 0");
    moe_hello_req hq;
    memset(&hq, 0, sizeof hq);
    hq.min_version = 3;
    hq.max_version = 9;
    RAW_EXPECT(raw_call(1, MOE_OP_HELLO, &hq, sizeof hq, 0, NULL, NULL), MOE_ERR_BAD_VERSION, "HELLO offering 3...9");
    hq.min_version = 1;
    hq.max_version = 9;
    raw_answer hello = raw_call(1, MOE_OP_HELLO, &hq, sizeof hq, 0, NULL, NULL);
    RAW_EXPECT(hello, MOE_OK, "HELLO offering 1...9");
    moe_hello_resp hr;
    memcpy(&hr, hello.body, sizeof hr);
    CHECK(hr.protocol_version == 2 && hello.body_size == sizeof hr + sizeof(moe_hello_ext), "HELLO 1...9: version %u, body %u",
          hr.protocol_version, hello.body_size);
    hq.max_version = 1;
    hello = raw_call(1, MOE_OP_HELLO, &hq, sizeof hq, 0, NULL, NULL);
    CHECK(hello.status == MOE_OK && hello.body_size == sizeof hr, "HELLO 1...1: body %u", hello.body_size);

    /* placements */
    placement p = make_placement(E, 3);
    uint64_t epoch = 0, e2 = 0;
    OK(moe_set_placement(c, l.layer_id, p.P, E, p.counts, p.physical, p.P, &epoch));
    routed before = route_ex(&l, x, T, NULL, 0, NULL, MOE_OK);
    int32_t saved;
    saved = p.physical[5];
    p.physical[5] = (int32_t)p.P;
    EXPECT(moe_set_placement(c, l.layer_id, p.P, E, p.counts, p.physical, p.P, &e2), MOE_ERR_BAD_PLACEMENT);
    printf("%-44s %s: %s\n", "physical id == num_physical", moe_status_name(st), moe_last_error(c));
    p.physical[5] = -1;
    EXPECT(moe_set_placement(c, l.layer_id, p.P, E, p.counts, p.physical, p.P, &e2), MOE_ERR_BAD_PLACEMENT);
    printf("%-44s %s: %s\n", "physical id -1", moe_status_name(st), moe_last_error(c));
    p.physical[5] = p.physical[6];
    EXPECT(moe_set_placement(c, l.layer_id, p.P, E, p.counts, p.physical, p.P, &e2), MOE_ERR_BAD_PLACEMENT);
    printf("%-44s %s: %s\n", "physical id given twice", moe_status_name(st), moe_last_error(c));
    p.physical[5] = saved;
    {
        /* expert 1 unplaced: its replica goes to expert 0 */
        int32_t *cnt = malloc(E * 4);
        memcpy(cnt, p.counts, E * 4);
        cnt[0] += cnt[1];
        cnt[1] = 0;
        EXPECT(moe_set_placement(c, l.layer_id, p.P, E, cnt, p.physical, p.P, &e2), MOE_ERR_BAD_PLACEMENT);
        printf("%-44s %s: %s\n", "an expert without replicas", moe_status_name(st), moe_last_error(c));
        cnt[1] = -1;
        cnt[0] += 1;
        EXPECT(moe_set_placement(c, l.layer_id, p.P, E, cnt, p.physical, p.P, &e2), MOE_ERR_BAD_PLACEMENT);
        printf("%-44s %s: %s\n", "a negative replica count", moe_status_name(st), moe_last_error(c));
        free(cnt);
    }
    EXPECT(moe_set_placement(c, l.layer_id, p.P, E, p.counts, p.physical, p.P - 1, &e2), MOE_ERR_BAD_PLACEMENT);
    printf("%-44s %s: %s\n", "counts sum != total_replicas", moe_status_name(st), moe_last_error(c));
    EXPECT(moe_set_placement(c, l.layer_id, p.P, E - 1, p.counts, p.physical, p.P - (uint32_t)p.counts[E - 1], &e2),
           MOE_ERR_BAD_PLACEMENT);
    printf("%-44s %s: %s\n", "num_logical != num_experts", moe_status_name(st), moe_last_error(c));
    EXPECT(moe_set_placement(c, 9999, p.P, E, p.counts, p.physical, p.P, &e2), MOE_ERR_UNKNOWN_LAYER);
    moe_hello_ext lim;
    OK(moe_limits(c, &lim));
    EXPECT(moe_set_placement(c, l.layer_id, lim.max_physical_experts + 1, E, p.counts, p.physical, p.P, &e2),
           MOE_ERR_BAD_PLACEMENT);
    printf("%-44s %s: %s\n", "num_physical past max_physical_experts", moe_status_name(st), moe_last_error(c));
    /* frames the library never sends */
    moe_placement_req pq = {l.layer_id, p.P, E, p.P};
    size_t good = ((size_t)E + p.P) * 4;
    uint8_t *frame = calloc(good + 8, 1);
    memcpy(frame, p.counts, E * 4);
    memcpy(frame + E * 4, p.physical, p.P * 4);
    const void *pf[2] = {frame, frame};
    size_t psz[2] = {good - 4, 4};
    RAW_EXPECT(raw_call(2, MOE_OP_SET_PLACEMENT, &pq, sizeof pq, 1, pf, psz), MOE_ERR_SIZE_MISMATCH, "placement frame 4 bytes short");
    psz[0] = good + 4;
    RAW_EXPECT(raw_call(2, MOE_OP_SET_PLACEMENT, &pq, sizeof pq, 1, pf, psz), MOE_ERR_SIZE_MISMATCH, "placement frame 4 bytes long");
    psz[0] = good;
    RAW_EXPECT(raw_call(2, MOE_OP_SET_PLACEMENT, &pq, sizeof pq, 0, pf, psz), MOE_ERR_MALFORMED, "placement without frame 1");
    RAW_EXPECT(raw_call(2, MOE_OP_SET_PLACEMENT, &pq, sizeof pq, 2, pf, psz), MOE_ERR_MALFORMED, "placement with 2 frames");
    RAW_EXPECT(raw_call(2, MOE_OP_SET_PLACEMENT, &pq, sizeof pq - 4, 1, pf, psz), MOE_ERR_MALFORMED, "placement body short");
    moe_placement_req rm = {l.layer_id, 0, 0, 0};
    RAW_EXPECT(raw_call(2, MOE_OP_SET_PLACEMENT, &rm, sizeof rm, 1, pf, psz), MOE_ERR_MALFORMED, "removal with a frame 1");
    moe_placement_req rm2 = {l.layer_id, 0, 0, 5};
    RAW_EXPECT(raw_call(2, MOE_OP_SET_PLACEMENT, &rm2, sizeof rm2, 0, pf, psz), MOE_ERR_MALFORMED,
               "removal with total_replicas 5");
    raw_answer v1p = raw_call(1, MOE_OP_SET_PLACEMENT, &pq, sizeof pq, 1, pf, psz);
    CHECK(v1p.status == MOE_ERR_BAD_VERSION || v1p.status == MOE_ERR_UNKNOWN_OP, "SET_PLACEMENT in version 1: %s",
          moe_status_name(v1p.status));
    printf("%-44s %s: %s\n", "SET_PLACEMENT with header version 1", moe_status_name(v1p.status), v1p.message);
    moe_load_req lq = {l.layer_id, 0};
    raw_answer v1l = raw_call(1, MOE_OP_EXPERT_LOAD, &lq, sizeof lq, 0, NULL, NULL);
    CHECK(v1l.status == MOE_ERR_BAD_VERSION || v1l.status == MOE_ERR_UNKNOWN_OP, "EXPERT_LOAD in version 1: %s",
          moe_status_name(v1l.status));
    lq.flags = 6;
    RAW_EXPECT(raw_call(2, MOE_OP_EXPERT_LOAD, &lq, sizeof lq, 0, NULL, NULL), MOE_ERR_BAD_FIELD, "EXPERT_LOAD unknown flags");
    lq.flags = 0;
    RAW_EXPECT(raw_call(2, MOE_OP_EXPERT_LOAD, &lq, sizeof lq, 1, pf, psz), MOE_ERR_MALFORMED, "EXPERT_LOAD with a frame 1");
    RAW_EXPECT(raw_call(2, 12, NULL, 0, 0, NULL, NULL), MOE_ERR_UNKNOWN_OP, "op 12");
    free(frame);

    /* every refused placement left the layer as it was */
    moe_layer_info_v2 v2;
    OK(moe_layer_v2(c, l.layer_id, &v2));
    CHECK(v2.ext.placement_epoch == epoch && v2.ext.num_physical == p.P, "placement changed by a refused request: epoch %llu",
          (unsigned long long)v2.ext.placement_epoch);
    routed after = route_ex(&l, x, T, NULL, 0, NULL, MOE_OK);
    CHECK(memcmp(before.ids, after.ids, T * l.top_k * 4) == 0 && after.info.placement_epoch == epoch,
          "routing changed by a refused placement");
    OK(moe_clear_placement(c, l.layer_id, NULL));
    OK(moe_ping(c));
    routed_free(&before);
    routed_free(&after);
    placement_free(&p);
    free(x);
    printf("hostile ok\n");
}

/* ---- denied -------------------------------------------------------------------------------- */

static void mode_denied(int allowed) {
    moe_layer_info l = find("deepseek-v3");
    moe_hello_ext x;
    OK(moe_limits(c, &x));
    CHECK(x.control_allowed == (uint32_t)allowed, "control_allowed %u", x.control_allowed);
    placement p = make_placement(l.num_experts, 4);
    uint64_t epoch = 0;
    uint64_t *t = calloc(l.num_experts, 8);
    moe_load_resp r;
    if (allowed) {
        OK(moe_set_placement(c, l.layer_id, p.P, l.num_experts, p.counts, p.physical, p.P, &epoch));
        OK(moe_clear_placement(c, l.layer_id, &epoch));
        OK(moe_expert_load(c, l.layer_id, 1, t, NULL, l.num_experts, &r));
    } else {
        EXPECT(moe_set_placement(c, l.layer_id, p.P, l.num_experts, p.counts, p.physical, p.P, &epoch), MOE_ERR_NOT_PERMITTED);
        printf("set placement: %s\n", moe_last_error(c));
        EXPECT(moe_clear_placement(c, l.layer_id, &epoch), MOE_ERR_NOT_PERMITTED);
        EXPECT(moe_expert_load(c, l.layer_id, 1, t, NULL, l.num_experts, &r), MOE_ERR_NOT_PERMITTED);
        printf("reset window: %s\n", moe_last_error(c));
        OK(moe_expert_load(c, l.layer_id, 0, t, NULL, l.num_experts, &r)); /* reading is not a control op */
        moe_layer_info_v2 v2;
        OK(moe_layer_v2(c, l.layer_id, &v2));
        CHECK(v2.ext.placement_epoch == 0, "a refused placement took effect");
    }
    free(t);
    placement_free(&p);
    printf("control %s ok\n", allowed ? "allowed" : "denied");
}

/* ---- against a version-1 daemon ------------------------------------------------------------ */

static void mode_v1daemon(void) {
    CHECK(moe_protocol_version(c) == 1, "negotiated version %d with a version-1 daemon", moe_protocol_version(c));
    moe_hello_ext x;
    EXPECT(moe_limits(c, &x), MOE_ERR_BAD_VERSION);
    CHECK(strstr(moe_last_error(c), "version 2") && strstr(moe_last_error(c), "moe_limits"), "message: %s", moe_last_error(c));
    printf("moe_limits: %s\n", moe_last_error(c));
    moe_layer_info infos[8];
    uint32_t n = 0;
    OK(moe_list_layers(c, infos, 8, &n));
    CHECK(n >= 1, "no layers");
    moe_layer_info l = infos[0];
    moe_layer_info_v2 v2;
    EXPECT(moe_layer_v2(c, l.layer_id, &v2), MOE_ERR_BAD_VERSION);
    moe_stats_resp_v2 s2;
    EXPECT(moe_stats_v2(c, &s2), MOE_ERR_BAD_VERSION);
    int32_t one = 0;
    EXPECT(moe_set_placement(c, l.layer_id, 1, 1, &one, &one, 1, NULL), MOE_ERR_BAD_VERSION);
    EXPECT(moe_clear_placement(c, l.layer_id, NULL), MOE_ERR_BAD_VERSION);
    uint64_t t[8];
    EXPECT(moe_expert_load(c, l.layer_id, 0, t, t, 8, NULL), MOE_ERR_BAD_VERSION);
    printf("moe_expert_load: %s\n", moe_last_error(c));
    moe_stats_resp s;
    OK(moe_stats(c, &s));
    OK(moe_ping(c));
    const uint64_t T = 3;
    float *xx = logits(T, l.num_experts);
    uint8_t mask[3] = {0, 1, 0};
    int32_t tids[3] = {1, 2, 3};
    routed a = route_ex(&l, xx, T, NULL, 0, NULL, MOE_OK); /* no version-2 inputs: a version-1 ROUTE */
    float *w = malloc(T * l.top_k * 4);
    int32_t *ids = malloc(T * l.top_k * 4);
    OK(moe_route(c, l.layer_id, MOE_DTYPE_FP32, T, xx, T * l.num_experts * 4, w, ids, T * l.top_k, NULL));
    CHECK(memcmp(ids, a.ids, T * l.top_k * 4) == 0 && memcmp(w, a.w, T * l.top_k * 4) == 0, "moe_route_ex differs");
    CHECK(a.info.masked_tokens == 0 && a.info.placement_epoch == 0, "version-2 fields set by a version-1 answer");
    for (uint64_t i = 0; i < T * l.top_k; i++) printf("%d:%g ", ids[i], w[i]);
    printf("\n");
    routed b = route_ex(&l, xx, T, NULL, 0, mask, MOE_ERR_BAD_VERSION);
    printf("mask: %s\n", moe_last_error(c));
    routed d = route_ex(&l, xx, T, tids, 4, NULL, MOE_ERR_BAD_VERSION);
    moe_segment seg;
    OK(moe_segment_create(c, 4096, &seg));
    OK(moe_segment_destroy(c, &seg));
    OK(moe_ping(c));
    routed_free(&a);
    routed_free(&b);
    routed_free(&d);
    free(w);
    free(ids);
    free(xx);
    printf("v1 daemon ok\n");
}

/* ---- malformed answers (a scripted fake daemon) -------------------------------------------- */

static void mode_malformed(void) {
    /* main() connected once already: that HELLO claimed version 2 without moe_hello_ext */
    CHECK((st = moe_connect(endpoint, 2000, &c)) == MOE_ERR_CLIENT_PROTOCOL, "HELLO choosing version 3: %s",
          moe_status_name(st));
    CHECK((st = moe_connect(endpoint, 2000, &c)) == MOE_OK, "good HELLO: %s", moe_status_name(st));
    moe_stats_resp_v2 s;
    EXPECT(moe_stats_v2(c, &s), MOE_ERR_CLIENT_PROTOCOL);
    printf("stats: %s\n", moe_last_error(c));
    float x[8 * 2] = {0}, w[4];
    int32_t ids[4];
    for (int i = 0; i < 4; i++) {
        EXPECT(moe_route_ex(c, 0, MOE_DTYPE_FP32, 1, x, 32, NULL, 0, NULL, w, ids, 2, NULL), MOE_ERR_CLIENT_PROTOCOL);
        printf("route %d: %s\n", i, moe_last_error(c));
    }
    uint64_t t[8], win[8];
    EXPECT(moe_expert_load(c, 0, 0, t, win, 8, NULL), MOE_ERR_CLIENT_PROTOCOL);
    printf("load: %s\n", moe_last_error(c));
    moe_layer_info l[2];
    uint32_t n;
    EXPECT(moe_list_layers(c, l, 2, &n), MOE_ERR_CLIENT_PROTOCOL);
    int32_t one = 0;
    uint64_t epoch;
    EXPECT(moe_set_placement(c, 0, 1, 1, &one, &one, 1, &epoch), MOE_ERR_CLIENT_PROTOCOL);
    printf("placement: %s\n", moe_last_error(c));
    EXPECT(moe_ping(c), MOE_ERR_CLIENT_PROTOCOL);
    OK(moe_ping(c));
    printf("malformed ok\n");
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    endpoint = argv[1];
    const char *mode = argv[2];
    if (strcmp(mode, "malformed") == 0) {
        CHECK((st = moe_connect(endpoint, 2000, &c)) == MOE_ERR_CLIENT_PROTOCOL && !c,
              "HELLO claiming version 2 without its extension: %s", moe_status_name(st));
        mode_malformed();
        moe_close(c);
        return 0;
    }
    CHECK((st = moe_connect(endpoint, 10000, &c)) == MOE_OK, "connect: %s", moe_status_name(st));
    if (strcmp(mode, "v1daemon") != 0)
        CHECK(moe_protocol_version(c) == 2, "negotiated version %d with the current daemon", moe_protocol_version(c));
    if (strcmp(mode, "dump") == 0) mode_dump();
    else if (strcmp(mode, "masks") == 0) mode_masks();
    else if (strcmp(mode, "hash") == 0) mode_hash();
    else if (strcmp(mode, "placement") == 0) mode_placement();
    else if (strcmp(mode, "place-only") == 0) mode_place_only();
    else if (strcmp(mode, "load") == 0) mode_load();
    else if (strcmp(mode, "limits") == 0) mode_limits(argc > 3 ? (uint32_t)atoi(argv[3]) : 1024);
    else if (strcmp(mode, "hostile") == 0) mode_hostile();
    else if (strcmp(mode, "denied") == 0) mode_denied(argc > 3 && strcmp(argv[3], "allowed") == 0);
    else if (strcmp(mode, "v1daemon") == 0) mode_v1daemon();
    else CHECK(0, "unknown mode %s", mode);
    moe_close(c);
    return 0;
}
