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
    MRK_SHARDS = 16,        /* rows of a sharded counter (below) */
};

/*
 * Sharded counters (kernels.c): a counter that many threads bump on every request is MRK_SHARDS
 * rows, `stride` uint64 apart (at least a cache line). Rows 0 .. MRK_SHARDS - 2 each belong to
 * one live thread, which adds with a plain load and store; the last row is shared by threads
 * that found none free, with atomic adds. Its value is the sum of the rows.
 */
extern __thread int32_t mrk_shard_of_thread;
int32_t mrk_shard_take(void);

/* The calling thread's row. */
static inline int32_t mrk_thread_shard(void) {
    const int32_t row = mrk_shard_of_thread;
    return row >= 0 ? row : mrk_shard_take();
}

/* Adds n to counter c in row `row` (the calling thread's). */
static inline void mrk_row_add(uint64_t *c, int32_t row, uint64_t n) {
    if (row == MRK_SHARDS - 1)
        __atomic_fetch_add(c, n, __ATOMIC_RELAXED);
    else
        __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

/* Adds n to the calling thread's row of the counter whose row 0 is `first`. */
static inline void mrk_sharded_add(uint64_t *first, int64_t stride, uint64_t n) {
    const int32_t row = mrk_thread_shard();
    mrk_row_add(first + row * stride, row, n);
}

/* The counter's value: its rows added up (relaxed loads). */
uint64_t mrk_sharded_sum(const uint64_t *first, int64_t stride);

/* Expert load counters: MRK_SHARDS rows of mrk_counts_stride(num_experts) (see above). */
static inline int64_t mrk_counts_stride(int32_t num_experts) { return ((int64_t)num_experts + 7) & ~(int64_t)7; }
static inline int64_t mrk_counts_size(int32_t num_experts) { return MRK_SHARDS * mrk_counts_stride(num_experts); }

typedef enum { MRK_DTYPE_FP32 = 0, MRK_DTYPE_BF16 = 1, MRK_DTYPE_FP16 = 2 } mrk_dtype;

typedef enum {
    MRK_SOFTMAX_TOPK = 0,
    MRK_TOPK_SOFTMAX = 1,
    MRK_GROUPED_TOPK = 2,
    MRK_BIASED_GROUPED_TOPK = 3,
    MRK_BIASED_TOPK = 4,
    MRK_LLAMA4_TOP1 = 5,
} mrk_method;

typedef enum {
    MRK_SCORING_SOFTMAX = 0,
    MRK_SCORING_SIGMOID = 1,
    MRK_SCORING_SQRTSOFTPLUS = 2, /* DeepSeek-V4: sqrt(softplus(x)) */
    MRK_SCORING_NONE = 3,         /* the logit itself (vLLM "TopK") */
} mrk_scoring;

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
    /* 0: the contract's renormalisation (skipped when the sum is <= 0); > 0: w / (sum + eps),
     * never skipped (MiniMax2's 1e-20). */
    float renorm_epsilon;
    int32_t reserved;
    /* Hash-routed layer: tid2eid, [vocab, top_k] expert ids in [0, num_experts); NULL for
     * scored layers. A request's token ids must be checked against vocab first
     * (mrk_check_token_ids). */
    const int32_t *tid2eid;
    int64_t vocab;
} mrk_layer;

/* Routes `tokens` rows of `logits` (row-major [tokens, num_experts] in `dtype`) into
 * `weights`/`ids` ([tokens, top_k]). Non-finite inputs are treated by the clamp policy.
 * Returns the number of non-finite input values seen. The layer must be valid. */
int64_t mrk_route(const mrk_layer *layer, const void *logits, int32_t dtype, int64_t tokens,
                  float *weights, int32_t *ids, int32_t impl);

/* mrk_route with the per-request extras of protocol version 2, all optional:
 *  - mask: [tokens] bytes, 1 = padding row: ids -1, weights 0, its logits (and token id) are
 *    never read; 0 = a token (only 0 and 1 allowed: mrk_check_mask first);
 *  - token_ids: [tokens] int32 (token_id_bytes 4) or int64 (8), required for a hash-routed
 *    layer (layer->tid2eid != NULL), each checked with mrk_check_token_ids first; ignored for
 *    scored layers.
 * Returns the number of non-finite input values in the rows that were not masked. */
int64_t mrk_route_ex(const mrk_layer *layer, const void *logits, int32_t dtype, int64_t tokens,
                     const uint8_t *mask, const void *token_ids, int32_t token_id_bytes,
                     float *weights, int32_t *ids, int32_t impl);

/* Counts the non-finite values in `tokens` rows of `experts` values; returns the index of the
 * first row holding one, or -1. */
int64_t mrk_scan_nonfinite(const void *logits, int32_t dtype, int64_t experts, int64_t tokens,
                           int64_t *count);

/* The same, skipping rows whose mask byte is not 0 (mask may be NULL). */
int64_t mrk_scan_nonfinite_masked(const void *logits, int32_t dtype, int64_t experts,
                                  int64_t tokens, const uint8_t *mask, int64_t *count);

/* The first token whose mask byte is neither 0 nor 1, or -1; *masked gets the number of 1s. */
int64_t mrk_check_mask(const uint8_t *mask, int64_t tokens, int64_t *masked);

/* The first unmasked token whose id is outside [0, vocab), or -1; *value gets that id. */
int64_t mrk_check_token_ids(const void *token_ids, int32_t token_id_bytes, int64_t tokens,
                            int64_t vocab, const uint8_t *mask, int64_t *value);

/* The backend-independent last step of every route, on `tokens` rows of `k` ids whose first row
 * is token `t0` of the request:
 *  - counts (NULL: none; mrk_counts_size(num_experts) counters, sharded as above): the calling
 *    thread's row gets [e] += 1 for every logical id e >= 0 (masked rows hold -1) (a batch
 *    counts into a local array first and adds each expert's total once);
 *  - placement (offsets NULL: none): logical e -> physical replicas
 *    replicas[offsets[e] .. offsets[e+1]); token t takes replica (t mod count) (shared/ROUTING.md).
 * Counting happens before the ids are rewritten, so it counts logical experts. */
void mrk_place_and_count(int32_t *ids, int64_t tokens, int32_t k, int64_t t0,
                         const int32_t *offsets, const int32_t *replicas, uint64_t *counts,
                         int32_t num_experts);

/* The n expert counters mrk_place_and_count adds to (their rows added up) into out. */
void mrk_counts_load(const uint64_t *counts, uint64_t *out, int32_t n);

/* The contract's sqrt(softplus(x)), exposed for accuracy tests. */
float mrk_sqrtsoftplus(float x);

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
