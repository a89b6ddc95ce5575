/*
 * moe_kernels.h — the CPU routing kernels behind MoERouting.
 *
 * Internal to the package: the Swift library is the only caller. The public C API for hosts is
 * Include/moe_router.h. Enum values here equal the wire protocol's (a test pins them).
 */
#ifndef MOE_KERNELS_H
#define MOE_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    MRK_MAX_EXPERTS = 1024, /* the CPU backend's documented upper limit on num_experts */
    MRK_MAX_TOPK = 32,      /* ... and on top_k */
};

typedef enum { MRK_DTYPE_FP32 = 0, MRK_DTYPE_BF16 = 1, MRK_DTYPE_FP16 = 2 } mrk_dtype;

typedef enum {
    MRK_SOFTMAX_TOPK = 0,
    MRK_TOPK_SOFTMAX = 1,
    MRK_GROUPED_TOPK = 2,
    MRK_BIASED_GROUPED_TOPK = 3,
    MRK_BIASED_TOPK = 4,
    MRK_LLAMA4_TOP1 = 5,
} mrk_method;

typedef enum { MRK_SCORING_SOFTMAX = 0, MRK_SCORING_SIGMOID = 1 } mrk_scoring;

typedef enum { MRK_IMPL_GENERIC = 0, MRK_IMPL_AVX512 = 1 } mrk_impl;

/* A validated layer as the kernels see it. `bias` holds the exact fp32 widening of the bias in
 * the dtype the request is computed against, or NULL for methods without a bias. */
typedef struct mrk_layer {
    int32_t method;
    int32_t scoring;
    int32_t num_experts;
    int32_t top_k;
    int32_t num_groups;
    int32_t topk_group;
    int32_t renormalize;
    float routed_scaling_factor;
    const float *bias;
} mrk_layer;

/* Routes `tokens` rows of `logits` (row-major [tokens, num_experts] in `dtype`) into
 * `weights`/`ids` ([tokens, top_k]). Non-finite inputs are treated by the clamp policy.
 * Returns the number of non-finite input values seen. The layer must be valid. */
int64_t mrk_route(const mrk_layer *layer, const void *logits, int32_t dtype, int64_t tokens,
                  float *weights, int32_t *ids, int32_t impl);

/* Counts the non-finite values in `tokens` rows of `experts` values; returns the index of the
 * first row holding one, or -1. */
int64_t mrk_scan_nonfinite(const void *logits, int32_t dtype, int64_t experts, int64_t tokens,
                           int64_t *count);

/* The fastest implementation this CPU runs, and a name for each. */
int32_t mrk_best_impl(void);
int32_t mrk_impl_supported(int32_t impl);
const char *mrk_impl_name(int32_t impl);

/* Exact widening and round-to-nearest-even narrowing. NaN stays NaN (quiet), ±Inf stays ±Inf. */
float mrk_bf16_to_f32(uint16_t bits);
uint16_t mrk_f32_to_bf16(float value);
float mrk_f16_to_f32(uint16_t bits);
uint16_t mrk_f32_to_f16(float value);

/* The contract's exp (arguments <= 0) and sigmoid, exposed for accuracy tests. */
float mrk_exp_nonpositive(float t);
float mrk_sigmoid(float x);

#ifdef __cplusplus
}
#endif

#endif
