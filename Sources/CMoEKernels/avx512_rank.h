/*
 * The last step of every AVX-512 fast path: the candidates ranked exactly (the contract's key
 * order, lower expert index on ties), ids and weights written out. Internal, like
 * avx512_internal.h.
 */
#ifndef MRK_AVX512_RANK_H
#define MRK_AVX512_RANK_H

#include "avx512_internal.h"

/* Candidates 16q..16q+15 into registers (and ids, keys into cix, ck). */
AVX512 static inline __attribute__((always_inline)) void
load_cand16(const float *sarr, const float *carr, const int32_t *cidx, int32_t n, int32_t q,
            int32_t *cix, float *ck, __m512i *iv, __m512 *cv, __m512 *sv) {
    *iv = _mm512_maskz_loadu_epi32(tail_mask(n - 16 * q), cidx + 16 * q);
    _mm512_store_si512(cix + 16 * q, *iv); /* lanes >= n: 0 */
    *cv = _mm512_mask_loadu_ps(_mm512_set1_ps(-__builtin_inff()), tail_mask(n - 16 * q),
                               carr + 16 * q);
    _mm512_store_ps(ck + 16 * q, *cv); /* lanes >= n: -inf, whatever carr holds there */
    *sv = _mm512_load_ps(sarr + 16 * q);
}

/* Phase 3b: the candidates ranked exactly; ids and weights out. wmode 0: w = the payload
 * (score) of the chosen, renormalised and scaled; 1: softmax over the chosen keys (topk_softmax);
 * 2: sigmoid of the chosen keys (llama4_top1). */
AVX512 static inline __attribute__((always_inline)) void
fast_rank_weights(const mrk_layer *L, const float *sarr, const float *carr, const int32_t *cidx,
                  int32_t n, float *w_out, int32_t *id_out, const int32_t k, const int wmode,
                  const int ascending) {
    const int32_t nv = (n + 15) / 16;
    __m512 cv[2], sv[2];
    __m512i iv[2];
    float ck[FAST_MAX_CAND] __attribute__((aligned(64)));
    int32_t cix[FAST_MAX_CAND] __attribute__((aligned(64)));
    /* nv is 1 or 2: spelled out, as a loop to nv became a call to memcpy per token */
    load_cand16(sarr, carr, cidx, n, 0, cix, ck, &iv[0], &cv[0], &sv[0]);
    if (nv > 1) load_cand16(sarr, carr, cidx, n, 1, cix, ck, &iv[1], &cv[1], &sv[1]);
    float wtmp[FAST_MAX_CAND] __attribute__((aligned(64)));
    const __m512i minus1 = _mm512_set1_epi32(-1);
    int sorted = 0;
    if (nv == 1 && k < 16) {
        /* Bitonic sort of the 16 keys, descending. Each key is mapped to an order-preserving
         * int32 whose low 4 bits are replaced by 15 - lane, so the lane travels inside the key.
         * Dropping those 4 bits keeps the order of keys whose truncations differ; the result is
         * used only when the first k + 1 sorted truncations are pairwise distinct (then the
         * order is the exact keys' and each holds its own lane); otherwise the tie-aware ranking
         * below runs. */
        const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        /* sign-magnitude to two's complement: -0 and +0 both map to 0, as they compare equal */
        const __m512i bits = _mm512_castps_si512(cv[0]);
        const __m512i mag = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff));
        const __m512i ord = _mm512_mask_sub_epi32(mag, _mm512_movepi32_mask(bits),
                                                  _mm512_setzero_si512(), mag);
        __m512i key = _mm512_or_si512(_mm512_and_si512(ord, _mm512_set1_epi32(~15)),
                                      _mm512_sub_epi32(_mm512_set1_epi32(15), iota));
#pragma clang loop unroll(full)
        for (int32_t size = 2; size <= 16; size *= 2) {
#pragma clang loop unroll(full)
            for (int32_t d = size / 2; d >= 1; d /= 2) {
                uint32_t wantmax = 0;
                for (int32_t i = 0; i < 16; i++)
                    if (((i & d) == 0) == ((i & size) == 0)) wantmax |= 1u << i;
                const __m512i pk = _mm512_permutexvar_epi32(_mm512_xor_si512(iota, _mm512_set1_epi32(d)), key);
                key = _mm512_mask_blend_epi32((__mmask16)wantmax, _mm512_min_epi32(key, pk),
                                              _mm512_max_epi32(key, pk));
            }
        }
        const __m512i tr = _mm512_and_si512(key, _mm512_set1_epi32(~15));
        const __m512i next = _mm512_min_epi32(_mm512_add_epi32(iota, _mm512_set1_epi32(1)),
                                              _mm512_set1_epi32(15));
        const __m512i trn = _mm512_permutexvar_epi32(next, tr);
        __mmask16 tie = _mm512_mask_cmpeq_epi32_mask(tail_mask(k), tr, trn);
        const __m512i pl = _mm512_sub_epi32(_mm512_set1_epi32(15),
                                            _mm512_and_si512(key, _mm512_set1_epi32(15)));
        if (tie && ascending) {
            /* Candidates in index order: a run of equal truncations whose keys are all exactly
             * equal is already in the contract's order (lower index first). Accept the sort
             * when no adjacent pair anywhere has equal truncations but different keys (then
             * every run is of equal keys; -inf padding compares equal to itself). */
            const __m512 full = _mm512_permutexvar_ps(pl, cv[0]);
            const __mmask16 any = _mm512_cmpeq_epi32_mask(tr, trn) & (__mmask16)0x7fff;
            if (!_mm512_mask_cmp_ps_mask(any, full, _mm512_permutexvar_ps(next, full), _CMP_NEQ_UQ)) tie = 0;
        }
        if (!tie) {
            _mm512_mask_storeu_epi32(id_out, tail_mask(k), _mm512_permutexvar_epi32(pl, iv[0]));
            _mm512_store_ps(wtmp, _mm512_permutexvar_ps(pl, sv[0]));
            sorted = 1;
        }
    }
    if (sorted) {
    } else if (nv == 1) {
        __m512i rank = _mm512_setzero_si512();
#pragma clang loop unroll(full)
        for (int32_t j = 0; j < 16; j++) {
            const __m512 b = _mm512_set1_ps(ck[j]);
            /* on equal keys the lower expert index wins (candidates need not be ascending) */
            const __mmask16 after = _mm512_cmplt_epi32_mask(_mm512_set1_epi32(cix[j]), iv[0]);
            const __mmask16 beats = _mm512_cmp_ps_mask(b, cv[0], _CMP_GT_OQ) |
                                    _mm512_mask_cmp_ps_mask(after, b, cv[0], _CMP_EQ_OQ);
            rank = _mm512_mask_sub_epi32(rank, beats, rank, minus1);
        }
        /* the real lanes' ranks are a permutation of 0..n-1 (indices are distinct); lanes >= n
         * hold -inf and index 0 and all rank n <= 15: only ranks < k <= n are read */
        int32_t rk[16] __attribute__((aligned(64)));
        int32_t ix[16] __attribute__((aligned(64)));
        float sx[16] __attribute__((aligned(64)));
        int32_t idt[16] __attribute__((aligned(64)));
        _mm512_store_si512(rk, rank);
        _mm512_store_si512(ix, iv[0]);
        _mm512_store_ps(sx, sv[0]);
        for (int32_t i = 0; i < 16; i++) {
            idt[rk[i]] = ix[i];
            wtmp[rk[i]] = sx[i];
        }
        for (int32_t j = 0; j < k; j += 16)
            _mm512_mask_storeu_epi32(id_out + j, tail_mask(k - j), _mm512_load_si512(idt + j));
    } else {
        for (int32_t q = 0; q < nv; q++) {
            __m512i rank = _mm512_setzero_si512();
            for (int32_t j = 0; j < 16 * nv; j++) {
                const __m512 b = _mm512_set1_ps(ck[j]);
                /* lanes i with a higher expert index lose ties to j */
                const __mmask16 after = _mm512_cmplt_epi32_mask(_mm512_set1_epi32(cix[j]), iv[q]);
                const __mmask16 beats = _mm512_cmp_ps_mask(b, cv[q], _CMP_GT_OQ) |
                                        _mm512_mask_cmp_ps_mask(after, b, cv[q], _CMP_EQ_OQ);
                rank = _mm512_mask_sub_epi32(rank, beats, rank, minus1);
            }
            const __mmask16 out = tail_mask(n - 16 * q) &
                                  _mm512_cmplt_epi32_mask(rank, _mm512_set1_epi32(k));
            _mm512_mask_i32scatter_epi32(id_out, out, rank, iv[q], 4);
            _mm512_mask_i32scatter_ps(wtmp, out, rank, sv[q], 4);
        }
    }

    const float rsf = L->routed_scaling_factor;
    if (wmode == 1) {
        /* mrk_selected_softmax: e_j = exp(key_j - key_0), summed in column order */
        const __mmask16 m = tail_mask(k);
        const __m512 kv = _mm512_maskz_loadu_ps(m, wtmp);
        const __m512 e = _mm512_maskz_mov_ps(m, exp_nonpos_v(_mm512_maskz_sub_ps(m, kv, _mm512_set1_ps(wtmp[0]))));
        float et[16] __attribute__((aligned(64)));
        _mm512_store_ps(et, e);
        float sum = 0.0f;
        for (int32_t j = 0; j < k; j++) sum = sum + et[j];
        _mm512_mask_storeu_ps(w_out, m, _mm512_mul_ps(_mm512_div_ps(e, _mm512_set1_ps(sum)), _mm512_set1_ps(rsf)));
        return;
    }
    if (wmode == 2) {
        const __mmask16 m = tail_mask(k);
        _mm512_mask_storeu_ps(w_out, m, _mm512_mul_ps(sigmoid_v(_mm512_maskz_loadu_ps(m, wtmp)), _mm512_set1_ps(rsf)));
        return;
    }
    /* 5. weights: w = s[ids], renormalised in column order, times rsf */
    if (k <= 8) {
        /* the same operations on 8 lanes (a 256-bit division costs half a 512-bit one) */
        const __mmask8 m8 = (__mmask8)((1u << k) - 1u);
        __m256 w = _mm256_maskz_loadu_ps(m8, wtmp);
        if (L->renormalize) {
            float sum = 0.0f;
            for (int32_t j = 0; j < k; j++) sum = sum + wtmp[j];
            if (L->renorm_epsilon > 0.0f) /* never skipped (mrk_finish_weights) */
                w = _mm256_div_ps(w, _mm256_set1_ps(sum + L->renorm_epsilon));
            else if (sum > 0.0f)
                w = _mm256_div_ps(w, _mm256_set1_ps(sum));
        }
        _mm256_mask_storeu_ps(w_out, m8, _mm256_mul_ps(w, _mm256_set1_ps(rsf)));
        return;
    }
    if (L->renormalize) {
        float sum = 0.0f;
        for (int32_t j = 0; j < k; j++) sum = sum + wtmp[j];
        if (L->renorm_epsilon > 0.0f || sum > 0.0f) {
            const __m512 vs = _mm512_set1_ps(L->renorm_epsilon > 0.0f ? sum + L->renorm_epsilon : sum);
            for (int32_t j = 0; j < k; j += 16) {
                const __mmask16 m = tail_mask(k - j);
                _mm512_mask_storeu_ps(wtmp + j, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, wtmp + j), vs));
            }
        }
    }
    for (int32_t j = 0; j < k; j += 16) {
        const __mmask16 m = tail_mask(k - j);
        _mm512_mask_storeu_ps(w_out + j, m,
                              _mm512_mul_ps(_mm512_maskz_loadu_ps(m, wtmp + j), _mm512_set1_ps(rsf)));
    }
}

AVX512 static inline __attribute__((always_inline)) void
fast_phase3(const mrk_layer *L, const float *sarr, const float *carr, const int32_t *cidx,
            int32_t n, float *w_out, int32_t *id_out, const int32_t k, const int ascending) {
    fast_rank_weights(L, sarr, carr, cidx, n, w_out, id_out, k, 0, ascending);
}

#endif
