/*
 * Internal to the AVX-512 path (kernels_avx512.c, avx512_sigmoid.c, avx512_softmax.c,
 * avx512_gsoft.c, avx512_hash.c): the vector helpers (the contract's exp, sigmoid and
 * sqrt(softplus), 16 lanes), the sigmoid and sqrt(softplus) approximations' tables, the sorting
 * networks, and the block entry points. The candidate ranking every fast path ends with: avx512_rank.h.
 * Not part of the module's interface.
 */
#ifndef MRK_AVX512_INTERNAL_H
#define MRK_AVX512_INTERNAL_H

#include <immintrin.h>
#include <string.h>

#include "moe_kernels.h"
#include "moe_token.h"

/* (every CPU with AVX-512 has BMI2) */
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi2")))
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
    /* x - n * LN2_HI as one FMA: LN2_HI has 9 significant bits and |n| <= 151, so the product
     * is exact and the fused and the separate forms round the same difference once */
    __m512 r = _mm512_sub_ps(_mm512_fnmadd_ps(n, _mm512_set1_ps(MRK_LN2_HI), x),
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

/* exp_only_v for lanes that are never NaN (t = x - max of finite x: finite or -inf). */
AVX512 static inline __m512 exp_nonnan_v(__m512 t) {
    __m512 hi, lo;
    __m512 n = exp_reduce_v(t, &hi, &lo);
    return _mm512_scalef_ps(_mm512_add_ps(hi, lo), n);
}

/* exp_parts_v without the low part. */
AVX512 static inline __m512 exp_only_v(__m512 t) {
    const __mmask16 nan = _mm512_cmp_ps_mask(t, t, _CMP_UNORD_Q);
    return _mm512_mask_blend_ps(nan, exp_nonnan_v(t), t);
}

AVX512 static inline __m512 exp_nonpos_v(__m512 t) { return exp_only_v(t); }

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
    __m512 r = _mm512_sub_ps(_mm512_fnmadd_ps(n, _mm512_set1_ps(MRK_LN2_HI), t), /* (see exp_reduce_v) */
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

/* mrk_log_reduced, 16 lanes; e is 0.0f or 1.0f in each lane (the products e * LN2_LO and
 * e * LN2_HI are then exact, and are added as the scalar code adds them, signed zeros included). */
AVX512 static inline __m512 log_reduced_v(__m512 m, __m512 e) {
    const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
    const __m512 z = _mm512_mul_ps(f, f);
    __m512 y = _mm512_set1_ps(7.0376836292e-2f);
    y = _mm512_sub_ps(_mm512_mul_ps(y, f), _mm512_set1_ps(1.1514610310e-1f));
    y = _mm512_add_ps(_mm512_mul_ps(y, f), _mm512_set1_ps(1.1676998740e-1f));
    y = _mm512_sub_ps(_mm512_mul_ps(y, f), _mm512_set1_ps(1.2420140846e-1f));
    y = _mm512_add_ps(_mm512_mul_ps(y, f), _mm512_set1_ps(1.4249322787e-1f));
    y = _mm512_sub_ps(_mm512_mul_ps(y, f), _mm512_set1_ps(1.6668057665e-1f));
    y = _mm512_add_ps(_mm512_mul_ps(y, f), _mm512_set1_ps(2.0000714765e-1f));
    y = _mm512_sub_ps(_mm512_mul_ps(y, f), _mm512_set1_ps(2.4999993993e-1f));
    y = _mm512_add_ps(_mm512_mul_ps(y, f), _mm512_set1_ps(3.3333331174e-1f));
    y = _mm512_mul_ps(y, f);
    y = _mm512_mul_ps(y, z);
    y = _mm512_add_ps(y, _mm512_mul_ps(e, _mm512_set1_ps(MRK_LN2_LO)));
    y = _mm512_sub_ps(y, _mm512_mul_ps(_mm512_set1_ps(0.5f), z));
    return _mm512_add_ps(_mm512_add_ps(f, y), _mm512_mul_ps(e, _mm512_set1_ps(MRK_LN2_HI)));
}

/* mrk_sqrtsoftplus_f, 16 lanes: the three branches of the scalar code by masks. The large-x
 * branch shares the square root with the main one (sqrt(x) instead of sqrt(softplus)); the
 * small-x branch (e^(x/2)) costs an exp only when some lane needs it. NaN lanes stay NaN (the
 * main branch carries them through), as in the scalar code. */
AVX512 static inline __m512 sqrtsoftplus_v(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    const __mmask16 large = _mm512_cmp_ps_mask(x, _mm512_set1_ps(20.0f), _CMP_GT_OQ);
    const __mmask16 small = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-17.5f), _CMP_LT_OQ);
    const __m512 neg_abs = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u)));
    __m512 tl;
    const __m512 t = exp_parts_v(neg_abs, &tl);
    const __m512 u = _mm512_add_ps(one, t);
    const __m512 c = _mm512_add_ps(_mm512_sub_ps(t, _mm512_sub_ps(u, one)), tl);
    const __mmask16 big = _mm512_cmp_ps_mask(u, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
    const __m512 m = _mm512_mask_mul_ps(u, big, u, _mm512_set1_ps(0.5f));
    const __m512 l = _mm512_add_ps(log_reduced_v(m, _mm512_maskz_mov_ps(big, one)), _mm512_div_ps(c, u));
    const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
    __m512 sp = _mm512_mask_add_ps(l, pos, x, l);
    sp = _mm512_mask_mov_ps(sp, large, x);
    __m512 r = _mm512_sqrt_ps(sp);
    if (small) r = _mm512_mask_mov_ps(r, small, exp_only_v(_mm512_mul_ps(_mm512_set1_ps(0.5f), x)));
    return r;
}

/* mrk_score_elementwise, 16 lanes (scoring 1 sigmoid, 2 sqrtsoftplus, 3 none). */
AVX512 static inline __m512 score_elementwise_v(int32_t scoring, __m512 x) {
    if (scoring == MRK_SCORING_SIGMOID) return sigmoid_v(x);
    if (scoring == MRK_SCORING_SQRTSOFTPLUS) return sqrtsoftplus_v(x);
    return x;
}

/* RN(a / b) in every lane without a division, from y = RN(1 / b): where many quotients share
 * one divisor (the small-softmax block's E scores over one sum per token), one division instead of
 * E. q = RN(a y) is within about an ulp of a / b, the remainder a - b q is then exact (one FMA),
 * and q + (a - b q) y rounded once is the correctly rounded quotient (Markstein's theorem; IA-64's
 * division sequences end with this step). For 1/1024 <= b <= 1024 and 0 <= a <= b; the remainder
 * is exact only far from underflow, so lanes with 0 < a < 2^-80 take a real division.
 * tests/c/verify_div_recip.c full compared it bit for bit with the division on 2.4e11 pairs
 * (every dividend significand against 20,023 divisor significands; every dividend of [0, b] for 63
 * divisors from 2^-10 to 2^10): none differ, and 1.5e8 do without the 2^-80 guard. Its quick
 * form runs in the tests. */
AVX512 static inline __m512 div_by_recip(__m512 a, __m512 b, __m512 y) {
    const __m512 q = _mm512_mul_ps(a, y);
    const __m512 r = _mm512_fnmadd_ps(b, q, a);
    const __m512 q2 = _mm512_fmadd_ps(r, y, q);
    /* 0 < a < 2^-80 as unsigned bits: a - 1 wraps for +0 */
    const __mmask16 tiny = _mm512_cmplt_epu32_mask(
        _mm512_sub_epi32(_mm512_castps_si512(a), _mm512_set1_epi32(1)), _mm512_set1_epi32(0x17800000 - 1));
    return tiny ? _mm512_mask_div_ps(q2, tiny, a, b) : q2;
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


/* mrk_softmax_row over score[0..E) in place, non-finite results clamped to 0. */
AVX512 static inline void softmax_scores(float *score, int32_t E) {
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

/* ------------------------------------------------------------------------------------------
 * The same fast path for sqrtsoftplus scoring with a bias (DeepSeek-V4's biased_topk). The
 * contract's sqrt(softplus(x)) costs an exp, a log, a division and a square root per expert;
 * the approximation A(x) used for the keys:
 *  - x > SSP_SQRT_FROM: sqrt(x) (vsqrtps, correctly rounded). Above 20 the contract computes
 *    exactly this; between, sqrt(softplus(x)) - sqrt(x) < e^-x / (2 sqrt(x)) < 2e-6.
 *  - else a cubic in d = xc - j on the unit interval around j = round(xc), xc = x clamped to
 *    [-20.5, 11.25]: j in -20..11, 32 intervals, entry j mod 32 of the tables below, looked up
 *    with vpermt2ps as the sigmoid's are (d is exact, |d| <= 1/2; coefficients: per interval, a
 *    least-squares cubic reweighted towards equal ripple, in double, rounded to fp32; fit error
 *    <= 1.25e-5). Below -20.5 the contract's value lies in [0, e^-10.25] = [0, 3.54e-5] and A
 *    is A(-20.5) = 3.54e-5: that cutoff is the largest error.
 * |A(x) - mrk_sqrtsoftplus_f(x)| <= SSP_APPROX_ERR for every finite fp32 x: checked over all of
 * them by IntegrationTests/c/verify_vector_math.c full (a sample in its quick form, which the
 * tests run); max error found 3.5357e-5 (x <= -20.5). The rest of the argument is the
 * sigmoid's (above), with the key rounding term for |s| <= 4.5 (A = s exactly, so no rounding
 * difference, where s can be larger: x > 20).
 * ------------------------------------------------------------------------------------------ */
static const float SSP_C0[32] __attribute__((aligned(64))) = {
    8.325595856e-01f, 1.145968080e+00f, 1.458392382e+00f, 1.746018291e+00f,
    2.004532099e+00f, 2.237569332e+00f, 2.449995279e+00f, 2.645923853e+00f,
    2.828486681e+00f, 3.000020742e+00f, 3.162284851e+00f, 3.316627264e+00f,
    4.539900692e-05f, 7.485030801e-05f, 1.234072843e-04f, 2.034642239e-04f,
    3.354557848e-04f, 5.530730705e-04f, 9.118632297e-04f, 1.503407722e-03f,
    2.478697803e-03f, 4.086671397e-03f, 6.737733260e-03f, 1.110842824e-02f,
    1.831373200e-02f, 3.018989973e-02f, 4.975529388e-02f, 8.194578439e-02f,
    1.347198784e-01f, 2.204246670e-01f, 3.562741876e-01f, 5.597102046e-01f};
static const float SSP_C1[32] __attribute__((aligned(64))) = {
    3.002676964e-01f, 3.189631701e-01f, 3.019781411e-01f, 2.727870047e-01f,
    2.449491173e-01f, 2.219613492e-01f, 2.035773844e-01f, 1.887977123e-01f,
    1.767136604e-01f, 1.666449159e-01f, 1.581063271e-01f, 1.507530212e-01f,
    2.269959441e-05f, 3.742530316e-05f, 6.170389679e-05f, 1.017325194e-04f,
    1.677285618e-04f, 2.765376121e-04f, 4.559332738e-04f, 7.517060731e-04f,
    1.239350182e-03f, 2.043326851e-03f, 3.368803998e-03f, 5.553894211e-03f,
    9.155370295e-03f, 1.508814190e-02f, 2.484701388e-02f, 4.083594307e-02f,
    6.675320864e-02f, 1.075801104e-01f, 1.672997624e-01f, 2.402586341e-01f};
static const float SSP_C2[32] __attribute__((aligned(64))) = {
    2.075439878e-02f, -1.234024181e-03f, -1.304767653e-02f, -1.477148850e-02f,
    -1.275803894e-02f, -1.027633343e-02f, -8.216917515e-03f, -6.658012047e-03f,
    -5.496510305e-03f, -4.622301087e-03f, -3.951868042e-03f, -3.427064745e-03f,
    5.704585419e-06f, 9.405271157e-06f, 1.550667002e-05f, 2.556617437e-05f,
    4.215148874e-05f, 6.949602539e-05f, 1.145794376e-04f, 1.889089181e-04f,
    3.114553110e-04f, 5.134902894e-04f, 8.465453866e-04f, 1.395462081e-03f,
    2.299584448e-03f, 3.786255373e-03f, 6.219619419e-03f, 1.015293319e-02f,
    1.629598439e-02f, 2.501078509e-02f, 3.425022960e-02f, 3.585565835e-02f};
static const float SSP_C3[32] __attribute__((aligned(64))) = {
    -7.387116551e-03f, -6.136842072e-03f, -1.873157686e-03f, 3.352638741e-04f,
    8.424037951e-04f, 7.727072807e-04f, 5.989570636e-04f, 4.466443206e-04f,
    3.337750677e-04f, 2.535314998e-04f, 1.965319243e-04f, 1.554551854e-04f,
    9.502728062e-07f, 1.566734909e-06f, 2.583109108e-06f, 4.258825811e-06f,
    7.021613328e-06f, 1.157666793e-05f, 1.908662853e-05f, 3.146821473e-05f,
    5.188090290e-05f, 8.553082444e-05f, 1.409881370e-04f, 2.323231020e-04f,
    3.824671730e-04f, 6.280376110e-04f, 1.024122816e-03f, 1.638477435e-03f,
    2.486527199e-03f, 3.239822807e-03f, 2.471926389e-03f, -2.068227855e-03f};

#define SSP_APPROX_ERR 4.0e-5f /* verified max |A(x) - mrk_sqrtsoftplus_f(x)| is below this */
#define SSP_SQRT_FROM 11.25f

/* A(x) above; t holds SSP_C0..SSP_C3 as sig_approx_v's tables are held (two vectors each). */
AVX512 static inline __m512 ssp_approx_v(__m512 x, const __m512 *t) {
    const __m512 magic = _mm512_set1_ps(MRK_ROUND_MAGIC);
    const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-20.5f)), _mm512_set1_ps(SSP_SQRT_FROM));
    const __m512 jm = _mm512_add_ps(xc, magic);
    const __m512 d = _mm512_sub_ps(xc, _mm512_sub_ps(jm, magic)); /* exact: |d| <= 0.5 */
    const __m512i j = _mm512_castps_si512(jm);                    /* low 5 bits: j mod 32 */
    __m512 p = _mm512_permutex2var_ps(t[6], j, t[7]);
    p = _mm512_fmadd_ps(p, d, _mm512_permutex2var_ps(t[4], j, t[5]));
    p = _mm512_fmadd_ps(p, d, _mm512_permutex2var_ps(t[2], j, t[3]));
    p = _mm512_fmadd_ps(p, d, _mm512_permutex2var_ps(t[0], j, t[1]));
    const __mmask16 large = _mm512_cmp_ps_mask(x, _mm512_set1_ps(SSP_SQRT_FROM), _CMP_GT_OQ);
    return large ? _mm512_mask_sqrt_ps(p, large, x) : p;
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
    int32_t E, k, method, logit_key, grouped;
    int32_t elementwise; /* the scoring when scores are element-wise (sigmoid, sqrtsoftplus, none), else 0 */
} route_ctx;

/* A bitonic sorting network over the lanes of v. max_size 16: all 16 lanes, descending.
 * max_size 8: each half of 8 lanes on its own, the lower half descending and the upper half
 * ascending, or descending too with upper_desc (every upper comparator reversed). */
AVX512 static inline __attribute__((always_inline)) __m512 bitonic_sort(__m512 v, const int32_t max_size,
                                                                        const int upper_desc) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#pragma clang loop unroll(full)
    for (int32_t size = 2; size <= max_size; size *= 2) {
#pragma clang loop unroll(full)
        for (int32_t d = size / 2; d >= 1; d /= 2) {
            uint32_t wantmax = 0; /* the lanes that take the min of their pair */
            for (int32_t i = 0; i < 16; i++)
                if ((((i & d) == 0) == ((i & size) == 0)) != (upper_desc && (i & 8))) wantmax |= 1u << i;
            const __m512 pk = _mm512_permutexvar_ps(_mm512_xor_si512(iota, _mm512_set1_epi32(d)), v);
            v = _mm512_mask_blend_ps((__mmask16)wantmax, _mm512_min_ps(v, pk), _mm512_max_ps(v, pk));
        }
    }
    return v;
}

/* The k-th largest (1 <= k <= 16) of the 16 lanes of v. */
AVX512 static inline __attribute__((always_inline)) float kth_largest16(__m512 v, int32_t k) {
    return _mm512_cvtss_f32(_mm512_permutexvar_ps(_mm512_set1_epi32(k - 1), bitonic_sort(v, 16, 0)));
}

/* For two tokens at once, a lower bound on the k-th largest value of each, broadcast into *t0
 * and *t1, from m0 and m1 holding the maxima of 16 disjoint sets of each token's values (the
 * lane-wise maxima). k <= 6: the maxima of lane pairs (l, l + 8) are 8 disjoint sets, and the
 * k-th largest of k or more disjoint sets' maxima is still a lower bound; both tokens' 8 values
 * share one vector (token 0 in lanes 0-7, token 1 in 8-15), each half sorted descending by one
 * bitonic network of 8 — 6 stages for both instead of 10 for each. For k = 7 or 8 that bound is
 * one of the two lowest of the 8 and lets in too many candidates (qwen3-moe, k = 8: 1.5x
 * slower), so k > 6 uses kth_largest16 (scripts/kernel-ab.sh: k = 4 and 6 are 4-11 % faster). */
AVX512 static inline __attribute__((always_inline)) void
kth_largest_pair(__m512 m0, __m512 m1, int32_t k, __m512 *t0, __m512 *t1) {
    if (k > 6) {
        *t0 = _mm512_set1_ps(kth_largest16(m0, k));
        *t1 = _mm512_set1_ps(kth_largest16(m1, k));
        return;
    }
    const __m512 p0 = _mm512_max_ps(m0, _mm512_shuffle_f32x4(m0, m0, 0x4e));
    const __m512 p1 = _mm512_max_ps(m1, _mm512_shuffle_f32x4(m1, m1, 0x4e));
    const __m512 v = bitonic_sort(_mm512_mask_blend_ps((__mmask16)0xff00, p0, p1), 8, 1);
    *t0 = _mm512_permutexvar_ps(_mm512_set1_epi32(k - 1), v);
    *t1 = _mm512_permutexvar_ps(_mm512_set1_epi32(7 + k), v);
}

/* kth_largest_pair for one token. */
AVX512 static inline __attribute__((always_inline)) __m512 kth_lower_bound(__m512 m, int32_t k) {
    if (k > 6) return _mm512_set1_ps(kth_largest16(m, k));
    __m512 t, unused;
    kth_largest_pair(m, m, k, &t, &unused);
    return t;
}

typedef struct {
    int32_t G, Gk, nch, cpg; /* groups (0: ungrouped), kept groups, chunks, chunks per group */
    float dp;                /* bound on |exact key - approx key|, rounding included */
    int32_t eo;              /* even/odd key layout (bf16; see fast_phase1 in avx512_sigmoid.c) */
    int32_t ssp;             /* 1: sqrtsoftplus scoring (ssp_approx_v), 0: sigmoid (sig_approx_v) */
    __m512 t[8];             /* the approximation's tables */
    float bias_eo[MRK_MAX_EXPERTS] __attribute__((aligned(64))); /* the bias in that layout */
} fast_ctx;

/* Two tokens' softmax candidates (e values in ce[t], n[t] of them): their scores s = e / sum
 * (vs[t] holds the sum) into sarr[t], and into carr[t] padded with -inf; above[t] = how many
 * score strictly above sout[t], the best score among the non-candidates. */
AVX512 static inline __attribute__((always_inline)) void
softmax_scores_pair(float (*ce)[FAST_MAX_CAND + 16], const int32_t *n, const __m512 *vs, const __m512 *sout,
                    float *const *sarr, float *const *carr, int32_t *above) {
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    above[0] = above[1] = 0;
    /* the second 16 candidates only when either token has them (a zmm division is ~10 cycles) */
    const int32_t nq = n[0] > 16 || n[1] > 16 ? FAST_MAX_CAND / 16 : 1;
    for (int32_t q = 0; q < nq; q++)
        for (int32_t t = 0; t < 2; t++) {
            const __mmask16 m = n[t] > 16 * q ? tail_mask(n[t] - 16 * q) : (__mmask16)0;
            const __m512 sc = _mm512_div_ps(_mm512_maskz_loadu_ps(m, ce[t] + 16 * q), vs[t]);
            _mm512_store_ps(sarr[t] + 16 * q, sc);
            _mm512_store_ps(carr[t] + 16 * q, _mm512_mask_mov_ps(ninf, m, sc));
            above[t] += __builtin_popcount(_mm512_mask_cmp_ps_mask(m, sc, sout[t], _CMP_GT_OQ));
        }
}

/* Block entry points: route nb <= 16 tokens starting at rows; need_exact[b] = 1 for each token
 * the caller must rerun on the exact path. */
void mrk_avx512_fast_block(const route_ctx *C, const fast_ctx *F, const char *rows,
                           size_t row_bytes, int32_t dtype, int32_t nb, float *weights,
                           int32_t *ids, uint8_t *need_exact);
void mrk_avx512_softmax_block(const route_ctx *C, const char *rows, size_t row_bytes,
                              int32_t dtype, int32_t nb, float *weights, int32_t *ids,
                              uint8_t *need_exact);
void mrk_avx512_gsoft_block(const route_ctx *C, const int32_t *gid, const char *rows,
                            size_t row_bytes, int32_t dtype, int32_t nb, float *weights,
                            int32_t *ids, uint8_t *need_exact);
void mrk_avx512_logit_block(const route_ctx *C, const char *rows, size_t row_bytes,
                            int32_t dtype, int32_t nb, float *weights, int32_t *ids,
                            uint8_t *need_exact);

#define FAST_BLOCK_FLOATS 4096

#endif
