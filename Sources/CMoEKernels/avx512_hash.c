/*
 * Hash-routed layers (DeepSeek-V4's first layers) on AVX-512: mrk_hash_token's operations
 * (moe_token.h, the definition the generic path runs), bit for bit.
 *
 * A hash layer's ids come from its tid2eid table, so the work per token is the whole-row
 * non-finite count (the contract reports it for every method) and the scores of the k chosen
 * experts: for element-wise scorings, k logits through the exact vector scoring function; for
 * softmax, the whole row's softmax (its sum needs every expert). Element-wise scorings run 16
 * tokens at a time: the row scans first (one vfpclassps per 16 fp32 values, or a compare per 32
 * bf16/fp16 values), then every token's k logits in one flat list, scored 16 lanes at a time
 * (for DeepSeek-V4's k = 6, 2.7 tokens per sqrt(softplus) vector instead of one token with 10
 * idle lanes), then each token's renormalisation in column order.
 */
#include "avx512_internal.h"

/* The number of non-finite values among the row's E values. */
AVX512 static inline int32_t row_nonfinite(const void *row, int32_t dtype, int32_t E) {
    const __m512i minus1 = _mm512_set1_epi32(-1);
    if (dtype == MRK_DTYPE_FP32) {
        const float *r = (const float *)row;
        /* two accumulators: each masked subtraction depends on the last one of its chain */
        __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
        int32_t i = 0;
        for (; i + 32 <= E; i += 32) {
            /* QNaN | +inf | -inf | SNaN */
            a0 = _mm512_mask_sub_epi32(a0, _mm512_fpclass_ps_mask(_mm512_loadu_ps(r + i), 0x99), a0, minus1);
            a1 = _mm512_mask_sub_epi32(a1, _mm512_fpclass_ps_mask(_mm512_loadu_ps(r + i + 16), 0x99), a1, minus1);
        }
        for (; i < E; i += 16) {
            const __mmask16 m = tail_mask(E - i);
            a0 = _mm512_mask_sub_epi32(a0, _mm512_mask_fpclass_ps_mask(m, _mm512_maskz_loadu_ps(m, r + i), 0x99),
                                       a0, minus1);
        }
        return _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
    }
    const uint16_t *r = (const uint16_t *)row;
    const __m512i expo = _mm512_set1_epi16(dtype == MRK_DTYPE_BF16 ? 0x7f80 : 0x7c00);
    int32_t n = 0;
    for (int32_t i = 0; i < E; i += 32) {
        const __mmask32 m = E - i >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (E - i)) - 1u);
        const __m512i v = _mm512_maskz_loadu_epi16(m, r + i);
        n += __builtin_popcount(_mm512_mask_cmpeq_epi16_mask(m, _mm512_and_si512(v, expo), expo));
    }
    return n;
}

/* mrk_finish_weights on w[0..k), the same operations lane by lane. */
AVX512 static inline void finish_weights_v(const mrk_layer *L, const float *w, int32_t k, float *out) {
    float d = 1.0f;
    int divide = 0;
    if (L->renormalize) {
        float sum = 0.0f;
        for (int32_t j = 0; j < k; j++) sum = sum + w[j];
        if (L->renorm_epsilon > 0.0f) {
            d = sum + L->renorm_epsilon;
            divide = 1;
        } else if (sum > 0.0f) {
            d = sum;
            divide = 1;
        }
    }
    const __m512 vd = _mm512_set1_ps(d), rsf = _mm512_set1_ps(L->routed_scaling_factor);
    for (int32_t j = 0; j < k; j += 16) {
        const __mmask16 m = tail_mask(k - j);
        __m512 v = _mm512_maskz_loadu_ps(m, w + j);
        if (divide) v = _mm512_div_ps(v, vd);
        _mm512_mask_storeu_ps(out + j, m, _mm512_mul_ps(v, rsf));
    }
}

static inline int64_t token_id(const void *token_ids, int32_t bytes, int64_t t) {
    if (bytes == 8) return ((const int64_t *)token_ids)[t];
    return ((const int32_t *)token_ids)[t];
}

#define HASH_BLOCK 16

/* Tokens [0, nb) of a block, element-wise scoring. */
AVX512 static int64_t hash_block_elementwise(const mrk_layer *L, const char *rows, size_t row_bytes,
                                             int32_t dtype, int32_t nb, const uint8_t *mask,
                                             const void *token_ids, int32_t token_id_bytes, int64_t t0,
                                             float *weights, int32_t *ids) {
    const int32_t E = L->num_experts, k = L->top_k;
    const int32_t *table_row[HASH_BLOCK];
    float x[HASH_BLOCK * MRK_MAX_TOPK + 16] __attribute__((aligned(64)));
    float s[HASH_BLOCK * MRK_MAX_TOPK + 16] __attribute__((aligned(64)));
    int64_t nonfinite = 0;
    for (int32_t b = 0; b < nb; b++) {
        table_row[b] = mask && mask[b] ? NULL : L->tid2eid + token_id(token_ids, token_id_bytes, t0 + b) * k;
        if (table_row[b]) _mm_prefetch((const char *)table_row[b], _MM_HINT_T0);
    }
    for (int32_t b = 0; b < nb; b++)
        if (table_row[b]) nonfinite += row_nonfinite(rows + (size_t)b * row_bytes, dtype, E);
    int32_t n = 0;
    for (int32_t b = 0; b < nb; b++) {
        if (!table_row[b]) continue;
        const void *row = rows + (size_t)b * row_bytes;
        for (int32_t j = 0; j < k; j++) x[n + j] = mrk_widen(row, dtype, table_row[b][j]);
        n += k;
    }
    _mm512_storeu_ps(x + n, _mm512_setzero_ps()); /* the last vector's unused lanes */
    const int32_t scoring = L->scoring;
    for (int32_t q = 0; q < n; q += 16) {
        const __m512 v = _mm512_load_ps(x + q);
        _mm512_store_ps(s + q, zero_nonfinite(score_elementwise_v(scoring, v)));
    }
    n = 0;
    for (int32_t b = 0; b < nb; b++) {
        if (!table_row[b]) continue;
        finish_weights_v(L, s + n, k, weights + (size_t)b * k);
        for (int32_t j = 0; j < k; j += 16) {
            const __mmask16 m = tail_mask(k - j);
            _mm512_mask_storeu_epi32(ids + (size_t)b * k + j, m, _mm512_maskz_loadu_epi32(m, table_row[b] + j));
        }
        n += k;
    }
    return nonfinite;
}

AVX512 int64_t mrk_hash_avx512(const mrk_layer *L, const void *logits, int32_t dtype, int64_t tokens,
                               const uint8_t *mask, const void *token_ids, int32_t token_id_bytes,
                               float *weights, int32_t *ids) {
    const int32_t E = L->num_experts, k = L->top_k;
    const size_t row_bytes = (size_t)E * (dtype == MRK_DTYPE_FP32 ? 4 : 2);
    int64_t nonfinite = 0;
    if (L->scoring == MRK_SCORING_SOFTMAX) {
        float score[MRK_MAX_EXPERTS] __attribute__((aligned(64)));
        for (int64_t t = 0; t < tokens; t++) {
            if (mask && mask[t]) continue;
            const int32_t *table_row = L->tid2eid + token_id(token_ids, token_id_bytes, t) * k;
            nonfinite += widen_row((const char *)logits + (size_t)t * row_bytes, dtype, E, score);
            softmax_scores(score, E); /* clamped: as mrk_hash_token clamps the k it reads */
            float w[MRK_MAX_TOPK];
            for (int32_t j = 0; j < k; j++) {
                w[j] = score[table_row[j]];
                ids[t * k + j] = table_row[j];
            }
            finish_weights_v(L, w, k, weights + t * k);
        }
        return nonfinite;
    }
    for (int64_t t0 = 0; t0 < tokens; t0 += HASH_BLOCK) {
        const int32_t nb = tokens - t0 < HASH_BLOCK ? (int32_t)(tokens - t0) : HASH_BLOCK;
        nonfinite += hash_block_elementwise(L, (const char *)logits + (size_t)t0 * row_bytes, row_bytes, dtype, nb,
                                            mask ? mask + t0 : NULL, token_ids, token_id_bytes, t0,
                                            weights + t0 * k, ids + t0 * k);
    }
    return nonfinite;
}
