/*
 * The AVX-512 path: moe_token.h's operations, 16 experts at a time, in the same order, so the
 * results are bit-identical to the generic path (tests compare them over the whole matrix).
 *
 * Selection keeps, per 16-expert chunk, the chunk's maximum key; each of the k picks is then a
 * max over at most 64 chunk maxima plus one chunk rescan, instead of a pass over all experts.
 */
#include <immintrin.h>
#include <string.h>

#include "moe_kernels.h"
#include "moe_token.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
#define MAX_CHUNKS (MRK_MAX_EXPERTS / 16)

AVX512 static inline __m512 load_widened(const void *row, int32_t dtype, int32_t i,
                                         __mmask16 m) {
    if (dtype == MRK_DTYPE_FP32) return _mm512_maskz_loadu_ps(m, (const float *)row + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i);
    if (dtype == MRK_DTYPE_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

AVX512 static inline __mmask16 nonfinite_mask(__m512 v) {
    const __m512i e = _mm512_set1_epi32(0x7f800000);
    return _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v), e), e);
}

/* mrk_exp_parts, 16 lanes. NaN lanes return NaN (their lo is irrelevant: they clamp to 0). */
AVX512 static inline __m512 exp_parts_v(__m512 t, __m512 *lo_out) {
    const __mmask16 nan = _mm512_cmp_ps_mask(t, t, _CMP_UNORD_Q);
    const __m512 magic = _mm512_set1_ps(MRK_ROUND_MAGIC);
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 x = _mm512_max_ps(t, _mm512_set1_ps(MRK_EXP_FLOOR));
    __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(MRK_LOG2E)), magic),
                             magic);
    __m512 r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(MRK_LN2_HI))),
                             _mm512_mul_ps(n, _mm512_set1_ps(MRK_LN2_LO)));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
    __m512 hi = _mm512_add_ps(one, r);
    __m512 lo = _mm512_add_ps(_mm512_add_ps(_mm512_sub_ps(one, hi), r),
                              _mm512_mul_ps(p, _mm512_mul_ps(r, r)));
    __m512 e = _mm512_add_ps(hi, lo);
    __m512 e_lo = _mm512_add_ps(_mm512_sub_ps(hi, e), lo);
    __m512i ni = _mm512_cvtps_epi32(n);
    __m512i n1 = _mm512_srai_epi32(_mm512_add_epi32(ni, _mm512_srli_epi32(ni, 31)), 1);
    __m512i n2 = _mm512_sub_epi32(ni, n1);
    const __m512i bias = _mm512_set1_epi32(127);
    __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23));
    __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23));
    *lo_out = _mm512_mul_ps(_mm512_mul_ps(e_lo, s1), s2);
    return _mm512_mask_blend_ps(nan, _mm512_mul_ps(_mm512_mul_ps(e, s1), s2), t);
}

AVX512 static inline __m512 exp_nonpos_v(__m512 t) {
    __m512 lo;
    return exp_parts_v(t, &lo);
}

/* mrk_sigmoid_f, 16 lanes. */
AVX512 static inline __m512 sigmoid_v(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    __m512 neg_abs = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), sign));
    __m512 tl;
    __m512 t = exp_parts_v(neg_abs, &tl);
    __m512 d = _mm512_add_ps(one, t);
    __m512 de = _mm512_add_ps(_mm512_sub_ps(one, d), t);
    __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 s0 = _mm512_div_ps(_mm512_mask_blend_ps(neg, one, t), d);
    __m512 cnum = _mm512_sub_ps(_mm512_maskz_mov_ps(neg, tl),
                                _mm512_mul_ps(s0, _mm512_add_ps(de, tl)));
    __m512 inv = _mm512_mask_blend_ps(neg, s0, _mm512_sub_ps(one, s0));
    return _mm512_add_ps(s0, _mm512_mul_ps(cnum, inv));
}

AVX512 static inline __m512 zero_nonfinite(__m512 v) {
    return _mm512_mask_blend_ps(nonfinite_mask(v), v, _mm512_setzero_ps());
}

AVX512 static inline __mmask16 tail_mask(int32_t remaining) {
    return remaining >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << remaining) - 1u);
}

/* The fold of moe_token.h's softmax: lanes l + l+8, then 4, 2, 1. */
AVX512 static inline float fold_lanes(__m512 acc) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s1);
}

/* Widens the row into score[] and counts non-finite values. */
AVX512 static inline int32_t widen_row(const void *row, int32_t dtype, int32_t E, float *score) {
    int32_t nonfinite = 0;
    for (int32_t i = 0; i < E; i += 16) {
        __mmask16 m = tail_mask(E - i);
        __m512 x = load_widened(row, dtype, i, m);
        nonfinite += __builtin_popcount(nonfinite_mask(x) & m);
        _mm512_mask_storeu_ps(score + i, m, x);
    }
    return nonfinite;
}

AVX512 static void softmax_scores(float *score, int32_t E) {
    __m512 mx = _mm512_set1_ps(-__builtin_inff());
    for (int32_t i = 0; i < E; i += 16)
        mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-__builtin_inff()),
                                                     tail_mask(E - i), score + i));
    /* A NaN or +inf anywhere makes the sum NaN on every path, so how max() treats NaN is moot. */
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 acc = _mm512_setzero_ps();
    for (int32_t i = 0; i < E; i += 16) {
        __mmask16 tm = tail_mask(E - i);
        __m512 e = _mm512_maskz_mov_ps(tm, exp_nonpos_v(_mm512_sub_ps(
                                               _mm512_maskz_loadu_ps(tm, score + i), m)));
        acc = _mm512_add_ps(acc, e);
        _mm512_mask_storeu_ps(score + i, tm, e);
    }
    const __m512 sum = _mm512_set1_ps(fold_lanes(acc));
    for (int32_t i = 0; i < E; i += 16) {
        __mmask16 tm = tail_mask(E - i);
        __m512 s = _mm512_div_ps(_mm512_maskz_loadu_ps(tm, score + i), sum);
        _mm512_mask_storeu_ps(score + i, tm, zero_nonfinite(s));
    }
}

/* Group score over key[0..P): the max, or the sum of the two largest (ties count twice). */
AVX512 static float group_score_v(const float *key, int32_t P, int32_t top2) {
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    __m512 mx = ninf;
    for (int32_t i = 0; i < P; i += 16)
        mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(ninf, tail_mask(P - i), key + i));
    const float t1 = _mm512_reduce_max_ps(mx);
    if (!top2) return t1;
    const __m512 vt1 = _mm512_set1_ps(t1);
    int32_t count = 0;
    __m512 rest = ninf;
    for (int32_t i = 0; i < P; i += 16) {
        __m512 v = _mm512_mask_loadu_ps(ninf, tail_mask(P - i), key + i);
        __mmask16 eq = _mm512_cmp_ps_mask(v, vt1, _CMP_EQ_OQ);
        count += __builtin_popcount(eq);
        rest = _mm512_max_ps(rest, _mm512_mask_blend_ps(eq, v, ninf));
    }
    const float t2 = count >= 2 ? t1 : _mm512_reduce_max_ps(rest);
    return t1 + t2;
}

/* Top-k of key[0..E) (finite, or -inf for removed), lowest index on ties, in descending order.
 * key must be padded with -inf to a multiple of 16. Destroys key. */
AVX512 static void select_topk(float *key, int32_t E, int32_t k, float *chosen, int32_t *ids) {
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    const int32_t nch = (E + 15) / 16;
    if (nch <= 16) {
        __m512 cm = ninf;
        for (int32_t c = 0; c < nch; c++)
            cm = _mm512_mask_mov_ps(cm, (__mmask16)(1u << c),
                                    _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_load_ps(key + 16 * c))));
        for (int32_t j = 0; j < k; j++) {
            const float mv = _mm512_reduce_max_ps(cm);
            const __m512 vmv = _mm512_set1_ps(mv);
            const int32_t c = __builtin_ctz(_mm512_cmp_ps_mask(cm, vmv, _CMP_EQ_OQ));
            __m512 v = _mm512_load_ps(key + 16 * c);
            const int32_t lane = __builtin_ctz(_mm512_cmp_ps_mask(v, vmv, _CMP_EQ_OQ));
            const int32_t idx = 16 * c + lane;
            ids[j] = idx;
            chosen[j] = key[idx];
            v = _mm512_mask_mov_ps(v, (__mmask16)(1u << lane), ninf);
            _mm512_store_ps(key + 16 * c, v);
            cm = _mm512_mask_mov_ps(cm, (__mmask16)(1u << c), _mm512_set1_ps(_mm512_reduce_max_ps(v)));
        }
        return;
    }
    float cm[MAX_CHUNKS] __attribute__((aligned(64)));
    const int32_t ncv = (nch + 15) / 16;
    for (int32_t c = 0; c < ncv * 16; c++)
        cm[c] = c < nch ? _mm512_reduce_max_ps(_mm512_load_ps(key + 16 * c)) : -__builtin_inff();
    for (int32_t j = 0; j < k; j++) {
        __m512 mx = _mm512_load_ps(cm);
        for (int32_t q = 1; q < ncv; q++) mx = _mm512_max_ps(mx, _mm512_load_ps(cm + 16 * q));
        const float mv = _mm512_reduce_max_ps(mx);
        const __m512 vmv = _mm512_set1_ps(mv);
        int32_t c = 0;
        for (int32_t q = 0; q < ncv; q++) {
            __mmask16 eq = _mm512_cmp_ps_mask(_mm512_load_ps(cm + 16 * q), vmv, _CMP_EQ_OQ);
            if (eq) {
                c = 16 * q + __builtin_ctz(eq);
                break;
            }
        }
        __m512 v = _mm512_load_ps(key + 16 * c);
        const int32_t lane = __builtin_ctz(_mm512_cmp_ps_mask(v, vmv, _CMP_EQ_OQ));
        const int32_t idx = 16 * c + lane;
        ids[j] = idx;
        chosen[j] = key[idx];
        v = _mm512_mask_mov_ps(v, (__mmask16)(1u << lane), ninf);
        _mm512_store_ps(key + 16 * c, v);
        cm[c] = _mm512_reduce_max_ps(v);
    }
}

AVX512 int64_t mrk_route_avx512(const mrk_layer *L, const void *logits, int32_t dtype,
                                int64_t tokens, float *weights, int32_t *ids) {
    float score[MRK_MAX_EXPERTS] __attribute__((aligned(64)));
    float key[MRK_MAX_EXPERTS] __attribute__((aligned(64)));
    float gscore[MRK_MAX_GROUPS_INLINE];
    float chosen[MRK_MAX_TOPK];
    const int32_t E = L->num_experts, k = L->top_k, method = L->method;
    const int32_t padded = (E + 15) & ~15;
    const size_t row_bytes = (size_t)E * (dtype == MRK_DTYPE_FP32 ? 4 : 2);
    const int32_t logit_key = method == MRK_TOPK_SOFTMAX || method == MRK_LLAMA4_TOP1;
    const int32_t sigmoid = !logit_key && L->scoring == MRK_SCORING_SIGMOID;
    const int32_t grouped =
        (method == MRK_GROUPED_TOPK || method == MRK_BIASED_GROUPED_TOPK) && L->num_groups > 1;
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    int64_t nonfinite = 0;

    for (int32_t i = E & ~15; i < padded; i += 16) _mm512_store_ps(key + i, ninf);

    for (int64_t t = 0; t < tokens; t++) {
        const void *row = (const char *)logits + (size_t)t * row_bytes;
        if (sigmoid) {
            /* fused: widen, count, sigmoid, clamp, bias */
            for (int32_t i = 0; i < E; i += 16) {
                __mmask16 m = tail_mask(E - i);
                __m512 x = load_widened(row, dtype, i, m);
                nonfinite += __builtin_popcount(nonfinite_mask(x) & m);
                __m512 s = zero_nonfinite(sigmoid_v(x));
                _mm512_mask_storeu_ps(score + i, m, s);
                __m512 c = L->bias ? _mm512_add_ps(s, _mm512_maskz_loadu_ps(m, L->bias + i)) : s;
                _mm512_mask_storeu_ps(key + i, m, c);
            }
        } else {
            nonfinite += widen_row(row, dtype, E, score);
            if (logit_key) {
                for (int32_t i = 0; i < E; i += 16) {
                    __mmask16 m = tail_mask(E - i);
                    __m512 s = zero_nonfinite(_mm512_maskz_loadu_ps(m, score + i));
                    _mm512_mask_storeu_ps(score + i, m, s);
                }
            } else {
                softmax_scores(score, E);
            }
            for (int32_t i = 0; i < E; i += 16) {
                __mmask16 m = tail_mask(E - i);
                __m512 s = _mm512_maskz_loadu_ps(m, score + i);
                __m512 c = L->bias ? _mm512_add_ps(s, _mm512_maskz_loadu_ps(m, L->bias + i)) : s;
                _mm512_mask_storeu_ps(key + i, m, c);
            }
        }
        if (grouped) {
            const int32_t G = L->num_groups, P = E / G;
            for (int32_t g = 0; g < G; g++)
                gscore[g] = group_score_v(key + g * P, P, method == MRK_BIASED_GROUPED_TOPK);
            mrk_keep_groups(gscore, G, L->topk_group, P, key);
        }
        int32_t *id_out = ids + t * k;
        float *w_out = weights + t * k;
        select_topk(key, E, k, chosen, id_out);
        mrk_token_weights(method, k, L->renormalize, L->routed_scaling_factor, chosen, score,
                          id_out, w_out);
    }
    return nonfinite;
}
