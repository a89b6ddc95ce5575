/*
 * The AVX-512 fast path for grouped_topk with softmax scoring (DeepSeek-V2). The argument is
 * softmax_topk's (avx512_softmax.c) after an exact group selection.
 */
#include "avx512_rank.h"

/* Prefetches chunk c of the row `ahead` rows after `row`: where a row's work is long enough for
 * the hardware prefetcher to fall behind (grouped softmax: fp32 4096 tokens 5 % faster by
 * scripts/kernel-ab.sh; the other softmax paths measured no difference). Never faults. */
AVX512 static inline void prefetch_ahead(const void *row, int32_t dtype, int32_t E, int32_t ahead, int32_t c) {
    const size_t es = dtype == MRK_DTYPE_FP32 ? 4 : 2;
    _mm_prefetch((const char *)row + (size_t)ahead * E * es + 16 * es * c, _MM_HINT_T0);
}

/* grouped_topk with softmax scoring (DeepSeek-V2), G <= 16, P <= 32, no bias. As softmax_cand (avx512_softmax.c),
 * after the exact group selection: group scores are max(e)/sum over each group (division is
 * monotone, so that is the contract's max of s), computed exactly for all G groups and kept by
 * the contract's rule; candidates and the s_out check then run over the kept experts only.
 * Two tokens at once, their steps interleaved (one token's work is a long dependent chain: max,
 * sum, group ranking, threshold, candidates; side by side, ~20% faster). Same operations per
 * token; *nout = 0 when the token must take the exact path. */
AVX512 static inline __attribute__((always_inline)) void
gsoft_cand_pair(const void *row0, const void *row1, int32_t dtype, const int32_t *gid,
                int32_t *ci0, int32_t *ci1, float *sa0, float *sa1, float *ca0, float *ca1,
                int32_t *nout0, int32_t *nout1, const int32_t E, const int32_t k, const int32_t G,
                const int32_t Gk) {
    const int32_t nch = (E + 15) / 16, P = E / G;
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    const __m512 zero = _mm512_setzero_ps();
    const __m512i expmask = _mm512_set1_epi32(0x7f800000);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const void *row[2] = {row0, row1};
    int32_t *cidx[2] = {ci0, ci1};
    float *sarr[2] = {sa0, sa1}, *carr[2] = {ca0, ca1};
    float xw[2][MRK_MAX_EXPERTS] __attribute__((aligned(64)));
    float ebuf[2][MRK_MAX_EXPERTS + 32] __attribute__((aligned(64)));
    float ce[2][FAST_MAX_CAND + 16] __attribute__((aligned(64)));
    __m512i nfacc[2];
    __m512 M[2], vm[2], acc[2], vs[2], gs[2], MK[2], vt[2], eout[2], sout[2];
    float sum[2];
    int32_t n[2], ok[2];
    __mmask16 km[2][MAX_CHUNKS];
    for (int32_t t = 0; t < 2; t++) {
        nfacc[t] = _mm512_setzero_si512();
        M[t] = ninf;
    }
    for (int32_t c = 0; c < nch; c++)
        for (int32_t t = 0; t < 2; t++) {
            const __mmask16 m = tail_mask(E - 16 * c);
            const __m512 x0 = load_widened(row[t], dtype, 16 * c, m);
            prefetch_ahead(row[t], dtype, E, 2, c); /* the next pair's rows */
            nfacc[t] = _mm512_max_epu32(nfacc[t], _mm512_and_si512(_mm512_castps_si512(x0), expmask));
            const __m512 x = _mm512_mask_mov_ps(ninf, m, x0);
            _mm512_store_ps(xw[t] + 16 * c, x);
            M[t] = _mm512_max_ps(M[t], x);
        }
    for (int32_t t = 0; t < 2; t++) {
        ok[t] = !_mm512_cmpeq_epi32_mask(nfacc[t], expmask);
        vm[t] = _mm512_set1_ps(_mm512_reduce_max_ps(M[t]));
        acc[t] = zero;
    }
    /* (a non-finite row gives garbage from here on, never used: ok[t] = 0) */
    for (int32_t c = 0; c < nch; c++)
        for (int32_t t = 0; t < 2; t++) {
            const __mmask16 tm = tail_mask(E - 16 * c);
            const __m512 e = _mm512_maskz_mov_ps(
                tm, exp_nonnan_v(_mm512_maskz_sub_ps(tm, _mm512_load_ps(xw[t] + 16 * c), vm[t])));
            acc[t] = _mm512_add_ps(acc[t], e);
            _mm512_store_ps(ebuf[t] + 16 * c, e);
        }
    for (int32_t t = 0; t < 2; t++) {
        sum[t] = fold_lanes(acc[t]);
        vs[t] = _mm512_set1_ps(sum[t]);
    }
    const __mmask16 gm = (__mmask16)((1u << G) - 1u);
    for (int32_t t = 0; t < 2; t++) {
        __m512 gv[16];
        for (int32_t g = 0; g < 16; g++) {
            gv[g] = zero;
            if (g >= G) continue;
            for (int32_t q = 0; q < P; q += 16)
                gv[g] = _mm512_max_ps(gv[g], _mm512_maskz_loadu_ps(tail_mask(P - q), ebuf[t] + g * P + q));
        }
        gs[t] = _mm512_div_ps(
            _mm512_permutexvar_ps(_mm512_load_si512(TREE16_PERM), tree_max16(gv)), vs[t]);
    }
    __m512i cnt[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int32_t h = 0; h < G; h++)
        for (int32_t t = 0; t < 2; t++) {
            const __m512 b = _mm512_permutexvar_ps(_mm512_set1_epi32(h), gs[t]);
            const __mmask16 after = (__mmask16)(0xfffeu << h);
            const __mmask16 beats = _mm512_cmp_ps_mask(b, gs[t], _CMP_GT_OQ) |
                                    _mm512_mask_cmp_ps_mask(after, b, gs[t], _CMP_EQ_OQ);
            cnt[t] = _mm512_mask_sub_epi32(cnt[t], beats, cnt[t], _mm512_set1_epi32(-1));
        }
    __m512i keptv[2];
    for (int32_t t = 0; t < 2; t++) {
        const __mmask16 kept = _mm512_mask_cmplt_epi32_mask(gm, cnt[t], _mm512_set1_epi32(Gk));
        keptv[t] = _mm512_maskz_mov_epi32(kept, _mm512_set1_epi32(-1));
        MK[t] = zero;
    }
    for (int32_t c = 0; c < nch; c++)
        for (int32_t t = 0; t < 2; t++) {
            const __m512i kg = _mm512_permutexvar_epi32(_mm512_load_si512(gid + 16 * c), keptv[t]);
            km[t][c] = _mm512_mask_test_epi32_mask(tail_mask(E - 16 * c), kg, kg);
            MK[t] = _mm512_mask_max_ps(MK[t], km[t][c], MK[t], _mm512_load_ps(ebuf[t] + 16 * c));
        }
    kth_largest_pair(MK[0], MK[1], k, &vt[0], &vt[1]);
    for (int32_t t = 0; t < 2; t++) {
        eout[t] = zero;
        n[t] = 0;
    }
    for (int32_t c = 0; c < nch; c++)
        for (int32_t t = 0; t < 2; t++) {
            const __m512 e = _mm512_load_ps(ebuf[t] + 16 * c);
            const __mmask16 cm = _mm512_mask_cmp_ps_mask(km[t][c], e, vt[t], _CMP_GE_OQ);
            const int32_t at = n[t] < FAST_MAX_CAND ? n[t] : FAST_MAX_CAND;
            _mm512_storeu_si512(cidx[t] + at, _mm512_maskz_compress_epi32(cm, _mm512_add_epi32(lane, _mm512_set1_epi32(16 * c))));
            _mm512_storeu_ps(ce[t] + at, _mm512_maskz_compress_ps(cm, e));
            n[t] += __builtin_popcount(cm);
            eout[t] = _mm512_mask_max_ps(eout[t], km[t][c] & (__mmask16)~cm, eout[t], e);
        }
    int32_t above[2];
    for (int32_t t = 0; t < 2; t++) sout[t] = _mm512_set1_ps(_mm512_reduce_max_ps(eout[t]) / sum[t]);
    softmax_scores_pair(ce, n, vs, sout, sarr, carr, above);
    *nout0 = ok[0] && n[0] <= FAST_MAX_CAND && n[0] >= k && above[0] >= k ? n[0] : 0;
    *nout1 = ok[1] && n[1] <= FAST_MAX_CAND && n[1] >= k && above[1] >= k ? n[1] : 0;
}

AVX512 static inline __attribute__((always_inline)) void
gsoft_block_t(const route_ctx *C, const int32_t *gid, const char *rows, size_t row_bytes,
              int32_t dtype, int32_t nb, float *weights, int32_t *ids, uint8_t *need_exact,
              const int32_t E, const int32_t k, const int32_t G, const int32_t Gk) {
    int32_t cidx[16][FAST_MAX_CAND + 16] __attribute__((aligned(64)));
    float sarr[16][FAST_MAX_CAND] __attribute__((aligned(64)));
    float carr[16][FAST_MAX_CAND] __attribute__((aligned(64)));
    int32_t ncand[16];
    for (int32_t b = 0; b < nb; b += 2) {
        const int32_t b1 = b + 1 < nb ? b + 1 : b;
        int32_t n0, n1;
        gsoft_cand_pair(rows + (size_t)b * row_bytes, rows + (size_t)b1 * row_bytes, dtype, gid,
                        cidx[b], cidx[b1], sarr[b], sarr[b1], carr[b], carr[b1], &n0, &n1, E, k,
                        G, Gk);
        ncand[b] = n0;
        ncand[b1] = n1;
    }
    for (int32_t b = 0; b < nb; b++) need_exact[b] = ncand[b] == 0;
    for (int32_t b = 0; b < nb; b++)
        if (ncand[b])
            fast_phase3(C->L, sarr[b], carr[b], cidx[b], ncand[b], weights + (size_t)b * k,
                        ids + (size_t)b * k, k, 1);
}

AVX512 void mrk_avx512_gsoft_block(const route_ctx *C, const int32_t *gid, const char *rows,
                               size_t row_bytes, int32_t dtype, int32_t nb, float *weights,
                               int32_t *ids, uint8_t *need_exact) {
    const int32_t G = C->L->num_groups, Gk = C->L->topk_group;
    if (C->E == 160 && C->k == 6 && G == 8 && Gk == 3)
        gsoft_block_t(C, gid, rows, row_bytes, dtype, nb, weights, ids, need_exact, 160, 6, 8, 3);
    else
        gsoft_block_t(C, gid, rows, row_bytes, dtype, nb, weights, ids, need_exact, C->E, C->k, G, Gk);
}
