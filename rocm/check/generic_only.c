/*
 * The checks compare against the CPU backend's generic path (mrk_route with MRK_IMPL_GENERIC:
 * moe_token.h, the contract's reference code) and link Sources/CMoEKernels/kernels.c alone,
 * since the AVX-512 sources build with clang only and GPU machines may have gcc alone. kernels.c
 * names the AVX-512 entry in its dispatch; this stands in for it and is never called.
 */
#include <stdlib.h>

#include "moe_kernels.h"

int64_t mrk_route_avx512(const mrk_layer *layer, const void *logits, int32_t dtype, int64_t tokens,
                         float *weights, int32_t *ids) {
    (void)layer, (void)logits, (void)dtype, (void)tokens, (void)weights, (void)ids;
    abort();
}

int64_t mrk_hash_avx512(const mrk_layer *layer, const void *logits, int32_t dtype, int64_t tokens,
                        const uint8_t *mask, const void *token_ids, int32_t token_id_bytes, float *weights,
                        int32_t *ids) {
    (void)layer, (void)logits, (void)dtype, (void)tokens, (void)mask, (void)token_ids, (void)token_id_bytes;
    (void)weights, (void)ids;
    abort();
}
