/*
 * The AVX-512 fast paths for softmax_topk and for the methods that select on the logits
 * (topk_softmax, llama4_top1). grouped_topk with softmax: avx512_gsoft.c.
 */
#include "avx512_rank.h"

/* ------------------------------------------------------------------------------------------
 * Fast path for softmax_topk without a bias. Every expert's exp is needed for the sum (so it is
 * computed exactly, in the contract's lane order), but only a few experts can be selected:
 * the k-th largest of the 16 lane-wise maxima of the logits, Tx, is a lower bound on the k-th
 * largest logit, so only experts with x >= Tx (candidates) get their score e / sum and are
 * ranked exactly. exp and the division are monotone, so every other expert has a score at most
 * s_out = (the largest e among them) / sum; when at least k candidates score strictly above
 * s_out, the contract's top-k are all candidates. Otherwise, or with a non-finite input, or too
 * many candidates, the token takes the exact path.
 * ------------------------------------------------------------------------------------------ */

/* One token: candidates into cidx, their scores into sarr and keys (= scores, -inf padded) into
 * carr; returns their number, or 0 when the token must take the exact path. */
AVX512 static inline __attribute__((always_inline)) int32_t
softmax_cand(const void *row, int32_t dtype, float *xw, int32_t *cidx, float *ce, float *sarr,
             float *carr, const int32_t E, const int32_t k) {
    const int32_t nch = (E + 15) / 16;
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    const __m512i expmask = _mm512_set1_epi32(0x7f800000);
    __m512i nfacc = _mm512_setzero_si512();
    __m512 M = ninf;
    for (int32_t c = 0; c < nch; c++) {
        const __mmask16 m = tail_mask(E - 16 * c);
        const __m512 x0 = load_widened(row, dtype, 16 * c, m);
        nfacc = _mm512_max_epu32(nfacc, _mm512_and_si512(_mm512_castps_si512(x0), expmask));
        const __m512 x = _mm512_mask_mov_ps(ninf, m, x0);
        _mm512_store_ps(xw + 16 * c, x);
        M = _mm512_max_ps(M, x);
    }
    if (_mm512_cmpeq_epi32_mask(nfacc, expmask)) return 0;
    const __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(M));
    const __m512 vt = _mm512_set1_ps(kth_largest16(M, k));
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 acc = _mm512_setzero_ps(), eout = _mm512_setzero_ps();
    int32_t n = 0;
    for (int32_t c = 0; c < nch; c++) {
        const __m512 x = _mm512_load_ps(xw + 16 * c);
        /* padding lanes: e = 0, which leaves the sum exact (computed as exp(0) then masked, as an
         * exp that underflows costs a microcode assist) */
        const __mmask16 tm = tail_mask(E - 16 * c);
        const __m512 e = _mm512_maskz_mov_ps(tm, exp_nonnan_v(_mm512_maskz_sub_ps(tm, x, vm)));
        acc = _mm512_add_ps(acc, e);
        const __mmask16 cm = _mm512_cmp_ps_mask(x, vt, _CMP_GE_OQ);
        const int32_t at = n < FAST_MAX_CAND ? n : FAST_MAX_CAND;
        _mm512_storeu_si512(cidx + at, _mm512_maskz_compress_epi32(cm, _mm512_add_epi32(lane, _mm512_set1_epi32(16 * c))));
        _mm512_storeu_ps(ce + at, _mm512_maskz_compress_ps(cm, e));
        n += __builtin_popcount(cm);
        eout = _mm512_mask_max_ps(eout, (__mmask16)~cm, eout, e);
    }
    if (n > FAST_MAX_CAND) return 0;
    const float sum = fold_lanes(acc);
    const __m512 vs = _mm512_set1_ps(sum);
    const __m512 sout = _mm512_set1_ps(_mm512_reduce_max_ps(eout) / sum);
    int32_t above = 0;
    for (int32_t q = 0; 16 * q < n; q++) {
        const __mmask16 m = tail_mask(n - 16 * q);
        const __m512 sc = _mm512_div_ps(_mm512_maskz_loadu_ps(m, ce + 16 * q), vs);
        _mm512_store_ps(sarr + 16 * q, sc);
        _mm512_store_ps(carr + 16 * q, _mm512_mask_mov_ps(ninf, m, sc));
        above += __builtin_popcount(_mm512_mask_cmp_ps_mask(m, sc, sout, _CMP_GT_OQ));
    }
    return above >= k ? n : 0;
}

/* softmax_cand for two tokens at once and E <= 64 (logits kept in registers), without branches,
 * the two tokens' steps interleaved: for small E one token's work is a single long dependent
 * chain, so two of them side by side run nearly twice as fast. Same operations per token. */
AVX512 static inline __attribute__((always_inline)) void
softmax_cand_pair(const void *row0, const void *row1, int32_t dtype, int32_t *ci0, int32_t *ci1,
                  float *sa0, float *sa1, float *ca0, float *ca1, int32_t *nout0, int32_t *nout1,
                  const int32_t E, const int32_t k) {
    const int32_t nch = (E + 15) / 16; /* <= 4 */
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    const __m512i expmask = _mm512_set1_epi32(0x7f800000);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const void *row[2] = {row0, row1};
    int32_t *ci[2] = {ci0, ci1};
    float *sa[2] = {sa0, sa1}, *ca[2] = {ca0, ca1};
    float ce[2][FAST_MAX_CAND + 16] __attribute__((aligned(64)));
    __m512 xs[2][4], M[2], vm[2], vt[2], acc[2], eout[2];
    int fin[2];
    int32_t n[2];
    for (int32_t t = 0; t < 2; t++) {
        __m512i nfacc = _mm512_setzero_si512();
        M[t] = ninf;
        for (int32_t c = 0; c < nch; c++) {
            const __mmask16 m = tail_mask(E - 16 * c);
            const __m512 x0 = load_widened(row[t], dtype, 16 * c, m);
            nfacc = _mm512_max_epu32(nfacc, _mm512_and_si512(_mm512_castps_si512(x0), expmask));
            xs[t][c] = _mm512_mask_mov_ps(ninf, m, x0);
            M[t] = _mm512_max_ps(M[t], xs[t][c]);
        }
        fin[t] = !_mm512_cmpeq_epi32_mask(nfacc, expmask);
    }
    for (int32_t t = 0; t < 2; t++) vm[t] = _mm512_set1_ps(_mm512_reduce_max_ps(M[t]));
    kth_largest_pair(M[0], M[1], k, &vt[0], &vt[1]);
    for (int32_t t = 0; t < 2; t++) {
        acc[t] = _mm512_setzero_ps();
        eout[t] = _mm512_setzero_ps();
        n[t] = 0;
    }
    for (int32_t c = 0; c < nch; c++)
        for (int32_t t = 0; t < 2; t++) {
            const __m512 x = xs[t][c];
            const __mmask16 tm = tail_mask(E - 16 * c);
            const __m512 e = _mm512_maskz_mov_ps(tm, exp_nonnan_v(_mm512_maskz_sub_ps(tm, x, vm[t])));
            acc[t] = _mm512_add_ps(acc[t], e);
            const __mmask16 cm = _mm512_cmp_ps_mask(x, vt[t], _CMP_GE_OQ);
            const int32_t at = n[t] < FAST_MAX_CAND ? n[t] : FAST_MAX_CAND;
            _mm512_storeu_si512(ci[t] + at, _mm512_maskz_compress_epi32(cm, _mm512_add_epi32(lane, _mm512_set1_epi32(16 * c))));
            _mm512_storeu_ps(ce[t] + at, _mm512_maskz_compress_ps(cm, e));
            n[t] += __builtin_popcount(cm);
            eout[t] = _mm512_mask_max_ps(eout[t], (__mmask16)~cm, eout[t], e);
        }
    float sum[2];
    __m512 vs[2], sout[2];
    int32_t above[2];
    for (int32_t t = 0; t < 2; t++) {
        sum[t] = fold_lanes(acc[t]);
        vs[t] = _mm512_set1_ps(sum[t]);
        sout[t] = _mm512_set1_ps(_mm512_reduce_max_ps(eout[t]) / sum[t]);
    }
    softmax_scores_pair(ce, n, vs, sout, sa, ca, above);
    *nout0 = fin[0] && n[0] <= FAST_MAX_CAND && above[0] >= k ? n[0] : 0;
    *nout1 = fin[1] && n[1] <= FAST_MAX_CAND && above[1] >= k ? n[1] : 0;
}

AVX512 static inline __attribute__((always_inline)) void
softmax_block_t(const route_ctx *C, const char *rows, size_t row_bytes, int32_t dtype, int32_t nb,
                float *weights, int32_t *ids, uint8_t *need_exact, const int32_t E,
                const int32_t k) {
    float xw[MRK_MAX_EXPERTS] __attribute__((aligned(64)));
    int32_t cidx[16][FAST_MAX_CAND + 16] __attribute__((aligned(64)));
    float ce[FAST_MAX_CAND + 16] __attribute__((aligned(64)));
    float sarr[16][FAST_MAX_CAND] __attribute__((aligned(64)));
    float carr[16][FAST_MAX_CAND] __attribute__((aligned(64)));
    int32_t ncand[16];
    if (E <= 64) {
        for (int32_t b = 0; b < nb; b += 2) {
            const int32_t b1 = b + 1 < nb ? b + 1 : b;
            int32_t n0, n1;
            softmax_cand_pair(rows + (size_t)b * row_bytes, rows + (size_t)b1 * row_bytes, dtype,
                              cidx[b], cidx[b1], sarr[b], sarr[b1], carr[b], carr[b1], &n0, &n1,
                              E, k);
            ncand[b] = n0;
            ncand[b1] = n1;
        }
    } else {
        for (int32_t b = 0; b < nb; b++)
            ncand[b] = softmax_cand(rows + (size_t)b * row_bytes, dtype, xw, cidx[b], ce, sarr[b],
                                    carr[b], E, k);
    }
    for (int32_t b = 0; b < nb; b++) need_exact[b] = ncand[b] == 0;
    for (int32_t b = 0; b < nb; b++)
        if (ncand[b])
            fast_phase3(C->L, sarr[b], carr[b], cidx[b], ncand[b], weights + (size_t)b * k,
                        ids + (size_t)b * k, k, 1);
}

/* topk_softmax and llama4_top1 select on the logits themselves: the candidates are the experts
 * with x >= Tx (the k-th largest lane-wise maximum); every other expert has x < Tx, below at
 * least k candidates, so the exact ranking of the candidates is the contract's. */
AVX512 static inline __attribute__((always_inline)) int32_t
logit_cand(const void *row, int32_t dtype, float *xw, int32_t *cidx, float *carr, const int32_t E,
           const int32_t k) {
    const int32_t nch = (E + 15) / 16;
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    const __m512i expmask = _mm512_set1_epi32(0x7f800000);
    __m512i nfacc = _mm512_setzero_si512();
    __m512 M = ninf;
    for (int32_t c = 0; c < nch; c++) {
        const __mmask16 m = tail_mask(E - 16 * c);
        const __m512 x0 = load_widened(row, dtype, 16 * c, m);
        nfacc = _mm512_max_epu32(nfacc, _mm512_and_si512(_mm512_castps_si512(x0), expmask));
        const __m512 x = _mm512_mask_mov_ps(ninf, m, x0);
        _mm512_store_ps(xw + 16 * c, x);
        M = _mm512_max_ps(M, x);
    }
    if (_mm512_cmpeq_epi32_mask(nfacc, expmask)) return 0;
    const __m512 vt = k == 1 ? _mm512_set1_ps(_mm512_reduce_max_ps(M)) : kth_lower_bound(M, k);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int32_t n = 0;
    for (int32_t c = 0; c < nch; c++) {
        const __m512 x = _mm512_load_ps(xw + 16 * c);
        const __mmask16 cm = _mm512_cmp_ps_mask(x, vt, _CMP_GE_OQ);
        const int32_t at = n < FAST_MAX_CAND ? n : FAST_MAX_CAND;
        _mm512_storeu_si512(cidx + at, _mm512_maskz_compress_epi32(cm, _mm512_add_epi32(lane, _mm512_set1_epi32(16 * c))));
        _mm512_storeu_ps(carr + at, _mm512_mask_compress_ps(ninf, cm, x));
        n += __builtin_popcount(cm);
    }
    return n > FAST_MAX_CAND ? 0 : n;
}

AVX512 static inline __attribute__((always_inline)) void
logit_block_t(const route_ctx *C, const char *rows, size_t row_bytes, int32_t dtype, int32_t nb,
              float *weights, int32_t *ids, uint8_t *need_exact, const int32_t E, const int32_t k,
              const int wmode) {
    float xw[MRK_MAX_EXPERTS] __attribute__((aligned(64)));
    int32_t cidx[16][FAST_MAX_CAND + 16] __attribute__((aligned(64)));
    float carr[16][FAST_MAX_CAND + 16] __attribute__((aligned(64)));
    int32_t ncand[16];
    for (int32_t b = 0; b < nb; b++) {
        ncand[b] = logit_cand(rows + (size_t)b * row_bytes, dtype, xw, cidx[b], carr[b], E, k);
        need_exact[b] = ncand[b] == 0;
    }
    for (int32_t b = 0; b < nb; b++)
        if (ncand[b])
            fast_rank_weights(C->L, carr[b], carr[b], cidx[b], ncand[b], weights + (size_t)b * k,
                              ids + (size_t)b * k, k, wmode, 1);
}

AVX512 void mrk_avx512_logit_block(const route_ctx *C, const char *rows, size_t row_bytes,
                               int32_t dtype, int32_t nb, float *weights, int32_t *ids,
                               uint8_t *need_exact) {
    if (C->method == MRK_LLAMA4_TOP1) {
        if (C->E == 128 && C->k == 1)
            logit_block_t(C, rows, row_bytes, dtype, nb, weights, ids, need_exact, 128, 1, 2);
        else
            logit_block_t(C, rows, row_bytes, dtype, nb, weights, ids, need_exact, C->E, C->k, 2);
    } else {
        if (C->E == 128 && C->k == 4)
            logit_block_t(C, rows, row_bytes, dtype, nb, weights, ids, need_exact, 128, 4, 1);
        else
            logit_block_t(C, rows, row_bytes, dtype, nb, weights, ids, need_exact, C->E, C->k, 1);
    }
}

/* ------------------------------------------------------------------------------------------
 * softmax_topk for E <= 16, transposed: 16 tokens at once, one 16-lane vector per expert
 * (lane = token), so every step of moe_token.h runs vertically, exactly as the contract writes
 * it: max, e_i = exp(x_i - m), the 16-lane strided sum (with E <= 16 lane i holds e_i alone, and
 * the 8, 4, 2, 1 fold becomes a fixed tree of vector additions; absent lanes hold +0, so adding
 * them is the identity and is skipped), s_i = e_i / sum, then k argmax passes (strictly greater
 * wins, so the lower expert on ties), renormalisation in column order, rsf. No approximation:
 * only tokens with a non-finite input take the exact path.
 * ------------------------------------------------------------------------------------------ */
AVX512 static inline __attribute__((always_inline)) void
small_softmax_block_t(const route_ctx *C, const char *rows, size_t row_bytes, int32_t dtype,
                      int32_t nb, float *weights, int32_t *ids, uint8_t *need_exact,
                      const int32_t E, const int32_t k) {
    float buf[16 * 16] __attribute__((aligned(64)));
    const __mmask16 em = tail_mask(E);
    const __mmask16 tm = tail_mask(nb);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    __m512 X[16], S[16], A[8];
    /* E == 8, full block: 8 rows of two tokens each, transposed in registers (three stages that
     * each swap one bit of the vector index with one bit of the lane); lane p then holds token
     * ((p & 7) << 1) | (p >> 3). Otherwise lane p holds token p (rows through a buffer). */
    const int tr8 = E == 8 && nb == 16 && dtype != MRK_DTYPE_FP16;
    if (tr8) {
        for (int32_t j = 0; j < 8; j++) {
            if (dtype == MRK_DTYPE_FP32)
                X[j] = _mm512_loadu_ps(rows + (size_t)j * 2 * row_bytes);
            else
                X[j] = _mm512_castsi512_ps(_mm512_slli_epi32(
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                        (const __m256i *)(rows + (size_t)j * 2 * row_bytes))), 16));
        }
        for (int32_t bit = 0; bit < 3; bit++) {
            const __m512i keep = _mm512_andnot_si512(_mm512_set1_epi32(1 << bit), lane);
            const __m512i from = _mm512_slli_epi32(
                _mm512_and_si512(_mm512_srli_epi32(lane, bit), _mm512_set1_epi32(1)), 4);
            const __m512i i0 = _mm512_or_si512(from, keep);
            const __m512i i1 = _mm512_or_si512(i0, _mm512_set1_epi32(1 << bit));
            for (int32_t v = 0; v < 8; v++) {
                if (v & (1 << bit)) continue;
                const __m512 a = X[v], b = X[v | (1 << bit)];
                X[v] = _mm512_permutex2var_ps(a, i0, b);
                X[v | (1 << bit)] = _mm512_permutex2var_ps(a, i1, b);
            }
        }
    } else {
        for (int32_t b = 0; b < 16; b++)
            _mm512_store_ps(buf + 16 * b, b < nb ? load_widened(rows + (size_t)b * row_bytes, dtype,
                                                                0, em)
                                                 : _mm512_setzero_ps());
        const __m512i bidx = _mm512_slli_epi32(lane, 4);
        for (int32_t i = 0; i < E; i++) X[i] = _mm512_i32gather_ps(bidx, buf + i, 4);
    }
    {
        const __m512i expmask = _mm512_set1_epi32(0x7f800000);
        __m512i nf = _mm512_setzero_si512();
        for (int32_t i = 0; i < E; i++)
            nf = _mm512_max_epu32(nf, _mm512_and_si512(_mm512_castps_si512(X[i]), expmask));
        const uint32_t bad = _mm512_cmpeq_epi32_mask(nf, expmask);
        if (!bad) /* (one masked store: memset was a call, with 11 vector registers spilled around it) */
            _mm_mask_storeu_epi8(need_exact, (__mmask16)tm, _mm_setzero_si128());
        else
            for (int32_t b = 0; b < nb; b++)
                need_exact[b] = (bad >> (tr8 ? ((b & 1) << 3) | (b >> 1) : b)) & 1;
    }
    __m512 M = X[0];
    for (int32_t i = 1; i < E; i++) M = _mm512_max_ps(M, X[i]);
    /* non-finite tokens' lanes (exact path) may be NaN here: harmless, they are discarded */
    for (int32_t i = 0; i < E; i++) S[i] = exp_nonnan_v(_mm512_sub_ps(X[i], M));
    /* fold 8: A[l] = lane l + lane l+8 (lanes >= E are +0: skipped) */
    const int32_t na = E < 8 ? E : 8;
    for (int32_t l = 0; l < na; l++) A[l] = l + 8 < E ? _mm512_add_ps(S[l], S[l + 8]) : S[l];
    for (int32_t w = 4, n = na; w >= 1; w >>= 1) {
        for (int32_t l = 0; l < w && l + w < n; l++) A[l] = _mm512_add_ps(A[l], A[l + w]);
        n = n < w ? n : w;
    }
    const __m512 sum = A[0];
    const __m512 rsum = _mm512_div_ps(_mm512_set1_ps(1.0f), sum); /* one division, not E */
    for (int32_t i = 0; i < E; i++) S[i] = div_by_recip(S[i], sum, rsum);
    __m512 W[16];
    __m512i I[16];
    for (int32_t j = 0; j < k; j++) {
        __m512 bv = ninf;
        __m512i bi = _mm512_setzero_si512();
        for (int32_t i = 0; i < E; i++) {
            const __mmask16 gt = _mm512_cmp_ps_mask(S[i], bv, _CMP_GT_OQ);
            bv = _mm512_mask_mov_ps(bv, gt, S[i]);
            bi = _mm512_mask_mov_epi32(bi, gt, _mm512_set1_epi32(i));
        }
        W[j] = bv;
        I[j] = bi;
        if (j + 1 < k)
            for (int32_t i = 0; i < E; i++)
                S[i] = _mm512_mask_mov_ps(S[i], _mm512_cmpeq_epi32_mask(bi, _mm512_set1_epi32(i)),
                                          ninf);
    }
    const mrk_layer *L = C->L;
    if (L->renormalize && L->renorm_epsilon > 0.0f) {
        /* w / (sum + eps), never skipped (mrk_finish_weights); a rare setting: plain divisions */
        __m512 s = W[0];
        for (int32_t j = 1; j < k; j++) s = _mm512_add_ps(s, W[j]);
        const __m512 d = _mm512_add_ps(s, _mm512_set1_ps(L->renorm_epsilon));
        for (int32_t j = 0; j < k; j++) W[j] = _mm512_div_ps(W[j], d);
    } else if (L->renormalize) {
        __m512 s = W[0];
        for (int32_t j = 1; j < k; j++) s = _mm512_add_ps(s, W[j]);
        const __mmask16 pos = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_GT_OQ);
        const __m512 ys = _mm512_div_ps(_mm512_set1_ps(1.0f), s); /* s >= the top score >= 1/E */
        for (int32_t j = 0; j < k; j++) W[j] = _mm512_mask_mov_ps(W[j], pos, div_by_recip(W[j], s, ys));
    }
    const __m512 rsf = _mm512_set1_ps(L->routed_scaling_factor);
    for (int32_t j = 0; j < k; j++) W[j] = _mm512_mul_ps(W[j], rsf);
    if (k == 2 && tr8) {
        /* output q of half h: token t = 8h + q / 2, column q & 1, from lane ((t & 1) << 3) | (t >> 1) */
        const __m512i lo = _mm512_setr_epi32(0, 16, 8, 24, 1, 17, 9, 25, 2, 18, 10, 26, 3, 19, 11, 27);
        const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(4));
        _mm512_storeu_ps(weights, _mm512_permutex2var_ps(W[0], lo, W[1]));
        _mm512_storeu_ps(weights + 16, _mm512_permutex2var_ps(W[0], hi, W[1]));
        _mm512_storeu_si512(ids, _mm512_permutex2var_epi32(I[0], lo, I[1]));
        _mm512_storeu_si512(ids + 16, _mm512_permutex2var_epi32(I[0], hi, I[1]));
    } else {
        const __m512i tok = tr8 ? _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(lane, _mm512_set1_epi32(7)), 1),
                                                  _mm512_srli_epi32(lane, 3))
                                : lane;
        const __m512i oidx = _mm512_mullo_epi32(tok, _mm512_set1_epi32(k));
        for (int32_t j = 0; j < k; j++) {
            _mm512_mask_i32scatter_ps(weights + j, tm, oidx, W[j], 4);
            _mm512_mask_i32scatter_epi32(ids + j, tm, oidx, I[j], 4);
        }
    }
}

AVX512 static void small_softmax_block(const route_ctx *C, const char *rows, size_t row_bytes,
                                       int32_t dtype, int32_t nb, float *weights, int32_t *ids,
                                       uint8_t *need_exact) {
    switch (C->E * 32 + C->k) {
#define SMALL_CASE(e, kk)                                                                        \
    case (e) * 32 + (kk):                                                                        \
        small_softmax_block_t(C, rows, row_bytes, dtype, nb, weights, ids, need_exact, e, kk);   \
        return;
    SMALL_CASE(8, 2)
    SMALL_CASE(8, 1)
    SMALL_CASE(16, 2)
    SMALL_CASE(16, 4)
#undef SMALL_CASE
    default:
        small_softmax_block_t(C, rows, row_bytes, dtype, nb, weights, ids, need_exact, C->E, C->k);
    }
}

AVX512 void mrk_avx512_softmax_block(const route_ctx *C, const char *rows, size_t row_bytes,
                                 int32_t dtype, int32_t nb, float *weights, int32_t *ids,
                                 uint8_t *need_exact) {
    if (C->E <= 16)
        small_softmax_block(C, rows, row_bytes, dtype, nb, weights, ids, need_exact);
    else if (C->E == 128 && C->k == 8)
        softmax_block_t(C, rows, row_bytes, dtype, nb, weights, ids, need_exact, 128, 8);
    else if (C->E == 64 && C->k == 6)
        softmax_block_t(C, rows, row_bytes, dtype, nb, weights, ids, need_exact, 64, 6);
    else if (C->E == 8 && C->k == 2)
        softmax_block_t(C, rows, row_bytes, dtype, nb, weights, ids, need_exact, 8, 2);
    else
        softmax_block_t(C, rows, row_bytes, dtype, nb, weights, ids, need_exact, C->E, C->k);
}
