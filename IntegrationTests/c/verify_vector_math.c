/*
 * verify_vector_math — the AVX-512 exp, sigmoid and sqrtsoftplus (Sources/CMoEKernels/
 * avx512_internal.h: exp_only_v, sigmoid_v, sigmoid_small_v, sqrtsoftplus_v) against the
 * contract's scalar functions in moe_token.h (mrk_exp_nonpos, mrk_sigmoid_f,
 * mrk_sqrtsoftplus_f), bit for bit; and the sqrtsoftplus fast path's approximation
 * (ssp_approx_v) against its bound SSP_APPROX_ERR: the largest |A(x) - mrk_sqrtsoftplus_f(x)|.
 *   quick: every 257th fp32 bit pattern (about 1.7e7 values, under a second)
 *   full:  every finite fp32 value (4.3e9; about 250 s on one core; the sqrtsoftplus
 *          approximation's largest error there: 3.5357e-5, at x <= -20.5)
 * exp is checked at -|x| (its domain), sigmoid_small_v where |x| <= SIG_SMALL_MAX.
 * Build (tests/python/test_vector_math.py does): clang -O2 -ffp-contract=off
 *   -ISources/CMoEKernels/include -ISources/CMoEKernels tests/c/verify_vector_math.c -lm
 * Exit status 0 only if nothing differs.
 */
#include <stdio.h>
#include <string.h>

#include "avx512_internal.h"

AVX512 int main(int argc, char **argv) {
    const uint64_t step = argc > 1 && !strcmp(argv[1], "full") ? 1 : 257;
    long bad_e = 0, bad_s = 0, bad_ss = 0, bad_sp = 0, n = 0;
    double approx_err = 0, approx_at = 0;
    const __m512 ssp_t[8] = {_mm512_load_ps(SSP_C0), _mm512_load_ps(SSP_C0 + 16), _mm512_load_ps(SSP_C1),
                             _mm512_load_ps(SSP_C1 + 16), _mm512_load_ps(SSP_C2), _mm512_load_ps(SSP_C2 + 16),
                             _mm512_load_ps(SSP_C3), _mm512_load_ps(SSP_C3 + 16)};
    const __m512i inc = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)step));
    for (uint64_t b = 0; b < (1ull << 32); b += 16 * step) {
        const __m512i bits = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)b), inc);
        const __m512 x = _mm512_castsi512_ps(bits);
        float xs[16], e[16], s[16], ss[16], sp[16], ap[16];
        _mm512_storeu_ps(xs, x);
        /* lanes past 2^32 wrap around; count each value once */
        const __mmask16 in = _mm512_cmpge_epu32_mask(bits, _mm512_set1_epi32((int)(uint32_t)b));
        const __mmask16 fin = (__mmask16)~nonfinite_mask(x) & in;
        const __m512 nonpos = _mm512_castsi512_ps(_mm512_or_si512(bits, _mm512_set1_epi32((int)0x80000000u)));
        _mm512_storeu_ps(e, exp_only_v(nonpos));
        _mm512_storeu_ps(s, sigmoid_v(x));
        _mm512_storeu_ps(ss, sigmoid_small_v(x));
        _mm512_storeu_ps(sp, sqrtsoftplus_v(x));
        _mm512_storeu_ps(ap, ssp_approx_v(x, ssp_t));
        for (int l = 0; l < 16; l++) {
            if (!((fin >> l) & 1)) continue;
            const float re = mrk_exp_nonpos(-__builtin_fabsf(xs[l])), rs = mrk_sigmoid_f(xs[l]);
            bad_e += mrk_bits_from_f32(re) != mrk_bits_from_f32(e[l]);
            bad_s += mrk_bits_from_f32(rs) != mrk_bits_from_f32(s[l]);
            bad_ss += __builtin_fabsf(xs[l]) <= SIG_SMALL_MAX && mrk_bits_from_f32(rs) != mrk_bits_from_f32(ss[l]);
            const float rp = mrk_sqrtsoftplus_f(xs[l]);
            bad_sp += mrk_bits_from_f32(rp) != mrk_bits_from_f32(sp[l]);
            const double err = __builtin_fabs((double)ap[l] - (double)rp);
            if (!(err <= approx_err)) { /* NaN too */
                approx_err = err;
                approx_at = xs[l];
            }
            n++;
        }
    }
    printf("values %ld: exp differ %ld, sigmoid differ %ld, sigmoid_small differ %ld, sqrtsoftplus differ %ld\n", n,
           bad_e, bad_s, bad_ss, bad_sp);
    printf("sqrtsoftplus approximation: max error %.6g at x = %.9g, bound %.6g\n", approx_err, approx_at,
           (double)SSP_APPROX_ERR);
    return bad_e || bad_s || bad_ss || bad_sp || !(approx_err < (double)SSP_APPROX_ERR);
}
