/*
 * Dispatch, the generic path, dtype conversions and the non-finite scan.
 *
 * Why C and not Swift SIMD for the kernels: the per-token contract must be one piece of code
 * that the generic CPU path, the AVX-512 path's tests and the HIP kernels all share
 * (moe_token.h), and C lets one portable binary carry an AVX-512 path chosen at run time
 * (target attributes + __builtin_cpu_supports) without unsafe build flags or -target-cpu.
 */
#include "moe_kernels.h"
#include "moe_token.h"

int64_t mrk_route_avx512(const mrk_layer *layer, const void *logits, int32_t dtype,
                         int64_t tokens, float *weights, int32_t *ids);

static size_t dtype_size(int32_t dtype) { return dtype == MRK_DTYPE_FP32 ? 4 : 2; }

static int64_t route_generic(const mrk_layer *L, const void *logits, int32_t dtype,
                             int64_t tokens, float *weights, int32_t *ids) {
    float score[MRK_MAX_EXPERTS], key[MRK_MAX_EXPERTS];
    const size_t row_bytes = (size_t)L->num_experts * dtype_size(dtype);
    int64_t nonfinite = 0;
    for (int64_t t = 0; t < tokens; t++) {
        const void *row = (const char *)logits + (size_t)t * row_bytes;
        nonfinite += mrk_route_token(L->method, L->scoring, L->num_experts, L->top_k,
                                     L->num_groups, L->topk_group, L->renormalize,
                                     L->routed_scaling_factor, L->bias, row, dtype, score, key,
                                     weights + t * L->top_k, ids + t * L->top_k);
    }
    return nonfinite;
}

int32_t mrk_impl_supported(int32_t impl) {
    switch (impl) {
    case MRK_IMPL_GENERIC: return 1;
    case MRK_IMPL_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("bmi2");
    default: return 0;
    }
}

int32_t mrk_best_impl(void) {
    return mrk_impl_supported(MRK_IMPL_AVX512) ? MRK_IMPL_AVX512 : MRK_IMPL_GENERIC;
}

const char *mrk_impl_name(int32_t impl) {
    switch (impl) {
    case MRK_IMPL_GENERIC: return "generic";
    case MRK_IMPL_AVX512: return "avx512";
    default: return "unknown";
    }
}

int64_t mrk_route(const mrk_layer *layer, const void *logits, int32_t dtype, int64_t tokens,
                  float *weights, int32_t *ids, int32_t impl) {
    if (impl == MRK_IMPL_AVX512)
        return mrk_route_avx512(layer, logits, dtype, tokens, weights, ids);
    return route_generic(layer, logits, dtype, tokens, weights, ids);
}

int64_t mrk_scan_nonfinite(const void *logits, int32_t dtype, int64_t experts, int64_t tokens,
                           int64_t *count) {
    int64_t first = -1, n = 0;
    const size_t row_bytes = (size_t)experts * dtype_size(dtype);
    for (int64_t t = 0; t < tokens; t++) {
        const void *row = (const char *)logits + (size_t)t * row_bytes;
        int64_t in_row = 0;
        if (dtype == MRK_DTYPE_FP32) {
            const uint32_t *u = row;
            for (int64_t i = 0; i < experts; i++) in_row += (u[i] & 0x7f800000u) == 0x7f800000u;
        } else {
            const uint16_t mask = dtype == MRK_DTYPE_BF16 ? 0x7f80u : 0x7c00u;
            const uint16_t *u = row;
            for (int64_t i = 0; i < experts; i++) in_row += (u[i] & mask) == mask;
        }
        if (in_row && first < 0) first = t;
        n += in_row;
    }
    *count = n;
    return first;
}

float mrk_bf16_to_f32(uint16_t bits) { return mrk_f32_from_bits((uint32_t)bits << 16); }

uint16_t mrk_f32_to_bf16(float value) {
    uint32_t u = mrk_bits_from_f32(value);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float mrk_f16_to_f32(uint16_t bits) { return mrk_widen(&bits, MRK_DTYPE_FP16, 0); }

uint16_t mrk_f32_to_f16(float value) {
    uint32_t u = mrk_bits_from_f32(value);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((a >> 13) & 0x3ffu); /* quiet NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00u; /* rounds to or beyond 65520: infinity */
    if (a >= 0x38800000u) {                       /* normal in fp16 (>= 2^-14) */
        uint32_t r = a - (112u << 23);            /* rebias the exponent */
        r += 0xfffu + ((r >> 13) & 1u);           /* round to nearest even at bit 13 */
        return sign | (uint16_t)(r >> 13);
    }
    if (a < 0x33000001u) return sign; /* at or below half the smallest subnormal (2^-25): zero */
    /* subnormal result: shift the full significand right, round to nearest even */
    uint32_t e = a >> 23;
    uint32_t man = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14..24 for e in 102..112 */
    uint32_t half = 1u << (shift - 1);
    uint32_t rest = man & ((1u << shift) - 1u);
    uint32_t q = man >> shift;
    if (rest > half || (rest == half && (q & 1u))) q++;
    return sign | (uint16_t)q;
}

float mrk_exp_nonpositive(float t) { return mrk_exp_nonpos(t); }
float mrk_sigmoid(float x) { return mrk_sigmoid_f(x); }
