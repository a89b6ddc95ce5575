/*
 * The AVX-512 fast path for sigmoid or sqrtsoftplus scoring with a bias (biased_grouped_topk,
 * biased_topk): approximate keys, candidates, the exact score of the candidates only. The
 * argument is in avx512_internal.h, above the approximations' tables. Every function here takes
 * `ssp` (a compile-time constant in each instantiation): 1 for sqrtsoftplus, 0 for sigmoid.
 */
#include "avx512_rank.h"

/* The approximate score A(x) of the layer's scoring. */
AVX512 static inline __attribute__((always_inline)) __m512 approx_score(const fast_ctx *F, __m512 x,
                                                                       const int ssp) {
    if (ssp) return ssp_approx_v(x, F->t);
    return sig_approx_v(x, F->t[0], F->t[1], F->t[2], F->t[3], F->t[4], F->t[5], F->t[6], F->t[7]);
}

/* The fast path runs in three phases over a block of tokens (so that one token's long chain of
 * dependent operations overlaps the next token's work). Each phase returns 0 when it cannot
 * prove its answer: the caller then reruns the token exactly. */

/* Phase 1: approximate keys (and the widened row, for dtypes other than fp32).
 *
 * eo (bf16 rows, E a multiple of 32): the keys are stored in an even/odd layout, each 32
 * experts as two chunks, first the 16 even experts then the 16 odd ones. One 512-bit load of
 * 32 bf16 values widens to both chunks with a shift and a mask (no cross-lane shuffle, which
 * would compete with the table lookups for the one shuffle port); F->bias_eo holds the bias in
 * the same layout. Group top-2 sums and thresholds do not depend on the order inside a group
 * (eo is used only when each group is whole 32-expert blocks); the candidates' indices are
 * computed from the layout (chunk_experts) and ranked by index on ties (fast_rank_weights). */
AVX512 static inline __attribute__((always_inline)) int
fast_phase1(const fast_ctx *F, const float *bias, const void *row, int32_t dtype, float *xw,
            float *akey, const int32_t E, const int eo, const int ssp) {
    const int32_t nch = (E + 15) / 16;
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    if (eo) {
        /* the bf16 exponent field of both halves of each 32-bit lane */
        const __m512i expmask = _mm512_set1_epi16(0x7f80);
        __m512i nfacc = _mm512_setzero_si512();
        for (int32_t c2 = 0; c2 < E / 32; c2++) {
            const __m512i v = _mm512_loadu_si512((const uint16_t *)row + 32 * c2);
            _mm_prefetch((const char *)row + 4 * (size_t)E + 64 * c2, _MM_HINT_T0);
            nfacc = _mm512_max_epu16(nfacc, _mm512_and_si512(v, expmask));
            const __m512 xe = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            const __m512 xo = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
            __m512 ae = approx_score(F, xe, ssp);
            __m512 ao = approx_score(F, xo, ssp);
            _mm512_store_ps(akey + 32 * c2, _mm512_add_ps(ae, _mm512_load_ps(F->bias_eo + 32 * c2)));
            _mm512_store_ps(akey + 32 * c2 + 16, _mm512_add_ps(ao, _mm512_load_ps(F->bias_eo + 32 * c2 + 16)));
        }
        return !_mm512_cmpeq_epi16_mask(nfacc, expmask);
    }
    const __m512i expmask = _mm512_set1_epi32(0x7f800000);
    __m512i nfacc = _mm512_setzero_si512();
    for (int32_t c = 0; c < nch; c++) {
        const int32_t i = 16 * c;
        const __mmask16 m = tail_mask(E - i);
        __m512 x = load_widened(row, dtype, i, m);
        /* the row two tokens ahead (the hardware prefetcher alone leaves ~10 ns per token of
         * L3 latency on the table; a prefetch never faults, even past the end) */
        _mm_prefetch((const char *)row + 2 * (size_t)E * (dtype == MRK_DTYPE_FP32 ? 4 : 2) +
                         (dtype == MRK_DTYPE_FP32 ? 64 : 32) * c,
                     _MM_HINT_T0);
        nfacc = _mm512_max_epu32(nfacc, _mm512_and_si512(_mm512_castps_si512(x), expmask));
        /* the widened row, for phase 3 (bf16 with E even reads the row itself) */
        if (dtype == MRK_DTYPE_FP16 || (dtype == MRK_DTYPE_BF16 && (E & 1)))
            _mm512_store_ps(xw + i, x);
        __m512 a = approx_score(F, x, ssp);
        a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, bias + i));
        _mm512_store_ps(akey + i, _mm512_mask_mov_ps(ninf, m, a));
    }
    return !_mm512_cmpeq_epi32_mask(nfacc, expmask);
}

/* The experts of key chunk c, lane by lane (see fast_phase1 for the even/odd layout). */
AVX512 static inline __m512i chunk_experts(int32_t c, const int eo) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    if (eo) return _mm512_add_epi32(_mm512_add_epi32(lane, lane), _mm512_set1_epi32(32 * (c >> 1) + (c & 1)));
    return _mm512_add_epi32(lane, _mm512_set1_epi32(16 * c));
}

/* Phase 2: kept groups and the candidates (indices; ascending unless eo) into cidx; returns their number,
 * or 0 when the token must take the exact path. cidx has room for FAST_MAX_CAND + 16. */
AVX512 static inline __attribute__((always_inline)) int32_t
fast_phase2(const fast_ctx *F, const float *akey, int32_t *cidx, const int32_t E, const int32_t k,
            const int32_t G_, const int32_t cpg_, const int eo) {
    const int32_t nch = (E + 15) / 16;
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    float thr;
    uint64_t kept_chunks[MAX_CHUNKS / 64 + 1];
    if (G_) {
        /* 2. group scores (top-2 sums) of the approximate keys, G <= 8, P = 16 * cpg */
        const int32_t G = G_, cpg = cpg_;
        __m512 m1[8], m2[8], o1, o2;
        for (int32_t g = 0; g < 8; g++) {
            if (g >= G) {
                m1[g] = ninf;
                m2[g] = ninf;
                continue;
            }
            const float *kg = akey + 16 * cpg * g;
            if (cpg == 1) {
                m1[g] = _mm512_load_ps(kg);
                m2[g] = ninf;
            } else {
                __m512 v0 = _mm512_load_ps(kg), v1 = _mm512_load_ps(kg + 16);
                m1[g] = _mm512_max_ps(v0, v1);
                m2[g] = _mm512_min_ps(v0, v1);
                for (int32_t q = 2; q < cpg; q++) {
                    __m512 v = _mm512_load_ps(kg + 16 * q);
                    m2[g] = _mm512_max_ps(m2[g], _mm512_min_ps(m1[g], v));
                    m1[g] = _mm512_max_ps(m1[g], v);
                }
            }
        }
        group_top2_8(m1, m2, &o1, &o2);
        const __m512i gperm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
        const __mmask16 gm = (__mmask16)((1u << G) - 1u);
        const __m512 gt2 = _mm512_permutexvar_ps(gperm, o2);
        const __m512 ga = _mm512_mask_mov_ps(ninf, gm, _mm512_add_ps(_mm512_permutexvar_ps(gperm, o1), gt2));
        float gav[16] __attribute__((aligned(64)));
        _mm512_store_ps(gav, ga);
        __m512i cnt = _mm512_setzero_si512();
        for (int32_t h = 0; h < G; h++)
            cnt = _mm512_mask_sub_epi32(cnt, _mm512_cmp_ps_mask(_mm512_set1_ps(gav[h]), ga, _CMP_GT_OQ),
                                        cnt, _mm512_set1_epi32(-1));
        const __mmask16 kept = _mm512_mask_cmplt_epi32_mask(gm, cnt, _mm512_set1_epi32(F->Gk));
        if (__builtin_popcount(kept) != F->Gk) return 0;
        const float min_kept = _mm512_mask_reduce_min_ps(kept, ga);
        const __mmask16 rest = gm & (__mmask16)~kept;
        if (rest) {
            const float max_rest = _mm512_mask_reduce_max_ps(rest, ga);
            if (!(min_kept > max_rest + 6.0f * F->dp)) return 0;
        }
        thr = _mm512_mask_reduce_min_ps(kept, gt2) - 2.5f * F->dp;
        uint64_t km = 0;
        for (int32_t g = 0; g < G; g++)
            if (kept & (1u << g)) km |= ((cpg == 64 ? ~0ull : ((1ull << cpg) - 1)) << (g * cpg));
        kept_chunks[0] = km;
    } else if (nch < 16 && k <= 16) {
        /* 2'. threshold from the 16 lane-wise maxima (disjoint sets of experts): their k-th
         * largest is a lower bound on the k-th key; with fewer than 16 chunks, a tighter one than
         * the chunk maxima give */
        __m512 lm = _mm512_load_ps(akey);
        for (int32_t c = 1; c < nch; c++) lm = _mm512_max_ps(lm, _mm512_load_ps(akey + 16 * c));
        thr = kth_largest16(lm, k) - 2.5f * F->dp;
    } else {
        /* 2'. threshold from the chunk maxima: the k-th largest is a lower bound on the k-th key */
        float cm[MAX_CHUNKS] __attribute__((aligned(64)));
        const int32_t ncv = (nch + 15) / 16;
        for (int32_t q = 0; q < ncv; q++) {
            __m512 v[16];
            for (int32_t c = 0; c < 16; c++)
                v[c] = 16 * q + c < nch ? _mm512_load_ps(akey + 16 * (16 * q + c)) : ninf;
            _mm512_store_ps(cm + 16 * q, _mm512_permutexvar_ps(_mm512_load_si512(TREE16_PERM),
                                                               tree_max16(v)));
        }
        /* (loops over all MAX_CHUNKS / 16 vectors, unused ones skipped: a loop to ncv kept
         * cnt and cmv in memory, set by memset and memcpy calls per token) */
        __m512i cnt[MAX_CHUNKS / 16];
        __m512 cmv[MAX_CHUNKS / 16];
        for (int32_t q = 0; q < MAX_CHUNKS / 16; q++) {
            cnt[q] = _mm512_setzero_si512();
            cmv[q] = q < ncv ? _mm512_load_ps(cm + 16 * q) : ninf;
        }
        for (int32_t j = 0; j < nch; j++) {
            const __m512 b = _mm512_set1_ps(cm[j]);
            for (int32_t q = 0; q < MAX_CHUNKS / 16; q++)
                if (q < ncv)
                    cnt[q] = _mm512_mask_sub_epi32(cnt[q], _mm512_cmp_ps_mask(b, cmv[q], _CMP_GE_OQ),
                                                   cnt[q], _mm512_set1_epi32(-1));
        }
        __m512 best = ninf;
        for (int32_t q = 0; q < MAX_CHUNKS / 16; q++)
            if (q < ncv)
                best = _mm512_mask_max_ps(best, _mm512_cmpge_epi32_mask(cnt[q], _mm512_set1_epi32(k)),
                                          best, cmv[q]);
        thr = _mm512_reduce_max_ps(best) - 2.5f * F->dp;
    }
    /* 3. candidates: every expert whose approximate key reaches thr */
    int32_t n = 0;
    const __m512 vthr = _mm512_set1_ps(thr);
    if (G_) {
        for (uint64_t km = kept_chunks[0]; km; km &= km - 1) {
            const int32_t c = __builtin_ctzll(km);
            const __mmask16 m = _mm512_cmp_ps_mask(_mm512_load_ps(akey + 16 * c), vthr, _CMP_GE_OQ);
            _mm512_storeu_si512(cidx + (n < FAST_MAX_CAND ? n : FAST_MAX_CAND),
                                _mm512_maskz_compress_epi32(m, chunk_experts(c, eo)));
            n += __builtin_popcount(m);
        }
    } else {
        for (int32_t c = 0; c < nch; c++) {
            const __mmask16 m = _mm512_cmp_ps_mask(_mm512_load_ps(akey + 16 * c), vthr, _CMP_GE_OQ);
            _mm512_storeu_si512(cidx + (n < FAST_MAX_CAND ? n : FAST_MAX_CAND),
                                _mm512_maskz_compress_epi32(m, chunk_experts(c, eo)));
            n += __builtin_popcount(m);
        }
    }
    return n < k || n > FAST_MAX_CAND ? 0 : n;
}

/* Phase 2 for two tokens at once, grouped layers with compile-time G, cpg, Gk: the same
 * computation as fast_phase2's grouped branch, without branches and with the two tokens' steps
 * interleaved, so that one token's long dependent chain overlaps the other's. */
AVX512 static inline __attribute__((always_inline)) void
fast_phase2_pair(const fast_ctx *F, const float *ak0, const float *ak1, int32_t *ci0,
                 int32_t *ci1, int32_t *n_out0, int32_t *n_out1, const int32_t k, const int32_t G,
                 const int32_t cpg, const int32_t Gk, const int eo) {
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    const float *ak[2] = {ak0, ak1};
    int32_t *ci[2] = {ci0, ci1};
    __m512 o1[2], o2[2];
    for (int32_t t = 0; t < 2; t++) {
        __m512 m1[8], m2[8];
        for (int32_t g = 0; g < 8; g++) {
            if (g >= G) {
                m1[g] = ninf;
                m2[g] = ninf;
                continue;
            }
            const float *kg = ak[t] + 16 * cpg * g;
            if (cpg == 1) {
                m1[g] = _mm512_load_ps(kg);
                m2[g] = ninf;
            } else {
                __m512 v0 = _mm512_load_ps(kg), v1 = _mm512_load_ps(kg + 16);
                m1[g] = _mm512_max_ps(v0, v1);
                m2[g] = _mm512_min_ps(v0, v1);
                for (int32_t q = 2; q < cpg; q++) {
                    __m512 v = _mm512_load_ps(kg + 16 * q);
                    m2[g] = _mm512_max_ps(m2[g], _mm512_min_ps(m1[g], v));
                    m1[g] = _mm512_max_ps(m1[g], v);
                }
            }
        }
        group_top2_8(m1, m2, &o1[t], &o2[t]);
    }
    const __m512i gperm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    const __mmask16 gm = (__mmask16)((1u << G) - 1u);
    __m512 gt2[2], ga[2];
    for (int32_t t = 0; t < 2; t++) {
        gt2[t] = _mm512_permutexvar_ps(gperm, o2[t]);
        ga[t] = _mm512_mask_mov_ps(ninf, gm, _mm512_add_ps(_mm512_permutexvar_ps(gperm, o1[t]), gt2[t]));
    }
    /* Both tokens' group scores in one vector (lanes 0-7, 8-15), each half sorted by a bitonic
     * network of 8: the first half descending, the second ascending. The Gk-th and (Gk+1)-th
     * best scores then give the kept set (the groups at or above the Gk-th) and its margin. */
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 sg = _mm512_mask_permutexvar_ps(ga[0], (__mmask16)0xff00,
                                           _mm512_sub_epi32(iota, _mm512_set1_epi32(8)), ga[1]);
    sg = bitonic_sort(sg, 8, 0);
    float sga[16] __attribute__((aligned(64)));
    _mm512_store_ps(sga, sg);
    const float tk[2] = {sga[Gk - 1], sga[15 - (Gk - 1)]};
    const float tn[2] = {Gk < G ? sga[Gk] : -__builtin_inff(), Gk < G ? sga[15 - Gk] : -__builtin_inff()};
    __mmask16 kept[2];
    int ok[2];
    float thr[2];
    uint64_t km[2];
    for (int32_t t = 0; t < 2; t++) {
        /* with tk > tn, exactly Gk groups score >= tk; the margin is the old min_kept > max_rest */
        kept[t] = _mm512_mask_cmp_ps_mask(gm, ga[t], _mm512_set1_ps(tk[t]), _CMP_GE_OQ);
        ok[t] = tk[t] > tn[t] + 6.0f * F->dp;
        thr[t] = _mm512_mask_reduce_min_ps(kept[t], gt2[t]) - 2.5f * F->dp;
        /* kept group g -> its cpg chunks: bit g deposited at bit g * cpg, then copied cpg times
         * (a multiplication without carries: the copies do not overlap) */
        uint64_t starts = 0;
        for (int32_t g = 0; g < G; g++) starts |= 1ull << (g * cpg);
        const uint64_t m = _pdep_u64(kept[t], starts) * ((1ull << cpg) - 1);
        /* when not ok, any Gk * cpg valid chunks keep the loop below in bounds */
        km[t] = ok[t] ? m : (1ull << (Gk * cpg)) - 1;
    }
    int32_t n[2] = {0, 0};
    const __m512 vthr[2] = {_mm512_set1_ps(thr[0]), _mm512_set1_ps(thr[1])};
    for (int32_t j = 0; j < Gk * cpg; j++)
        for (int32_t t = 0; t < 2; t++) {
            const int32_t c = (int32_t)_tzcnt_u64(km[t]);
            km[t] &= km[t] - 1;
            const __mmask16 m = _mm512_cmp_ps_mask(_mm512_load_ps(ak[t] + 16 * c), vthr[t], _CMP_GE_OQ);
            _mm512_storeu_si512(ci[t] + (n[t] < FAST_MAX_CAND ? n[t] : FAST_MAX_CAND),
                                _mm512_maskz_compress_epi32(m, chunk_experts(c, eo)));
            n[t] += __builtin_popcount(m);
        }
    *n_out0 = ok[0] && n[0] >= k && n[0] <= FAST_MAX_CAND ? n[0] : 0;
    *n_out1 = ok[1] && n[1] >= k && n[1] <= FAST_MAX_CAND ? n[1] : 0;
}

/* Phase 3a: exact scores and keys of the candidates (sarr, carr; lanes >= n of carr hold -inf).
 * Separate from the ranking so that the long dependent chain of the score of one token overlaps
 * that of the next. */
AVX512 static inline __attribute__((always_inline)) void
fast_scores(const mrk_layer *L, const void *row, int32_t dtype, const float *xw,
            const int32_t *cidx, int32_t n, float *sarr, float *carr, const int32_t E, const int ssp) {
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    const int32_t nv = (n + 15) / 16;
    for (int32_t q = 0; q < nv; q++) {
        const __mmask16 m = tail_mask(n - 16 * q);
        const __m512i iv = _mm512_maskz_loadu_epi32(m, cidx + 16 * q);
        __m512 x;
        if (dtype == MRK_DTYPE_FP32) {
            x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, iv, row, 4);
        } else if (dtype == MRK_DTYPE_BF16 && !(E & 1)) {
            /* straight from the row: the aligned pair holding expert i (E even, so the pair is
             * inside the row), then its high or low half into the top 16 bits */
            const __m512i d = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m,
                                                          _mm512_srli_epi32(iv, 1), row, 4);
            const __mmask16 odd = _mm512_test_epi32_mask(iv, _mm512_set1_epi32(1));
            x = _mm512_castsi512_ps(_mm512_mask_and_epi32(_mm512_slli_epi32(d, 16), odd, d,
                                                          _mm512_set1_epi32((int)0xffff0000u)));
        } else {
            x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, iv, xw, 4);
        }
        __m512 b = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, iv, L->bias, 4);
        /* the row is finite (phase 1), so the score is too: no clamp needed */
        const __m512 ax = _mm512_castsi512_ps(_mm512_andnot_si512(_mm512_set1_epi32((int)0x80000000u),
                                                                  _mm512_castps_si512(x)));
        const __m512 s = ssp ? sqrtsoftplus_v(x)
                         : _mm512_cmp_ps_mask(ax, _mm512_set1_ps(SIG_SMALL_MAX), _CMP_GT_OQ) ? sigmoid_v(x)
                                                                                            : sigmoid_small_v(x);
        _mm512_store_ps(sarr + 16 * q, s);
        _mm512_store_ps(carr + 16 * q, _mm512_mask_mov_ps(ninf, m, _mm512_add_ps(s, b)));
    }
}

#ifdef MRK_FAST_STATS
long mrk_ncand_hist[64];
#endif

/* Routes tokens [0, tokens) of the block; returns 1 per token that still needs the exact path in
 * need_exact[]. */
AVX512 static inline __attribute__((always_inline)) void
fast_block_t(const route_ctx *C, const fast_ctx *F, const char *rows, size_t row_bytes,
             int32_t dtype, int32_t nb, float *weights, int32_t *ids, uint8_t *need_exact,
             const int32_t E, const int32_t k, const int32_t G_, const int32_t cpg_,
             const int32_t Gk_, const int eo, const int ssp) {
    float akey[FAST_BLOCK_FLOATS] __attribute__((aligned(64)));
    float xw[FAST_BLOCK_FLOATS] __attribute__((aligned(64)));
    int32_t cidx[16][FAST_MAX_CAND + 16] __attribute__((aligned(64)));
    int32_t ncand[16];
    float sarr[16][FAST_MAX_CAND] __attribute__((aligned(64)));
    float carr[16][FAST_MAX_CAND] __attribute__((aligned(64)));
    const int32_t stride = (E + 15) & ~15;
    for (int32_t b = 0; b < nb; b++)
        need_exact[b] = !fast_phase1(F, C->L->bias, rows + (size_t)b * row_bytes, dtype,
                                     xw + b * stride, akey + b * stride, E, eo, ssp);
    if (Gk_) {
        for (int32_t b = 0; b < nb; b += 2) {
            const int32_t b1 = b + 1 < nb ? b + 1 : b;
            int32_t n0, n1;
            fast_phase2_pair(F, akey + b * stride, akey + b1 * stride, cidx[b], cidx[b1], &n0, &n1,
                             k, G_, cpg_, Gk_, eo);
            ncand[b] = need_exact[b] ? 0 : n0;
            ncand[b1] = need_exact[b1] ? 0 : n1;
        }
    } else {
        for (int32_t b = 0; b < nb; b++)
            ncand[b] = need_exact[b] ? 0 : fast_phase2(F, akey + b * stride, cidx[b], E, k, G_, cpg_, eo);
    }
    for (int32_t b = 0; b < nb; b++) {
        need_exact[b] = ncand[b] == 0;
#ifdef MRK_FAST_STATS
        mrk_ncand_hist[ncand[b]]++;
#endif
    }
    for (int32_t b = 0; b < nb; b++)
        if (ncand[b])
            fast_scores(C->L, rows + (size_t)b * row_bytes, dtype, xw + b * stride, cidx[b],
                        ncand[b], sarr[b], carr[b], E, ssp);
    for (int32_t b = 0; b < nb; b++)
        if (ncand[b])
            fast_phase3(C->L, sarr[b], carr[b], cidx[b], ncand[b], weights + (size_t)b * k,
                        ids + (size_t)b * k, k, !eo);
}

/* The shapes worth their own compiled copy (sigmoid: deepseek-v3, ungrouped 256 experts;
 * sqrtsoftplus: deepseek-v4 and v4-flash), for one key layout: constant arguments let the
 * compiler unroll and keep everything in registers. */
AVX512 static inline __attribute__((always_inline)) void
fast_block_shapes(const route_ctx *C, const fast_ctx *F, const char *rows, size_t row_bytes,
                  int32_t dtype, int32_t nb, float *weights, int32_t *ids, uint8_t *need_exact,
                  const int eo, const int ssp) {
    if (!ssp && C->E == 256 && C->k == 8 && F->G == 8 && F->cpg == 2 && F->Gk == 4)
        fast_block_t(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, 256, 8, 8, 2, 4, eo, ssp);
    else if (!ssp && C->E == 256 && C->k == 8 && F->G == 0)
        fast_block_t(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, 256, 8, 0, 0, 0, eo, ssp);
    else if (ssp && C->E == 384 && C->k == 6 && F->G == 0)
        fast_block_t(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, 384, 6, 0, 0, 0, eo, ssp);
    else if (ssp && C->E == 256 && C->k == 6 && F->G == 0)
        fast_block_t(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, 256, 6, 0, 0, 0, eo, ssp);
    else
        fast_block_t(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, C->E, C->k, F->G,
                     F->cpg, 0, eo, ssp);
}

AVX512 void mrk_avx512_fast_block(const route_ctx *C, const fast_ctx *F, const char *rows,
                              size_t row_bytes, int32_t dtype, int32_t nb, float *weights,
                              int32_t *ids, uint8_t *need_exact) {
    if (F->ssp) {
        if (F->eo)
            fast_block_shapes(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, 1, 1);
        else
            fast_block_shapes(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, 0, 1);
    } else if (F->eo) {
        fast_block_shapes(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, 1, 0);
    } else {
        fast_block_shapes(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, 0, 0);
    }
}
