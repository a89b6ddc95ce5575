/* Routes a few tokens through a moe-routerd layer, inline and via shared memory, and checks
 * that both agree. Usage: route_c [ENDPOINT [LAYER_NAME [TOKENS]]] (ENDPOINT "-" = default). */
#include <moe_router.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check(moe_client *c, int st, const char *what) {
    if (st != MOE_OK) fprintf(stderr, "%s: %s: %s\n", what, moe_status_name(st), c ? moe_last_error(c) : "");
    return st == MOE_OK;
}

int main(int argc, char **argv) {
    const char *endpoint = argc > 1 && strcmp(argv[1], "-") != 0 ? argv[1] : NULL;
    const char *name = argc > 2 ? argv[2] : "deepseek-v3";
    uint64_t tokens = argc > 3 ? strtoull(argv[3], NULL, 10) : 4;
    moe_client *c = NULL;
    if (!check(NULL, moe_connect(endpoint, 5000, &c), "connect")) return 1;
    moe_layer_info layer;
    if (!check(c, moe_find_layer(c, name, &layer), "find layer")) return 1;

    /* fp32 logits, deterministic. */
    size_t n_in = tokens * layer.num_experts, n_out = tokens * layer.top_k;
    float *logits = malloc(n_in * sizeof(float));
    for (size_t i = 0; i < n_in; i++) logits[i] = (float)((i * 2654435761u) % 1000) / 250.0f - 2.0f;
    float *w = malloc(n_out * sizeof(float));
    int32_t *ids = malloc(n_out * sizeof(int32_t));
    moe_route_result res;
    if (!check(c, moe_route(c, layer.layer_id, MOE_DTYPE_FP32, tokens, logits, n_in * 4, w, ids, n_out, &res), "route"))
        return 1;

    moe_segment seg;
    uint64_t in_bytes = n_in * 4, out_bytes = n_out * 4;
    if (!check(c, moe_segment_create(c, in_bytes + 2 * out_bytes, &seg), "segment")) return 1;
    memcpy(seg.base, logits, in_bytes);
    if (!check(c, moe_route_shm(c, layer.layer_id, MOE_DTYPE_FP32, tokens, &seg, &layer, 0, in_bytes,
                                in_bytes + out_bytes, &res), "route_shm"))
        return 1;
    int same = memcmp((char *)seg.base + in_bytes, w, out_bytes) == 0 &&
               memcmp((char *)seg.base + in_bytes + out_bytes, ids, out_bytes) == 0;
    printf("layer %s (id %u): token 0 -> experts", layer.name, layer.layer_id);
    for (uint32_t j = 0; j < layer.top_k; j++) printf(" %d:%.4f", ids[j], w[j]);
    printf("\ninline and shm results %s; fallback_cast=%d nonfinite=%llu\n", same ? "identical" : "DIFFER",
           res.fallback_cast, (unsigned long long)res.nonfinite_count);

    /* Protocol 2: the last row as padding (a batch filled up to a fixed size). Its ids come back
     * -1 and its weights 0; the other rows are routed as before. */
    if (moe_protocol_version(c) >= 2 && tokens > 1) {
        uint8_t *mask = calloc(tokens, 1);
        mask[tokens - 1] = 1;
        moe_route_info info;
        if (!check(c, moe_route_ex(c, layer.layer_id, MOE_DTYPE_FP32, tokens, logits, n_in * 4, NULL, 0, mask, w, ids,
                                   n_out, &info), "route_ex"))
            return 1;
        int padded = ids[n_out - 1] == -1 && w[n_out - 1] == 0.0f;
        printf("protocol 2: %llu padding row(s), last row %s\n", (unsigned long long)info.masked_tokens,
               padded ? "ids -1" : "NOT PADDED");
        same = same && padded;
        free(mask);
    }
    check(c, moe_segment_destroy(c, &seg), "destroy");
    moe_close(c);
    free(logits);
    free(w);
    free(ids);
    return same ? 0 : 1;
}
