/*
 * v1_compat — the protocol-1 client as released (IntegrationTests/c/v1/, frozen at commit 2eea8fe)
 * against the current daemon: a host that linked libmoerouter before protocol 2 must keep working.
 *
 * usage: v1_compat ENDPOINT check   HELLO (version 1, its 120-byte body: the frozen client takes
 *                                   nothing else), LIST_LAYERS, inline and shm ROUTEs on
 *                                   deepseek-v3 (printed by route_dump.h for comparison with the
 *                                   current client), STATS, typed errors
 *        v1_compat ENDPOINT dump    only the ROUTE lines
 * Built by IntegrationTests/python/test_protocol_v1_compat.py with -I IntegrationTests/c/v1 only.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_router_client.h"
#include "route_dump.h"

#define OK(c, call) CHECK((st = (call)) == MOE_OK, "%s: %s (%s)", #call, moe_status_name(st), moe_last_error(c))
#define EXPECT(c, call, want)                                                                                          \
    CHECK((st = (call)) == (want), "%s: %s, expected %s (%s)", #call, moe_status_name(st), moe_status_name(want),     \
          moe_last_error(c))

static const uint64_t TOKEN_COUNTS[] = {7, 300};

/* Inline and shm ROUTEs of both dtypes; they must agree; prints one line per (dtype, tokens). */
static void routes(moe_client *c, const moe_layer_info *layer) {
    int st;
    const uint32_t E = layer->num_experts, k = layer->top_k;
    for (int d = 0; d < 2; d++) {
        moe_dtype dtype = d ? MOE_DTYPE_BF16 : MOE_DTYPE_FP32;
        size_t esize = d ? 2 : 4;
        for (size_t n = 0; n < sizeof TOKEN_COUNTS / sizeof *TOKEN_COUNTS; n++) {
            uint64_t T = TOKEN_COUNTS[n];
            size_t in_bytes = T * E * esize, out_bytes = T * k * 4;
            void *x = malloc(in_bytes);
            if (d) dump_fill_bf16(x, T, E);
            else dump_fill_fp32(x, T, E);
            float *w = malloc(out_bytes);
            int32_t *ids = malloc(out_bytes);
            moe_route_result res;
            OK(c, moe_route(c, layer->layer_id, dtype, T, x, in_bytes, w, ids, T * k, &res));
            moe_segment seg;
            OK(c, moe_segment_create(c, in_bytes + 2 * out_bytes, &seg));
            memcpy(seg.base, x, in_bytes);
            OK(c, moe_route_shm(c, layer->layer_id, dtype, T, &seg, layer, 0, in_bytes, in_bytes + out_bytes, &res));
            CHECK(memcmp((char *)seg.base + in_bytes, w, out_bytes) == 0, "shm weights differ from inline");
            CHECK(memcmp((char *)seg.base + in_bytes + out_bytes, ids, out_bytes) == 0, "shm ids differ from inline");
            OK(c, moe_segment_destroy(c, &seg));
            dump_print(d ? "bf16" : "fp32", T, k, w, ids);
            free(x);
            free(w);
            free(ids);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int st;
    moe_client *c = NULL;
    CHECK((st = moe_connect(argv[1], 5000, &c)) == MOE_OK, "connect: %s", moe_status_name(st));
    moe_layer_info layer;
    OK(c, moe_find_layer(c, "deepseek-v3", &layer));
    CHECK(layer.num_experts == 256 && layer.top_k == 8, "deepseek-v3 is E %u k %u", layer.num_experts, layer.top_k);
    if (strcmp(argv[2], "dump") == 0) {
        routes(c, &layer);
        moe_close(c);
        return 0;
    }
    CHECK(strcmp(argv[2], "check") == 0, "unknown mode %s", argv[2]);

    /* HELLO: the frozen client offers 1...1, sends header version 1 and accepts exactly a
     * 120-byte body (take_body), so MOE_OK proves the daemon answered in version 1. */
    moe_hello_resp h;
    OK(c, moe_hello(c, &h));
    CHECK(h.protocol_version == 1, "HELLO negotiated version %u with a version-1 client", h.protocol_version);
    CHECK(h.min_protocol_version == 1, "min_protocol_version %u", h.min_protocol_version);
    CHECK(h.layer_count >= 1 && h.max_tokens > 0 && h.backend[0], "HELLO fields");
    printf("hello protocol_version=%u body=%zu backend=%s\n", h.protocol_version, sizeof h, h.backend);

    moe_layer_info infos[64];
    uint32_t count = 0;
    OK(c, moe_list_layers(c, infos, 64, &count));
    CHECK(count == h.layer_count, "LIST_LAYERS count %u, HELLO said %u", count, h.layer_count);
    float bias[256];
    OK(c, moe_layer_bias(c, layer.layer_id, bias, 256));
    printf("layers %u\n", count);

    routes(c, &layer);

    moe_stats_resp s;
    OK(c, moe_stats(c, &s));
    CHECK(s.routes >= 8 && s.shm_routes >= 4 && s.backend[0], "STATS routes %llu shm %llu",
          (unsigned long long)s.routes, (unsigned long long)s.shm_routes);
    printf("stats routes=%llu\n", (unsigned long long)s.routes);

    /* Typed errors, each with a message, and the connection still serves. */
    float x[256], w[8];
    int32_t ids[8];
    dump_fill_fp32(x, 1, 256);
    EXPECT(c, moe_route(c, 9999, MOE_DTYPE_FP32, 1, x, sizeof x, w, ids, 8, NULL), MOE_ERR_UNKNOWN_LAYER);
    CHECK(moe_last_error(c)[0], "no message with UNKNOWN_LAYER");
    EXPECT(c, moe_route(c, layer.layer_id, MOE_DTYPE_FP32, 1, x, sizeof x - 4, w, ids, 8, NULL), MOE_ERR_SIZE_MISMATCH);
    CHECK(moe_last_error(c)[0], "no message with SIZE_MISMATCH");
    EXPECT(c, moe_route(c, layer.layer_id, (moe_dtype)7, 1, x, sizeof x, w, ids, 8, NULL), MOE_ERR_BAD_DTYPE);
    EXPECT(c, moe_unregister_shm(c, 12345, NULL), MOE_ERR_UNKNOWN_HANDLE);
    printf("errors typed: %s\n", moe_last_error(c));
    OK(c, moe_ping(c));
    OK(c, moe_route(c, layer.layer_id, MOE_DTYPE_FP32, 1, x, sizeof x, w, ids, 8, NULL));
    moe_close(c);
    printf("v1 client ok\n");
    return 0;
}
