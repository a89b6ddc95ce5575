/*
 * The AVX-512 path: moe_token.h's operations, 16 experts at a time, in the same order, so the
 * results are bit-identical to the generic path (tests compare them over the whole matrix).
 * Needs AVX-512 F, BW, DQ and VL, and BMI2 (mrk_impl_supported checks; every AVX-512 CPU has it).
 *
 * Selection keeps, per 16-expert chunk, the chunk's maximum key; each of the k picks is then a
 * max over at most 64 chunk maxima plus one chunk rescan, instead of a pass over all experts.
 *
 * Fast paths (each proves its answer equals the contract's or sends the token to the exact path):
 *  - sigmoid or sqrtsoftplus + bias (biased_grouped_topk, biased_topk; DeepSeek-V3 and V4):
 *    approximate keys, candidates, exact score of the candidates only (avx512_sigmoid.c; the
 *    argument and the approximations are in avx512_internal.h);
 *  - softmax_topk and grouped_topk with softmax scoring: every exp exactly (the sum needs them),
 *    the division only for candidates, with a strictness check against the best non-candidate;
 *  - topk_softmax and llama4_top1: candidates among the logits, exp/sigmoid only for the k chosen;
 *  - softmax_topk with E <= 16: no candidates at all; 16 tokens per block, transposed (one lane
 *    per token, one vector per expert), every step of the contract done vertically (the E score
 *    divisions by one reciprocal of each token's sum and a correction: div_by_recip, exact).
 * One token's candidate pass is a long dependent chain (max, sum, threshold, ...), so the softmax
 * (E <= 64) and grouped softmax candidate passes run two tokens side by side.
 * Candidates are ranked by a bitonic sort of order-preserving integer keys (the lane in the low
 * bits); truncation ties fall back to the tie-aware ranking loop.
 *
 * The exact path covers every method and scoring (sqrtsoftplus and none included) and
 * renorm_epsilon; hash-routed layers have their own path (avx512_hash.c).
 *
 * This file: the exact path for one token and the dispatch; the fast paths' block functions are
 * in avx512_sigmoid.c and avx512_softmax.c, the helpers they share in avx512_internal.h.
 */
#include "avx512_internal.h"

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



/* The exact path for one token: moe_token.h's operations, vectorised. */
AVX512 static int32_t route_token_exact(const route_ctx *C, const void *row, int32_t dtype,
                                        float *score, float *key, float *w_out,
                                        int32_t *id_out) {
    const mrk_layer *L = C->L;
    const int32_t E = C->E, k = C->k, method = C->method;
    float gscore[MRK_MAX_GROUPS_INLINE];
    float chosen[MRK_MAX_TOPK];
    int32_t nonfinite = 0;
    if (C->elementwise) {
        /* fused: widen, count, score, clamp, bias */
        for (int32_t i = 0; i < E; i += 16) {
            __mmask16 m = tail_mask(E - i);
            __m512 x = load_widened(row, dtype, i, m);
            nonfinite += __builtin_popcount(nonfinite_mask(x) & m);
            __m512 s = zero_nonfinite(score_elementwise_v(C->elementwise, x));
            _mm512_mask_storeu_ps(score + i, m, s);
            __m512 c = L->bias ? _mm512_add_ps(s, _mm512_maskz_loadu_ps(m, L->bias + i)) : s;
            _mm512_mask_storeu_ps(key + i, m, c);
        }
    } else {
        nonfinite += widen_row(row, dtype, E, score);
        if (C->logit_key) {
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
    if (C->grouped) {
        const int32_t G = L->num_groups, P = E / G;
        for (int32_t g = 0; g < G; g++)
            gscore[g] = group_score_v(key + g * P, P, method == MRK_BIASED_GROUPED_TOPK);
        mrk_keep_groups(gscore, G, L->topk_group, P, key);
    }
    select_topk(key, E, k, chosen, id_out);
    mrk_token_weights(method, k, L->renormalize, L->renorm_epsilon, L->routed_scaling_factor,
                      chosen, score, id_out, w_out);
    return nonfinite;
}


#ifdef MRK_FAST_STATS
long mrk_fast_fallbacks;
#endif
AVX512 int64_t mrk_route_avx512(const mrk_layer *L, const void *logits, int32_t dtype,
                                int64_t tokens, float *weights, int32_t *ids) {
    float score[MRK_MAX_EXPERTS] __attribute__((aligned(64)));
    float key[MRK_MAX_EXPERTS] __attribute__((aligned(64)));
    route_ctx C;
    C.L = L;
    C.E = L->num_experts;
    C.k = L->top_k;
    C.method = L->method;
    C.logit_key = C.method == MRK_TOPK_SOFTMAX || C.method == MRK_LLAMA4_TOP1;
    C.elementwise = C.logit_key || L->scoring == MRK_SCORING_SOFTMAX ? 0 : L->scoring;
    C.grouped = (C.method == MRK_GROUPED_TOPK || C.method == MRK_BIASED_GROUPED_TOPK) &&
                L->num_groups > 1;
    const int32_t E = C.E, k = C.k;
    const int32_t padded = (E + 15) & ~15;
    const size_t row_bytes = (size_t)E * (dtype == MRK_DTYPE_FP32 ? 4 : 2);
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    int64_t nonfinite = 0;

    for (int32_t i = E & ~15; i < padded; i += 16) _mm512_store_ps(key + i, ninf);

    /* Is the fast path usable for this layer? */
    fast_ctx F;
    int fast = 0;
    if ((C.elementwise == MRK_SCORING_SIGMOID || C.elementwise == MRK_SCORING_SQRTSOFTPLUS) && L->bias &&
        (C.method == MRK_BIASED_GROUPED_TOPK || C.method == MRK_BIASED_TOPK)) {
        F.ssp = C.elementwise == MRK_SCORING_SQRTSOFTPLUS;
        /* max |bias| in 16-wide steps; a NaN anywhere makes it +Inf (no fast path) */
        __m512 vmax = _mm512_setzero_ps();
        __mmask16 nan = 0;
        for (int32_t i = 0; i < E; i += 16) {
            const __mmask16 m = E - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (E - i)) - 1);
            const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(m, L->bias + i));
            nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
            vmax = _mm512_max_ps(vmax, a);
        }
        const float bmax = nan ? __builtin_inff() : _mm512_reduce_max_ps(vmax);
        F.nch = (E + 15) / 16;
        F.G = 0;
        F.Gk = 0;
        F.cpg = 0;
        fast = bmax <= 1.0e6f;
        if (C.grouped) {
            const int32_t G = L->num_groups, P = E / G;
            F.G = G;
            F.Gk = L->topk_group;
            F.cpg = P / 16;
            if (!(P % 16 == 0 && G <= 8 && 2 * F.Gk >= k && P / 16 <= 64 / G)) fast = 0;
        } else if (F.nch < k) {
            fast = 0;
        }
        /* D + 2^-21 (max |s| + 1 + bmax), rounded up generously: |s| <= 1 for the sigmoid, and for
         * sqrtsoftplus <= 4.5 wherever A differs from s (x <= 20) */
        F.dp = F.ssp ? (SSP_APPROX_ERR + (5.5f + bmax) * 4.76837158e-7f) * 1.0001f
                     : (SIG_APPROX_ERR + (2.0f + bmax) * 4.76837158e-7f) * 1.0001f;
        /* bf16 rows, groups of whole 32-expert blocks, enough tokens to pay for the copy */
        F.eo = fast && dtype == MRK_DTYPE_BF16 && E % 32 == 0 && (F.G == 0 || F.cpg % 2 == 0) &&
               tokens >= 4;
        if (F.eo)
            for (int32_t i = 0; i < E; i += 32) {
                const __m512 lo = _mm512_loadu_ps(L->bias + i), hi = _mm512_loadu_ps(L->bias + i + 16);
                const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
                _mm512_store_ps(F.bias_eo + i, _mm512_permutex2var_ps(lo, ev, hi));
                _mm512_store_ps(F.bias_eo + i + 16, _mm512_permutex2var_ps(lo, od, hi));
            }
        const float *const tables[4] = {F.ssp ? SSP_C0 : SIG_C0, F.ssp ? SSP_C1 : SIG_C1,
                                        F.ssp ? SSP_C2 : SIG_C2, F.ssp ? SSP_C3 : SIG_C3};
        for (int32_t q = 0; q < 4; q++) {
            F.t[2 * q] = _mm512_load_ps(tables[q]);
            F.t[2 * q + 1] = _mm512_load_ps(tables[q] + 16);
        }
    }

    const int softmax_fast =
        C.method == MRK_SOFTMAX_TOPK && L->scoring == MRK_SCORING_SOFTMAX && !L->bias && k <= 16;
    const int logit_fast = C.logit_key && k <= 16;
    const int gsoft_fast = C.method == MRK_GROUPED_TOPK && C.grouped &&
                           L->scoring == MRK_SCORING_SOFTMAX && !L->bias && k <= 16 &&
                           L->num_groups <= 16 && E / L->num_groups <= 32;
    int32_t gid[MRK_MAX_EXPERTS + 16] __attribute__((aligned(64)));
    if (gsoft_fast)
        for (int32_t i = 0; i < padded; i++) gid[i] = i < E ? i / (E / L->num_groups) : 0;
    if (softmax_fast || logit_fast || gsoft_fast) {
        uint8_t need_exact[16];
        for (int64_t t0 = 0; t0 < tokens; t0 += 16) {
            const int32_t nb = tokens - t0 < 16 ? (int32_t)(tokens - t0) : 16;
            const char *rows = (const char *)logits + (size_t)t0 * row_bytes;
            if (gsoft_fast)
                mrk_avx512_gsoft_block(&C, gid, rows, row_bytes, dtype, nb, weights + t0 * k,
                                       ids + t0 * k, need_exact);
            else if (softmax_fast)
                mrk_avx512_softmax_block(&C, rows, row_bytes, dtype, nb, weights + t0 * k,
                                         ids + t0 * k, need_exact);
            else
                mrk_avx512_logit_block(&C, rows, row_bytes, dtype, nb, weights + t0 * k,
                                       ids + t0 * k, need_exact);
            for (int32_t b = 0; b < nb; b++) {
                if (!need_exact[b]) continue;
#ifdef MRK_FAST_STATS
                mrk_fast_fallbacks++;
#endif
                const int64_t t = t0 + b;
                nonfinite += route_token_exact(&C, rows + (size_t)b * row_bytes, dtype, score, key,
                                               weights + t * k, ids + t * k);
            }
        }
        return nonfinite;
    }
    if (fast) {
        const int32_t block = FAST_BLOCK_FLOATS / padded < 16 ? FAST_BLOCK_FLOATS / padded : 16;
        uint8_t need_exact[16];
        for (int64_t t0 = 0; t0 < tokens; t0 += block) {
            const int32_t nb = tokens - t0 < block ? (int32_t)(tokens - t0) : block;
            const char *rows = (const char *)logits + (size_t)t0 * row_bytes;
            mrk_avx512_fast_block(&C, &F, rows, row_bytes, dtype, nb, weights + t0 * k,
                                  ids + t0 * k, need_exact);
            for (int32_t b = 0; b < nb; b++) {
                if (!need_exact[b]) continue;
#ifdef MRK_FAST_STATS
                mrk_fast_fallbacks++;
#endif
                const int64_t t = t0 + b;
                nonfinite += route_token_exact(&C, rows + (size_t)b * row_bytes, dtype, score, key,
                                               weights + t * k, ids + t * k);
            }
        }
        return nonfinite;
    }
    for (int64_t t = 0; t < tokens; t++) {
        const void *row = (const char *)logits + (size_t)t * row_bytes;
        nonfinite += route_token_exact(&C, row, dtype, score, key, weights + t * k, ids + t * k);
    }
    return nonfinite;
}

#ifdef MRK_VERIFY_SIG_APPROX
/* Exhaustive check of SIG_APPROX_ERR: max |sig_approx_v(x) - sigmoid_v(x)| over every finite
 * fp32 x (about 20 s on one core). Returns 1 when the bound holds; *max_err gets the maximum. */
AVX512 int mrk_verify_sig_approx(double *max_err) {
    const __m512 t0a = _mm512_load_ps(SIG_C0), t0b = _mm512_load_ps(SIG_C0 + 16);
    const __m512 t1a = _mm512_load_ps(SIG_C1), t1b = _mm512_load_ps(SIG_C1 + 16);
    const __m512 t2a = _mm512_load_ps(SIG_C2), t2b = _mm512_load_ps(SIG_C2 + 16);
    const __m512 t3a = _mm512_load_ps(SIG_C3), t3b = _mm512_load_ps(SIG_C3 + 16);
    const __m512i inc = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512d mx = _mm512_setzero_pd();
    int ok = 1;
    for (uint64_t b = 0; b < (1ull << 32); b += 16) {
        const __m512 x = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)b), inc));
        const __mmask16 fin = (__mmask16)~nonfinite_mask(x);
        const __m512 a = sig_approx_v(x, t0a, t0b, t1a, t1b, t2a, t2b, t3a, t3b);
        const __m512 s = sigmoid_v(x);
        __m512d d0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(a)),
                                   _mm512_cvtps_pd(_mm512_castps512_ps256(s)));
        __m512d d1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(a, 1)),
                                   _mm512_cvtps_pd(_mm512_extractf32x8_ps(s, 1)));
        d0 = _mm512_maskz_mov_pd((__mmask8)fin, _mm512_abs_pd(d0));
        d1 = _mm512_maskz_mov_pd((__mmask8)(fin >> 8), _mm512_abs_pd(d1));
        if (_mm512_cmp_pd_mask(d0, d0, _CMP_UNORD_Q) | _mm512_cmp_pd_mask(d1, d1, _CMP_UNORD_Q)) ok = 0;
        mx = _mm512_max_pd(mx, _mm512_max_pd(d0, d1));
    }
    *max_err = _mm512_reduce_max_pd(mx);
    return ok && *max_err < (double)SIG_APPROX_ERR;
}
#endif

#ifdef MRK_VERIFY_DIV_RECIP
/* Check of div_by_recip against the division: for each divisor b[i], every fp32 dividend whose bit
 * pattern lies in [a_lo, a_hi] (a_hi = 0: up to b itself) and is a_lo plus a multiple of `stride`.
 * Returns the number of (a, b) whose quotients differ in any bit; *checked gets the number
 * compared. */
AVX512 int64_t mrk_verify_div_recip(const float *divisors, int32_t n, uint32_t a_lo, uint32_t a_hi,
                                    uint32_t stride, int64_t *checked) {
    const __m512i inc = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)stride));
    int64_t bad = 0, count = 0;
    for (int32_t i = 0; i < n; i++) {
        const float bf = divisors[i];
        uint32_t top = a_hi;
        if (!top) memcpy(&top, &bf, 4);
        const __m512 b = _mm512_set1_ps(bf);
        const __m512 y = _mm512_div_ps(_mm512_set1_ps(1.0f), b);
        for (uint64_t base = a_lo; base <= top; base += 16ull * stride) {
            const __m512i bits = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)base), inc);
            const __mmask16 in = _mm512_cmple_epu32_mask(bits, _mm512_set1_epi32((int)top)) &
                                 _mm512_cmpge_epu32_mask(bits, _mm512_set1_epi32((int)(uint32_t)base));
            const __m512 a = _mm512_castsi512_ps(bits);
            const __m512i q = _mm512_castps_si512(div_by_recip(a, b, y));
            const __m512i d = _mm512_castps_si512(_mm512_div_ps(a, b));
            bad += __builtin_popcount(_mm512_mask_cmpneq_epi32_mask(in, q, d));
            count += __builtin_popcount(in);
        }
    }
    *checked = count;
    return bad;
}
#endif
