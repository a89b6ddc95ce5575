/*
 * verify_div_recip — checks the kernels' division by a reciprocal (div_by_recip in
 * Sources/CMoEKernels/avx512_internal.h) against the IEEE division, bit for bit.
 *
 * Away from underflow and overflow, scaling a or b by a power of two scales every step of
 * div_by_recip and of the division exactly, so the significands decide: dividends over one
 * binade [1, 2) against divisors in [1, 2) cover every pair of significands.
 *   quick: 200 divisors (structured significands: 1, 1 + ulp, all ones, 1.5 +- ulp, ...; random
 *          ones), every 61st dividend of [1, 2); plus 6 divisors from 2^-10 to 2^10 with every
 *          4099th dividend of [0, b] (the tiny ones included). A few seconds.
 *   full:  20,000 random divisor significands and the structured ones, every dividend of [1, 2)
 *          (2^23 each); plus 64 divisors over 2^-10 .. 2^10 with every dividend of [0, b].
 * Build (tests/python/test_div_recip.py does): clang -O2 -ffp-contract=off -DMRK_VERIFY_DIV_RECIP
 *   -ISources/CMoEKernels/include -ISources/CMoEKernels (every .c file of Sources/CMoEKernels)
 *   tests/c/verify_div_recip.c -lm
 * Prints the counts; exit status 0 only if no quotient differs.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t mrk_verify_div_recip(const float *divisors, int32_t n, uint32_t a_lo, uint32_t a_hi,
                             uint32_t stride, int64_t *checked);

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint64_t state = 0x9e3779b97f4a7c15ull;
static uint32_t next_random(void) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(state >> 32);
}

int main(int argc, char **argv) {
    const int full = argc > 1 && !strcmp(argv[1], "full");
    const int nrand = full ? 20000 : 160;
    float *d = malloc((size_t)(nrand + 64) * sizeof(float));
    int n = 0;
    /* significands with structure: 1, 1 + k ulp, 2 - k ulp (all ones), 1.5 +- ulp, 1.25, 1.75 */
    for (uint32_t k = 0; k < 8; k++) {
        d[n++] = from_bits(0x3f800000u + k);
        d[n++] = from_bits(0x3fffffffu - k);
    }
    const uint32_t mid[] = {0x3fc00000u, 0x3fc00001u, 0x3fbfffffu, 0x3fa00000u, 0x3fe00000u, 0x3faaaaabu, 0x3fd55555u};
    for (size_t i = 0; i < sizeof mid / sizeof mid[0]; i++) d[n++] = from_bits(mid[i]);
    for (int r = 0; r < nrand; r++) d[n++] = from_bits(0x3f800000u | (next_random() & 0x7fffffu));
    int64_t checked = 0, total = 0;
    int64_t bad = mrk_verify_div_recip(d, n, 0x3f800000u, 0x3fffffffu, full ? 1u : 61u, &checked);
    total += checked;
    printf("one binade: divisors %d, quotients compared %lld, differing %lld\n", n, (long long)checked, (long long)bad);
    /* whole range [0, b] for divisors across the kernels' range (softmax sums 1..1024, renormalisation
     * sums down to 1/1024): tiny dividends, the real-division lanes and the exponents */
    int m = 0;
    for (int e = -10; e <= 10; e += full ? 1 : 4) {
        d[m++] = ldexpf(1.0f, e);
        if (full) {
            d[m++] = ldexpf(from_bits(0x3fffffffu), e);
            d[m++] = ldexpf(from_bits(0x3f800000u | (next_random() & 0x7fffffu)), e);
        }
    }
    const int64_t bad2 = mrk_verify_div_recip(d, m, 0, 0, full ? 1u : 4099u, &checked);
    total += checked;
    printf("whole range: divisors %d, quotients compared %lld, differing %lld\n", m, (long long)checked, (long long)bad2);
    printf("total compared %lld, differing %lld\n", (long long)total, (long long)(bad + bad2));
    free(d);
    return bad + bad2 != 0;
}
