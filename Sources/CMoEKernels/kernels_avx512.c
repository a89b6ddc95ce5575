/*
 * The AVX-512 path: moe_token.h's operations, 16 experts at a time, in the same order, so the
 * results are bit-identical to the generic path (tests compare them over the whole matrix).
 *
 * Selection keeps, per 16-expert chunk, the chunk's maximum key; each of the k picks is then a
 * max over at most 64 chunk maxima plus one chunk rescan, instead of a pass over all experts.
 *
 * Fast paths (each proves its answer equals the contract's or sends the token to the exact path):
 *  - sigmoid + bias (biased_grouped_topk, biased_topk): approximate keys, candidates, exact
 *    sigmoid of the candidates only (see "Fast path for sigmoid scoring" below);
 *  - softmax_topk and grouped_topk with softmax scoring: every exp exactly (the sum needs them),
 *    the division only for candidates, with a strictness check against the best non-candidate;
 *  - topk_softmax and llama4_top1: candidates among the logits, exp/sigmoid only for the k chosen;
 *  - softmax_topk with E <= 16: no candidates at all; 16 tokens per block, transposed (one lane
 *    per token, one vector per expert), every step of the contract done vertically.
 * One token's candidate pass is a long dependent chain (max, sum, threshold, ...), so the softmax
 * (E <= 64) and grouped softmax candidate passes run two tokens side by side.
 * Candidates are ranked by a bitonic sort of order-preserving integer keys (the lane in the low
 * bits); truncation ties fall back to the tie-aware ranking loop.
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

/* The shared part of mrk_exp_parts, 16 lanes: n = round(t * log2 e) and e^r = hi + lo. */
AVX512 static inline __m512 exp_reduce_v(__m512 t, __m512 *hi_out, __m512 *lo_out) {
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
    *lo_out = _mm512_add_ps(_mm512_add_ps(_mm512_sub_ps(one, hi), r),
                            _mm512_mul_ps(p, _mm512_mul_ps(r, r)));
    *hi_out = hi;
    return n;
}

/* mrk_exp_parts, 16 lanes. NaN lanes return NaN (their lo is irrelevant: they clamp to 0). */
AVX512 static inline __m512 exp_parts_v(__m512 t, __m512 *lo_out) {
    const __mmask16 nan = _mm512_cmp_ps_mask(t, t, _CMP_UNORD_Q);
    __m512 hi, lo;
    __m512 n = exp_reduce_v(t, &hi, &lo);
    __m512 e = _mm512_add_ps(hi, lo);
    __m512 e_lo = _mm512_add_ps(_mm512_sub_ps(hi, e), lo);
    __m512i ni = _mm512_cvtps_epi32(n);
    __m512i n1 = _mm512_srai_epi32(_mm512_add_epi32(ni, _mm512_srli_epi32(ni, 31)), 1);
    __m512i n2 = _mm512_sub_epi32(ni, n1);
    const __m512i bias = _mm512_set1_epi32(127);
    __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23));
    __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23));
    *lo_out = _mm512_mul_ps(_mm512_mul_ps(e_lo, s1), s2);
    /* (e * s1) * s2 rounds once: e is in [0.7, 1.5] and s1 >= 2^-75, so e * s1 is exact. vscalefps
     * rounds e * 2^n once too, hence the same result, in one operation. (Not for lo: a tiny lo
     * times s1 can be subnormal.) */
    return _mm512_mask_blend_ps(nan, _mm512_scalef_ps(e, n), t);
}

/* exp_parts_v without the low part. */
AVX512 static inline __m512 exp_only_v(__m512 t) {
    const __mmask16 nan = _mm512_cmp_ps_mask(t, t, _CMP_UNORD_Q);
    __m512 hi, lo;
    __m512 n = exp_reduce_v(t, &hi, &lo);
    return _mm512_mask_blend_ps(nan, _mm512_scalef_ps(_mm512_add_ps(hi, lo), n), t);
}

AVX512 static inline __m512 exp_nonpos_v(__m512 t) { return exp_only_v(t); }

/* exp_only_v for lanes that are never NaN (t = x - max of finite x: finite or -inf). */
AVX512 static inline __m512 exp_nonnan_v(__m512 t) {
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
    return _mm512_scalef_ps(_mm512_add_ps(hi, lo), n);
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

/* sigmoid_v for finite |x| <= SIG_SMALL_MAX only (the caller checks): no floor, no NaN lane, and
 * both scalings by vscalefps. For the low part that is exact as well: here n >= -58, so s1 >= 2^-29,
 * and a nonzero e_lo is at least 2^-63 when n != 0 (r is then at least 2^-40 in magnitude), so
 * e_lo * s1 is normal and exact and (e_lo * s1) * s2 rounds once, like vscalefps; when n = 0
 * both scalings are by 1. Checked exhaustively against mrk_sigmoid_f over every |x| <= 40. */
#define SIG_SMALL_MAX 40.0f
AVX512 static inline __m512 sigmoid_small_v(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 magic = _mm512_set1_ps(MRK_ROUND_MAGIC);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    const __m512 t = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), sign));
    __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(t, _mm512_set1_ps(MRK_LOG2E)), magic),
                             magic);
    __m512 r = _mm512_sub_ps(_mm512_sub_ps(t, _mm512_mul_ps(n, _mm512_set1_ps(MRK_LN2_HI))),
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
    const __m512 tv = _mm512_scalef_ps(e, n);
    const __m512 tl = _mm512_scalef_ps(e_lo, n);
    __m512 d = _mm512_add_ps(one, tv);
    __m512 de = _mm512_add_ps(_mm512_sub_ps(one, d), tv);
    __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 s0 = _mm512_div_ps(_mm512_mask_blend_ps(neg, one, tv), d);
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


/* ------------------------------------------------------------------------------------------
 * Fast path for sigmoid scoring with a bias (biased_grouped_topk, biased_topk).
 *
 * The contract's sigmoid costs ~60 vector operations per 16 experts, but only the few experts
 * that can be selected need it. A cheap approximation A(x) (a cubic per unit interval, looked
 * up with vpermt2ps) is within SIG_APPROX_ERR of mrk_sigmoid_f for EVERY fp32 input (checked
 * exhaustively over all 2^32 bit patterns by
 * mrk_verify_sig_approx() at the end of this file, built with -DMRK_VERIFY_SIG_APPROX; max
 * error found 4.0233e-5 at x = 0.644617856; the bound below has slack). From it every key is known to within Dp, so:
 *  - group scores are known to within 2Dp + rounding; when the Gk-th and (Gk+1)-th best groups
 *    are separated by more than that, the kept set is exactly the contract's; otherwise the
 *    token takes the exact path;
 *  - at least k kept experts have approx key >= L, so no expert whose approx key is below
 *    L - 2Dp can be selected; the others (candidates) get the exact sigmoid and are ranked
 *    exactly (descending key, lower index first). Too many candidates: exact path.
 * Rows holding a non-finite input always take the exact path.
 * ------------------------------------------------------------------------------------------ */
static const float SIG_C0[32] __attribute__((aligned(64))) = {
    5.000000000e-01f, 4.962283969e-01f, 4.614047408e-01f, 4.834226370e-01f,
    6.032913327e-01f, 7.421289086e-01f, 8.491405845e-01f, 9.176105261e-01f,
    9.571334124e-01f, 9.784988761e-01f, 9.895246625e-01f, 9.950169921e-01f,
    9.976767898e-01f, 9.989353418e-01f, 9.995192885e-01f, 9.997857213e-01f,
    0.000000000e+00f, 2.142619342e-04f, 4.807330843e-04f, 1.064687385e-03f,
    2.323198598e-03f, 4.983009305e-03f, 1.047534216e-02f, 2.150114998e-02f,
    4.286661372e-02f, 8.238945156e-02f, 1.508594006e-01f, 2.578710914e-01f,
    3.967086375e-01f, 5.165773630e-01f, 5.385952592e-01f, 5.037716031e-01f};
static const float SIG_C1[32] __attribute__((aligned(64))) = {
    2.499841303e-01f, 2.669785023e-01f, 3.395658731e-01f, 3.168901503e-01f,
    2.141068429e-01f, 1.206991449e-01f, 6.174831092e-02f, 2.985315956e-02f,
    1.391077694e-02f, 6.312488578e-03f, 2.806483535e-03f, 1.227268600e-03f,
    5.293387221e-04f, 2.256549633e-04f, 9.523032350e-05f, 3.983705028e-05f,
    0.000000000e+00f, 3.983705028e-05f, 9.523032350e-05f, 2.256549633e-04f,
    5.293387221e-04f, 1.227268600e-03f, 2.806483535e-03f, 6.312488578e-03f,
    1.391077694e-02f, 2.985315956e-02f, 6.174831092e-02f, 1.206991449e-01f,
    2.141068429e-01f, 3.168901503e-01f, 3.395658731e-01f, 2.669785023e-01f};
static const float SIG_C2[32] __attribute__((aligned(64))) = {
    4.336808690e-17f, -2.619975992e-02f, -7.752650231e-02f, -6.993327290e-02f,
    -4.045768082e-02f, -1.946757361e-02f, -8.628200740e-03f, -3.671006067e-03f,
    -1.525937929e-03f, -6.247129058e-04f, -2.529371995e-04f, -1.015261878e-04f,
    -4.046308823e-05f, -1.603034434e-05f, -6.318286978e-06f, -2.479250497e-06f,
    0.000000000e+00f, 2.479250497e-06f, 6.318286978e-06f, 1.603034434e-05f,
    4.046308823e-05f, 1.015261878e-04f, 2.529371995e-04f, 6.247129058e-04f,
    1.525937929e-03f, 3.671006067e-03f, 8.628200740e-03f, 1.946757361e-02f,
    4.045768082e-02f, 6.993327290e-02f, 7.752650231e-02f, 2.619975992e-02f};
static const float SIG_C3[32] __attribute__((aligned(64))) = {
    -2.032378316e-02f, -5.987975746e-03f, 6.294947118e-03f, 5.477278493e-03f,
    2.650348237e-03f, 1.074990723e-03f, 4.097819910e-04f, 1.527285058e-04f,
    5.645545025e-05f, 2.080541344e-05f, 7.658843970e-06f, 2.818202802e-06f,
    1.036849767e-06f, 3.814480181e-07f, 1.403285523e-07f, 5.162421601e-08f,
    0.000000000e+00f, 5.162421601e-08f, 1.403285523e-07f, 3.814480181e-07f,
    1.036849767e-06f, 2.818202802e-06f, 7.658843970e-06f, 2.080541344e-05f,
    5.645545025e-05f, 1.527285058e-04f, 4.097819910e-04f, 1.074990723e-03f,
    2.650348237e-03f, 5.477278493e-03f, 6.294947118e-03f, -5.987975746e-03f};

#define SIG_APPROX_ERR 4.5e-5f /* verified max |A(x) - mrk_sigmoid_f(x)| is below this */
#define FAST_MAX_CAND 32

AVX512 static inline __m512 sig_approx_v(__m512 x, __m512 t0a, __m512 t0b, __m512 t1a,
                                         __m512 t1b, __m512 t2a, __m512 t2b, __m512 t3a,
                                         __m512 t3b) {
    const __m512 xc = _mm512_range_ps(x, _mm512_set1_ps(15.0f), 0x2); /* sign(x)*min(|x|,15) */
    const __m512i j = _mm512_castps_si512(_mm512_add_ps(xc, _mm512_set1_ps(MRK_ROUND_MAGIC)));
    __m512 p = _mm512_permutex2var_ps(t3a, j, t3b);
    p = _mm512_fmadd_ps(p, xc, _mm512_permutex2var_ps(t2a, j, t2b));
    p = _mm512_fmadd_ps(p, xc, _mm512_permutex2var_ps(t1a, j, t1b));
    return _mm512_fmadd_ps(p, xc, _mm512_permutex2var_ps(t0a, j, t0b));
}

/* Lane c of the result = max over the 16 lanes of v[c]. */
static const int32_t TREE16_PERM[16] __attribute__((aligned(64))) = {
    0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15}; /* chunk c sits in lane TREE16_PERM[c] */

AVX512 static inline void top2_merge(__m512 *m1, __m512 *m2, __m512 a1, __m512 a2, __m512 b1,
                                     __m512 b2) {
    *m1 = _mm512_max_ps(a1, b1);
    *m2 = _mm512_max_ps(_mm512_min_ps(a1, b1), _mm512_max_ps(a2, b2));
}

/* Transposed top-2 over 8 (m1, m2) lane sets: on return, lane q*4+0 / q*4+1 (q = 0..3) hold
 * the top-2 (m1, m2) of set q / set q+4 ... see group_top2_8. */
AVX512 static inline void group_top2_8(__m512 *m1, __m512 *m2, __m512 *o1, __m512 *o2) {
    __m512 a1[4], a2[4], b1[2], b2[2], c1, c2;
    for (int i = 0; i < 4; i++) {
        __m512 x = m1[2 * i], y = m1[2 * i + 1], u = m2[2 * i], v = m2[2 * i + 1];
        top2_merge(&a1[i], &a2[i], _mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(u, v, 0x44),
                   _mm512_shuffle_f32x4(x, y, 0xee), _mm512_shuffle_f32x4(u, v, 0xee));
    }
    for (int i = 0; i < 2; i++) {
        __m512 x = a1[2 * i], y = a1[2 * i + 1], u = a2[2 * i], v = a2[2 * i + 1];
        top2_merge(&b1[i], &b2[i], _mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(u, v, 0x88),
                   _mm512_shuffle_f32x4(x, y, 0xdd), _mm512_shuffle_f32x4(u, v, 0xdd));
    }
    {
        __m512 x = b1[0], y = b1[1], u = b2[0], v = b2[1];
        top2_merge(&c1, &c2, _mm512_shuffle_ps(x, y, 0x44), _mm512_shuffle_ps(u, v, 0x44),
                   _mm512_shuffle_ps(x, y, 0xee), _mm512_shuffle_ps(u, v, 0xee));
    }
    top2_merge(o1, o2, _mm512_shuffle_ps(c1, c1, 0x88), _mm512_shuffle_ps(c2, c2, 0x88),
               _mm512_shuffle_ps(c1, c1, 0xdd), _mm512_shuffle_ps(c2, c2, 0xdd));
}

/* Transposed max over 16 vectors (same shuffle tree); lanes come out permuted. */
AVX512 static inline __m512 tree_max16(const __m512 *v) {
    __m512 a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)
        a[i] = _mm512_max_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
    for (int i = 0; i < 4; i++)
        b[i] = _mm512_max_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xdd));
    for (int i = 0; i < 2; i++)
        c[i] = _mm512_max_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xee));
    return _mm512_max_ps(_mm512_shuffle_ps(c[0], c[1], 0x88), _mm512_shuffle_ps(c[0], c[1], 0xdd));
}

typedef struct {
    const mrk_layer *L;
    int32_t E, k, method, logit_key, sigmoid, grouped;
} route_ctx;

/* The exact path for one token: moe_token.h's operations, vectorised. */
AVX512 static int32_t route_token_exact(const route_ctx *C, const void *row, int32_t dtype,
                                        float *score, float *key, float *w_out,
                                        int32_t *id_out) {
    const mrk_layer *L = C->L;
    const int32_t E = C->E, k = C->k, method = C->method;
    float gscore[MRK_MAX_GROUPS_INLINE];
    float chosen[MRK_MAX_TOPK];
    int32_t nonfinite = 0;
    if (C->sigmoid) {
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
    mrk_token_weights(method, k, L->renormalize, L->routed_scaling_factor, chosen, score, id_out,
                      w_out);
    return nonfinite;
}

/* The k-th largest (1 <= k <= 16) of the 16 lanes of v (bitonic sort, descending). */
AVX512 static inline float kth_largest16(__m512 v, int32_t k) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#pragma clang loop unroll(full)
    for (int32_t size = 2; size <= 16; size *= 2) {
#pragma clang loop unroll(full)
        for (int32_t d = size / 2; d >= 1; d /= 2) {
            uint32_t wantmax = 0;
            for (int32_t i = 0; i < 16; i++)
                if (((i & d) == 0) == ((i & size) == 0)) wantmax |= 1u << i;
            const __m512 pk = _mm512_permutexvar_ps(_mm512_xor_si512(iota, _mm512_set1_epi32(d)), v);
            v = _mm512_mask_blend_ps((__mmask16)wantmax, _mm512_min_ps(v, pk), _mm512_max_ps(v, pk));
        }
    }
    return _mm512_cvtss_f32(_mm512_permutexvar_ps(_mm512_set1_epi32(k - 1), v));
}

typedef struct {
    int32_t G, Gk, nch, cpg; /* groups (0: ungrouped), kept groups, chunks, chunks per group */
    float dp;                /* bound on |exact key - approx key|, rounding included */
    __m512 t[8];             /* the approximation's tables */
} fast_ctx;

/* The fast path runs in three phases over a block of tokens (so that one token's long chain of
 * dependent operations overlaps the next token's work). Each phase returns 0 when it cannot
 * prove its answer: the caller then reruns the token exactly. */

/* Phase 1: approximate keys (and the widened row, for dtypes other than fp32). */
AVX512 static inline __attribute__((always_inline)) int
fast_phase1(const fast_ctx *F, const float *bias, const void *row, int32_t dtype, float *xw,
            float *akey, const int32_t E) {
    const int32_t nch = (E + 15) / 16;
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
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
        __m512 a = sig_approx_v(x, F->t[0], F->t[1], F->t[2], F->t[3], F->t[4], F->t[5], F->t[6],
                                F->t[7]);
        a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, bias + i));
        _mm512_store_ps(akey + i, _mm512_mask_mov_ps(ninf, m, a));
    }
    return !_mm512_cmpeq_epi32_mask(nfacc, expmask);
}

/* Phase 2: kept groups and the candidates (indices, ascending) into cidx; returns their number,
 * or 0 when the token must take the exact path. cidx has room for FAST_MAX_CAND + 16. */
AVX512 static inline __attribute__((always_inline)) int32_t
fast_phase2(const fast_ctx *F, const float *akey, int32_t *cidx, const int32_t E, const int32_t k,
            const int32_t G_, const int32_t cpg_) {
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
        __m512i cnt[MAX_CHUNKS / 16];
        __m512 cmv[MAX_CHUNKS / 16];
        for (int32_t q = 0; q < ncv; q++) {
            cnt[q] = _mm512_setzero_si512();
            cmv[q] = _mm512_load_ps(cm + 16 * q);
        }
        for (int32_t j = 0; j < nch; j++) {
            const __m512 b = _mm512_set1_ps(cm[j]);
            for (int32_t q = 0; q < ncv; q++)
                cnt[q] = _mm512_mask_sub_epi32(cnt[q], _mm512_cmp_ps_mask(b, cmv[q], _CMP_GE_OQ),
                                               cnt[q], _mm512_set1_epi32(-1));
        }
        __m512 best = ninf;
        for (int32_t q = 0; q < ncv; q++)
            best = _mm512_mask_max_ps(best, _mm512_cmpge_epi32_mask(cnt[q], _mm512_set1_epi32(k)),
                                      best, cmv[q]);
        thr = _mm512_reduce_max_ps(best) - 2.5f * F->dp;
    }
    /* 3. candidates: every expert whose approximate key reaches thr */
    int32_t n = 0;
    const __m512 vthr = _mm512_set1_ps(thr);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    if (G_) {
        for (uint64_t km = kept_chunks[0]; km; km &= km - 1) {
            const int32_t c = __builtin_ctzll(km);
            const __mmask16 m = _mm512_cmp_ps_mask(_mm512_load_ps(akey + 16 * c), vthr, _CMP_GE_OQ);
            _mm512_storeu_si512(cidx + (n < FAST_MAX_CAND ? n : FAST_MAX_CAND), _mm512_maskz_compress_epi32(
                                              m, _mm512_add_epi32(lane, _mm512_set1_epi32(16 * c))));
            n += __builtin_popcount(m);
        }
    } else {
        for (int32_t c = 0; c < nch; c++) {
            const __mmask16 m = _mm512_cmp_ps_mask(_mm512_load_ps(akey + 16 * c), vthr, _CMP_GE_OQ);
            _mm512_storeu_si512(cidx + (n < FAST_MAX_CAND ? n : FAST_MAX_CAND), _mm512_maskz_compress_epi32(
                                              m, _mm512_add_epi32(lane, _mm512_set1_epi32(16 * c))));
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
                 const int32_t cpg, const int32_t Gk) {
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
#pragma clang loop unroll(full)
    for (int32_t size = 2; size <= 8; size *= 2) {
#pragma clang loop unroll(full)
        for (int32_t d = size / 2; d >= 1; d /= 2) {
            uint32_t wantmax = 0;
            for (int32_t i = 0; i < 16; i++)
                if (((i & d) == 0) == ((i & size) == 0)) wantmax |= 1u << i;
            const __m512 pk = _mm512_permutexvar_ps(_mm512_xor_si512(iota, _mm512_set1_epi32(d)), sg);
            sg = _mm512_mask_blend_ps((__mmask16)wantmax, _mm512_min_ps(sg, pk), _mm512_max_ps(sg, pk));
        }
    }
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
        uint64_t m = 0;
        for (int32_t g = 0; g < G; g++)
            m |= (uint64_t)((kept[t] >> g) & 1u) * (((1ull << cpg) - 1) << (g * cpg));
        /* when not ok, any Gk * cpg valid chunks keep the loop below in bounds */
        km[t] = ok[t] ? m : (1ull << (Gk * cpg)) - 1;
    }
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int32_t n[2] = {0, 0};
    const __m512 vthr[2] = {_mm512_set1_ps(thr[0]), _mm512_set1_ps(thr[1])};
    for (int32_t j = 0; j < Gk * cpg; j++)
        for (int32_t t = 0; t < 2; t++) {
            const int32_t c = (int32_t)_tzcnt_u64(km[t]);
            km[t] &= km[t] - 1;
            const __mmask16 m = _mm512_cmp_ps_mask(_mm512_load_ps(ak[t] + 16 * c), vthr[t], _CMP_GE_OQ);
            _mm512_storeu_si512(ci[t] + (n[t] < FAST_MAX_CAND ? n[t] : FAST_MAX_CAND),
                                _mm512_maskz_compress_epi32(m, _mm512_add_epi32(lane, _mm512_set1_epi32(16 * c))));
            n[t] += __builtin_popcount(m);
        }
    *n_out0 = ok[0] && n[0] >= k && n[0] <= FAST_MAX_CAND ? n[0] : 0;
    *n_out1 = ok[1] && n[1] >= k && n[1] <= FAST_MAX_CAND ? n[1] : 0;
}

/* Phase 3a: exact scores and keys of the candidates (sarr, carr; lanes >= n of carr hold -inf).
 * Separate from the ranking so that the long dependent chain of the sigmoid of one token overlaps
 * that of the next. */
AVX512 static inline __attribute__((always_inline)) void
fast_scores(const mrk_layer *L, const void *row, int32_t dtype, const float *xw,
            const int32_t *cidx, int32_t n, float *sarr, float *carr, const int32_t E) {
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
        /* the row is finite (phase 1), so the sigmoid is too: no clamp needed */
        const __m512 ax = _mm512_castsi512_ps(_mm512_andnot_si512(_mm512_set1_epi32((int)0x80000000u),
                                                                  _mm512_castps_si512(x)));
        const __m512 s = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(SIG_SMALL_MAX), _CMP_GT_OQ)
                             ? sigmoid_v(x) : sigmoid_small_v(x);
        _mm512_store_ps(sarr + 16 * q, s);
        _mm512_store_ps(carr + 16 * q, _mm512_mask_mov_ps(ninf, m, _mm512_add_ps(s, b)));
    }
}

/* Phase 3b: the candidates ranked exactly; ids and weights out. wmode 0: w = the payload
 * (score) of the chosen, renormalised and scaled; 1: softmax over the chosen keys (topk_softmax);
 * 2: sigmoid of the chosen keys (llama4_top1). */
AVX512 static inline __attribute__((always_inline)) void
fast_rank_weights(const mrk_layer *L, const float *sarr, const float *carr, const int32_t *cidx,
                  int32_t n, float *w_out, int32_t *id_out, const int32_t k, const int wmode) {
    const int32_t nv = (n + 15) / 16;
    __m512 cv[2], sv[2];
    __m512i iv[2];
    float ck[FAST_MAX_CAND] __attribute__((aligned(64)));
    for (int32_t q = 0; q < nv; q++) {
        iv[q] = _mm512_maskz_loadu_epi32(tail_mask(n - 16 * q), cidx + 16 * q);
        cv[q] = _mm512_mask_loadu_ps(_mm512_set1_ps(-__builtin_inff()), tail_mask(n - 16 * q),
                                     carr + 16 * q);
        _mm512_store_ps(ck + 16 * q, cv[q]); /* lanes >= n: -inf, whatever carr holds there */
        sv[q] = _mm512_load_ps(sarr + 16 * q);
    }
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
        const __mmask16 tie = _mm512_mask_cmpeq_epi32_mask(tail_mask(k), tr,
                                                           _mm512_permutexvar_epi32(next, tr));
        if (!tie) {
            const __m512i pl = _mm512_sub_epi32(_mm512_set1_epi32(15),
                                                _mm512_and_si512(key, _mm512_set1_epi32(15)));
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
            const __mmask16 after = j >= 15 ? (__mmask16)0 : (__mmask16)(0xffffu << (j + 1));
            const __mmask16 beats = _mm512_cmp_ps_mask(b, cv[0], _CMP_GT_OQ) |
                                    _mm512_mask_cmp_ps_mask(after, b, cv[0], _CMP_EQ_OQ);
            rank = _mm512_mask_sub_epi32(rank, beats, rank, minus1);
        }
        /* lanes >= n hold -inf and rank n..15, so the ranks are a permutation of 0..15 */
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
                /* lanes i with position > j lose ties to j */
                const int32_t rel = j - 16 * q; /* j's position relative to this vector's lane 0 */
                const __mmask16 after = rel < 0 ? (__mmask16)0xffff
                                      : rel >= 15 ? (__mmask16)0
                                                  : (__mmask16)(0xffffu << (rel + 1));
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
            if (sum > 0.0f) w = _mm256_div_ps(w, _mm256_set1_ps(sum));
        }
        _mm256_mask_storeu_ps(w_out, m8, _mm256_mul_ps(w, _mm256_set1_ps(rsf)));
        return;
    }
    if (L->renormalize) {
        float sum = 0.0f;
        for (int32_t j = 0; j < k; j++) sum = sum + wtmp[j];
        if (sum > 0.0f) {
            const __m512 vs = _mm512_set1_ps(sum);
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
            int32_t n, float *w_out, int32_t *id_out, const int32_t k) {
    fast_rank_weights(L, sarr, carr, cidx, n, w_out, id_out, k, 0);
}

#define FAST_BLOCK_FLOATS 4096
#ifdef MRK_FAST_STATS
long mrk_ncand_hist[64];
#endif

/* Routes tokens [0, tokens) of the block; returns 1 per token that still needs the exact path in
 * need_exact[]. */
AVX512 static inline __attribute__((always_inline)) void
fast_block_t(const route_ctx *C, const fast_ctx *F, const char *rows, size_t row_bytes,
             int32_t dtype, int32_t nb, float *weights, int32_t *ids, uint8_t *need_exact,
             const int32_t E, const int32_t k, const int32_t G_, const int32_t cpg_,
             const int32_t Gk_) {
    float akey[FAST_BLOCK_FLOATS] __attribute__((aligned(64)));
    float xw[FAST_BLOCK_FLOATS] __attribute__((aligned(64)));
    int32_t cidx[16][FAST_MAX_CAND + 16] __attribute__((aligned(64)));
    int32_t ncand[16];
    float sarr[16][FAST_MAX_CAND] __attribute__((aligned(64)));
    float carr[16][FAST_MAX_CAND] __attribute__((aligned(64)));
    const int32_t stride = (E + 15) & ~15;
    for (int32_t b = 0; b < nb; b++)
        need_exact[b] = !fast_phase1(F, C->L->bias, rows + (size_t)b * row_bytes, dtype,
                                     xw + b * stride, akey + b * stride, E);
    if (Gk_) {
        for (int32_t b = 0; b < nb; b += 2) {
            const int32_t b1 = b + 1 < nb ? b + 1 : b;
            int32_t n0, n1;
            fast_phase2_pair(F, akey + b * stride, akey + b1 * stride, cidx[b], cidx[b1], &n0, &n1,
                             k, G_, cpg_, Gk_);
            ncand[b] = need_exact[b] ? 0 : n0;
            ncand[b1] = need_exact[b1] ? 0 : n1;
        }
    } else {
        for (int32_t b = 0; b < nb; b++)
            ncand[b] = need_exact[b] ? 0 : fast_phase2(F, akey + b * stride, cidx[b], E, k, G_, cpg_);
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
                        ncand[b], sarr[b], carr[b], E);
    for (int32_t b = 0; b < nb; b++)
        if (ncand[b])
            fast_phase3(C->L, sarr[b], carr[b], cidx[b], ncand[b], weights + (size_t)b * k,
                        ids + (size_t)b * k, k);
}

AVX512 static void fast_block(const route_ctx *C, const fast_ctx *F, const char *rows,
                              size_t row_bytes, int32_t dtype, int32_t nb, float *weights,
                              int32_t *ids, uint8_t *need_exact) {
    if (C->E == 256 && C->k == 8 && F->G == 8 && F->cpg == 2 && F->Gk == 4)
        fast_block_t(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, 256, 8, 8, 2, 4);
    else if (C->E == 256 && C->k == 8 && F->G == 0)
        fast_block_t(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, 256, 8, 0, 0, 0);
    else
        fast_block_t(C, F, rows, row_bytes, dtype, nb, weights, ids, need_exact, C->E, C->k, F->G,
                     F->cpg, 0);
}

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
    for (int32_t t = 0; t < 2; t++) vt[t] = _mm512_set1_ps(kth_largest16(M[t], k));
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
    int32_t above[2] = {0, 0};
    for (int32_t t = 0; t < 2; t++) {
        sum[t] = fold_lanes(acc[t]);
        vs[t] = _mm512_set1_ps(sum[t]);
        sout[t] = _mm512_set1_ps(_mm512_reduce_max_ps(eout[t]) / sum[t]);
    }
    for (int32_t q = 0; q < FAST_MAX_CAND / 16; q++)
        for (int32_t t = 0; t < 2; t++) {
            const __mmask16 m = n[t] > 16 * q ? tail_mask(n[t] - 16 * q) : (__mmask16)0;
            const __m512 sc = _mm512_div_ps(_mm512_maskz_loadu_ps(m, ce[t] + 16 * q), vs[t]);
            _mm512_store_ps(sa[t] + 16 * q, sc);
            _mm512_store_ps(ca[t] + 16 * q, _mm512_mask_mov_ps(ninf, m, sc));
            above[t] += __builtin_popcount(_mm512_mask_cmp_ps_mask(m, sc, sout[t], _CMP_GT_OQ));
        }
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
                        ids + (size_t)b * k, k);
}

/* grouped_topk with softmax scoring (DeepSeek-V2), G <= 16, P <= 32, no bias. As softmax_cand,
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
    for (int32_t t = 0; t < 2; t++) {
        vt[t] = _mm512_set1_ps(kth_largest16(MK[t], k));
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
    int32_t above[2] = {0, 0};
    for (int32_t t = 0; t < 2; t++) sout[t] = _mm512_set1_ps(_mm512_reduce_max_ps(eout[t]) / sum[t]);
    for (int32_t q = 0; q < FAST_MAX_CAND / 16; q++)
        for (int32_t t = 0; t < 2; t++) {
            const __mmask16 m = n[t] > 16 * q ? tail_mask(n[t] - 16 * q) : (__mmask16)0;
            const __m512 sc = _mm512_div_ps(_mm512_maskz_loadu_ps(m, ce[t] + 16 * q), vs[t]);
            _mm512_store_ps(sarr[t] + 16 * q, sc);
            _mm512_store_ps(carr[t] + 16 * q, _mm512_mask_mov_ps(ninf, m, sc));
            above[t] += __builtin_popcount(_mm512_mask_cmp_ps_mask(m, sc, sout[t], _CMP_GT_OQ));
        }
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
                        ids + (size_t)b * k, k);
}

AVX512 static void gsoft_block(const route_ctx *C, const int32_t *gid, const char *rows,
                               size_t row_bytes, int32_t dtype, int32_t nb, float *weights,
                               int32_t *ids, uint8_t *need_exact) {
    const int32_t G = C->L->num_groups, Gk = C->L->topk_group;
    if (C->E == 160 && C->k == 6 && G == 8 && Gk == 3)
        gsoft_block_t(C, gid, rows, row_bytes, dtype, nb, weights, ids, need_exact, 160, 6, 8, 3);
    else
        gsoft_block_t(C, gid, rows, row_bytes, dtype, nb, weights, ids, need_exact, C->E, C->k, G, Gk);
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
    const __m512 vt = _mm512_set1_ps(k == 1 ? _mm512_reduce_max_ps(M) : kth_largest16(M, k));
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
                              ids + (size_t)b * k, k, wmode);
}

AVX512 static void logit_block(const route_ctx *C, const char *rows, size_t row_bytes,
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
        if (!bad)
            memset(need_exact, 0, (size_t)nb);
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
    for (int32_t i = 0; i < E; i++) S[i] = _mm512_div_ps(S[i], sum);
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
    if (L->renormalize) {
        __m512 s = W[0];
        for (int32_t j = 1; j < k; j++) s = _mm512_add_ps(s, W[j]);
        const __mmask16 pos = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_GT_OQ);
        for (int32_t j = 0; j < k; j++) W[j] = _mm512_mask_div_ps(W[j], pos, W[j], s);
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

AVX512 static void softmax_block(const route_ctx *C, const char *rows, size_t row_bytes,
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
    C.sigmoid = !C.logit_key && L->scoring == MRK_SCORING_SIGMOID;
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
    if (C.sigmoid && L->bias &&
        (C.method == MRK_BIASED_GROUPED_TOPK || C.method == MRK_BIASED_TOPK)) {
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
        /* D + 2^-21 (2 + bmax), rounded up generously */
        F.dp = (SIG_APPROX_ERR + (2.0f + bmax) * 4.76837158e-7f) * 1.0001f;
        F.t[0] = _mm512_load_ps(SIG_C0);
        F.t[1] = _mm512_load_ps(SIG_C0 + 16);
        F.t[2] = _mm512_load_ps(SIG_C1);
        F.t[3] = _mm512_load_ps(SIG_C1 + 16);
        F.t[4] = _mm512_load_ps(SIG_C2);
        F.t[5] = _mm512_load_ps(SIG_C2 + 16);
        F.t[6] = _mm512_load_ps(SIG_C3);
        F.t[7] = _mm512_load_ps(SIG_C3 + 16);
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
                gsoft_block(&C, gid, rows, row_bytes, dtype, nb, weights + t0 * k, ids + t0 * k,
                            need_exact);
            else if (softmax_fast)
                softmax_block(&C, rows, row_bytes, dtype, nb, weights + t0 * k, ids + t0 * k,
                              need_exact);
            else
                logit_block(&C, rows, row_bytes, dtype, nb, weights + t0 * k, ids + t0 * k,
                            need_exact);
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
            fast_block(&C, &F, rows, row_bytes, dtype, nb, weights + t0 * k, ids + t0 * k,
                       need_exact);
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
