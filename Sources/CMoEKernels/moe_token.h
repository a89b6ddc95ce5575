/*
 * moe_token.h — the routing contract (shared/ROUTING.md) for one token, in plain C.
 *
 * This is the definition every backend reproduces bit for bit: the generic CPU path runs it
 * directly, the AVX-512 path vectorises the same operations in the same order, and the HIP
 * kernels compile it as device code (define MRK_HD to `__host__ __device__ static inline`).
 *
 * Bit-exactness rules, relied on by every implementation:
 *  - no fused multiply-add (build with -ffp-contract=off; the pragma below says the same);
 *  - exp() is mrk_exp_nonpos below, never a libm call;
 *  - the softmax denominator is summed in 16 strided lanes (lane = expert % 16, ascending), then
 *    the lanes are folded in halves (8, 4, 2, 1);
 *  - the renormalisation sum runs over output columns in order.
 */
#ifndef MOE_TOKEN_H
#define MOE_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#ifndef MRK_HD
#define MRK_HD static inline
#endif

#ifndef __HIPCC__
#pragma STDC FP_CONTRACT OFF
#endif

#define MRK_LOG2E 1.44269504088896341f
#define MRK_LN2_HI 0.693359375f
#define MRK_LN2_LO (-2.12194440e-4f)
#define MRK_ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: adding then subtracting rounds to an integer */
#define MRK_EXP_FLOOR (-104.0f)     /* exp(-104) is below half the smallest subnormal */
#define MRK_MAX_GROUPS_INLINE 1024  /* = MRK_MAX_EXPERTS: G <= E */
#define MRK_MAX_K_INLINE 32         /* = MRK_MAX_TOPK */

MRK_HD float mrk_f32_from_bits(uint32_t u) {
    union { uint32_t u; float f; } v;
    v.u = u;
    return v.f;
}

MRK_HD uint32_t mrk_bits_from_f32(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    return v.u;
}

MRK_HD int mrk_is_finite(float f) { return (mrk_bits_from_f32(f) & 0x7f800000u) != 0x7f800000u; }

MRK_HD float mrk_widen(const void *row, int32_t dtype, int32_t i) {
    if (dtype == 0) return ((const float *)row)[i];
    uint16_t h = ((const uint16_t *)row)[i];
    if (dtype == 1) return mrk_f32_from_bits((uint32_t)h << 16);
    /* fp16 */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return mrk_f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp != 0) return mrk_f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
    /* zero or subnormal: man * 2^-24, exact in fp32 */
    float v = (float)man * 5.9604644775390625e-8f;
    return sign ? -v : v;
}

/* e^t for t <= 0 (or NaN): Cody-Waite reduction, Cephes' degree-6 polynomial summed so that
 * only the final addition rounds, and a two-step power-of-two scale so results in the subnormal
 * range are rounded once. Saturates to 0. *lo_out receives most of the rounding error of the
 * result (result + *lo_out is e^t to about 2^-30 relative), for callers that need more bits. */
MRK_HD float mrk_exp_parts(float t, float *lo_out) {
    if (t != t) {
        *lo_out = 0.0f;
        return t;
    }
    if (t < MRK_EXP_FLOOR) t = MRK_EXP_FLOOR;
    float n = (t * MRK_LOG2E + MRK_ROUND_MAGIC) - MRK_ROUND_MAGIC;
    float r = (t - n * MRK_LN2_HI) - n * MRK_LN2_LO;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    /* 1 + r exactly as hi + lo (Fast2Sum, |r| < 1), so only the last addition rounds */
    float hi = 1.0f + r;
    float lo = ((1.0f - hi) + r) + p * (r * r);
    float e = hi + lo;
    float e_lo = (hi - e) + lo;
    int32_t ni = (int32_t)n;
    int32_t n1 = ni / 2;
    int32_t n2 = ni - n1;
    float s1 = mrk_f32_from_bits((uint32_t)(n1 + 127) << 23);
    float s2 = mrk_f32_from_bits((uint32_t)(n2 + 127) << 23);
    *lo_out = (e_lo * s1) * s2;
    return (e * s1) * s2;
}

MRK_HD float mrk_exp_nonpos(float t) {
    float lo;
    return mrk_exp_parts(t, &lo);
}

/* 1 / (1 + e^-x), on T = e^-|x| so that nothing overflows: one division s0 = (x < 0 ? T : 1) / d
 * with d = 1 + T, then a correction for the rounding of T and of d (de, exact by Fast2Sum). The
 * correction divides by d through an estimate of 1/d (s0 itself, or 1 - s0), plenty for a term
 * 2^-23 the size of the result. Within 2 ulp of fp32 everywhere (tested). */
MRK_HD float mrk_sigmoid_f(float x) {
    float a = x < 0.0f ? -x : x;
    float tl;
    float t = mrk_exp_parts(-a, &tl);
    float d = 1.0f + t;
    float de = (1.0f - d) + t;
    int neg = x < 0.0f;
    float s0 = (neg ? t : 1.0f) / d;
    float cnum = (neg ? tl : 0.0f) - s0 * (de + tl);
    float inv = neg ? 1.0f - s0 : s0;
    return s0 + cnum * inv;
}

/* log(m) for m in [sqrt(1/2), sqrt(2)] (Cephes' logf polynomial on f = m - 1, exact by
 * Sterbenz), plus e * ln 2 for e in {0, 1}; about 1 ulp. */
MRK_HD float mrk_log_reduced(float m, float e) {
    float f = m - 1.0f;
    float z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f;
    y = y * z;
    y = y + e * MRK_LN2_LO;
    y = y - 0.5f * z;
    return (f + y) + e * MRK_LN2_HI;
}

/* sqrt(softplus(x)), softplus(x) = x for x > 20, else log(1 + e^x) (DeepSeek-V4's
 * "sqrtsoftplus"). Within 2 ulp of fp32 everywhere (tested against double precision):
 *  - x > 20: sqrt(x);
 *  - x < -17.5: e^x < 2^-25, so log(1 + e^x) = e^x (1 - e^x/2 ...) and the result is e^(x/2)
 *    to well under an ulp (x/2 is exact), also where e^x itself would be subnormal;
 *  - else with T + tl = e^-|x| (tl: T's rounding error, from mrk_exp_parts):
 *    log1p(T + tl) = log(u) + c / u, u = 1 + T rounded, c = (T - (u - 1)) + tl exactly enough;
 *    log(u) by range reduction to [sqrt(1/2), sqrt(2)]; softplus = max(x, 0) + log1p(...).
 * NaN stays NaN; +inf gives +inf; -inf gives 0. */
MRK_HD float mrk_sqrtsoftplus_f(float x) {
    if (x > 20.0f) return __builtin_sqrtf(x);
    if (x < -17.5f) return mrk_exp_nonpos(0.5f * x);
    float a = x < 0.0f ? -x : x;
    float tl;
    float t = mrk_exp_parts(-a, &tl);
    float u = 1.0f + t;
    float c = (t - (u - 1.0f)) + tl;
    int big = u > 1.41421356f;
    float m = big ? u * 0.5f : u;
    float l = mrk_log_reduced(m, big ? 1.0f : 0.0f) + c / u;
    float sp = x > 0.0f ? x + l : l;
    return __builtin_sqrtf(sp);
}

/* The scoring function of an element-wise scoring (1 sigmoid, 2 sqrtsoftplus, 3 none). */
MRK_HD float mrk_score_elementwise(int32_t scoring, float x) {
    if (scoring == 1) return mrk_sigmoid_f(x);
    if (scoring == 2) return mrk_sqrtsoftplus_f(x);
    return x;
}

/* softmax over n values; non-finite results are left for the caller's clamp. */
MRK_HD void mrk_softmax_row(const float *x, int32_t n, float *out) {
    float m = x[0];
    for (int32_t i = 1; i < n; i++)
        if (x[i] > m) m = x[i];
    float lanes[16];
    for (int32_t l = 0; l < 16; l++) lanes[l] = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        float e = mrk_exp_nonpos(x[i] - m);
        out[i] = e;
        lanes[i & 15] = lanes[i & 15] + e;
    }
    for (int32_t w = 8; w >= 1; w >>= 1)
        for (int32_t l = 0; l < w; l++) lanes[l] = lanes[l] + lanes[l + w];
    float sum = lanes[0];
    for (int32_t i = 0; i < n; i++) out[i] = out[i] / sum;
}

/* Index of the largest finite key among `n`, lowest index on ties; keys equal to -inf are
 * treated as removed. Keys are always finite or -inf here. */
MRK_HD int32_t mrk_argmax(const float *key, int32_t n) {
    int32_t best = -1;
    float bv = -__builtin_inff();
    for (int32_t i = 0; i < n; i++)
        if (key[i] > bv) {
            bv = key[i];
            best = i;
        }
    return best;
}

/* Group score per the method: max (grouped_topk) or sum of the two largest (biased). */
MRK_HD float mrk_group_score(const float *key, int32_t p, int32_t top2) {
    float t1 = -__builtin_inff(), t2 = -__builtin_inff();
    for (int32_t i = 0; i < p; i++) {
        float v = key[i];
        if (v > t1) {
            t2 = t1;
            t1 = v;
        } else if (v > t2) {
            t2 = v;
        }
    }
    return top2 ? t1 + t2 : t1;
}

/* Keeps the Gk best groups (lowest group index on ties) and removes the others' experts from
 * selection by setting their keys to -inf. Consumes `gscore`. */
MRK_HD void mrk_keep_groups(float *gscore, int32_t G, int32_t Gk, int32_t P, float *key) {
    for (int32_t j = 0; j < Gk; j++) {
        int32_t g = mrk_argmax(gscore, G);
        gscore[g] = __builtin_nanf(""); /* kept: NaN is never chosen again */
    }
    for (int32_t g = 0; g < G; g++)
        if (gscore[g] == gscore[g]) /* not kept */
            for (int32_t i = 0; i < P; i++) key[g * P + i] = -__builtin_inff();
}

/* Weights from the unbiased scores of the chosen experts (methods other than topk_softmax and
 * llama4_top1): optional renormalisation (sum in column order; skipped when <= 0, or with
 * eps > 0 always dividing by sum + eps), then rsf. */
MRK_HD void mrk_finish_weights(float *w, int32_t k, int32_t renormalize, float eps, float rsf) {
    if (renormalize) {
        float sum = 0.0f;
        for (int32_t j = 0; j < k; j++) sum = sum + w[j];
        if (eps > 0.0f) { /* MiniMax2: w / (sum + eps), never skipped */
            float d = sum + eps;
            for (int32_t j = 0; j < k; j++) w[j] = w[j] / d;
        } else if (sum > 0.0f) {
            for (int32_t j = 0; j < k; j++) w[j] = w[j] / sum;
        }
    }
    for (int32_t j = 0; j < k; j++) w[j] = w[j] * rsf;
}

/* softmax over the selected logits, which arrive in descending order (key[0] is the max). */
MRK_HD void mrk_selected_softmax(const float *key, int32_t k, float rsf, float *w) {
    float m = key[0];
    float sum = 0.0f;
    for (int32_t j = 0; j < k; j++) {
        w[j] = mrk_exp_nonpos(key[j] - m);
        sum = sum + w[j];
    }
    for (int32_t j = 0; j < k; j++) w[j] = (w[j] / sum) * rsf;
}

/* The weights of the chosen experts, given their keys in output order and the scores. */
MRK_HD void mrk_token_weights(int32_t method, int32_t k, int32_t renormalize, float eps, float rsf,
                              const float *chosen, const float *score, const int32_t *ids,
                              float *w) {
    if (method == 1) {
        mrk_selected_softmax(chosen, k, rsf, w);
    } else if (method == 5) {
        for (int32_t j = 0; j < k; j++) w[j] = mrk_sigmoid_f(chosen[j]) * rsf;
    } else {
        for (int32_t j = 0; j < k; j++) w[j] = score[ids[j]];
        mrk_finish_weights(w, k, renormalize, eps, rsf);
    }
}

/*
 * One token, the generic way. `row` is the token's logits in `dtype`; `score` and `key` are
 * scratch of num_experts floats. Writes top_k weights and ids; returns the number of
 * non-finite inputs in the row.
 */
MRK_HD int32_t mrk_route_token(int32_t method, int32_t scoring, int32_t E, int32_t k, int32_t G,
                               int32_t Gk, int32_t renormalize, float eps, float rsf, const float *bias,
                               const void *row, int32_t dtype, float *score, float *key,
                               float *w_out, int32_t *id_out) {
    int32_t nonfinite = 0;
    for (int32_t i = 0; i < E; i++) {
        score[i] = mrk_widen(row, dtype, i);
        if (!mrk_is_finite(score[i])) nonfinite++;
    }
    const int32_t logit_key = method == 1 || method == 5; /* topk_softmax, llama4_top1 */
    if (logit_key) {
        /* nothing: the key is the logit */
    } else if (scoring == 0) {
        mrk_softmax_row(score, E, score);
    } else {
        for (int32_t i = 0; i < E; i++) score[i] = mrk_score_elementwise(scoring, score[i]);
    }
    for (int32_t i = 0; i < E; i++) {
        if (!mrk_is_finite(score[i])) score[i] = 0.0f;
        key[i] = bias ? score[i] + bias[i] : score[i];
    }

    if ((method == 2 || method == 3) && G > 1) {
        const int32_t P = E / G;
        float gscore[MRK_MAX_GROUPS_INLINE];
        for (int32_t g = 0; g < G; g++) gscore[g] = mrk_group_score(key + g * P, P, method == 3);
        mrk_keep_groups(gscore, G, Gk, P, key);
    }

    float chosen[MRK_MAX_K_INLINE];
    for (int32_t j = 0; j < k; j++) {
        int32_t i = mrk_argmax(key, E);
        id_out[j] = i;
        chosen[j] = key[i];
        key[i] = -__builtin_inff();
    }

    mrk_token_weights(method, k, renormalize, eps, rsf, chosen, score, id_out, w_out);
    return nonfinite;
}

/*
 * One token of a hash-routed layer: ids = table_row (the token's tid2eid row, k expert ids in
 * [0, E), in table order); weights = the layer's scores at those ids (softmax needs the whole
 * row; element-wise scorings read only the k logits), clamped like every score, then
 * renormalisation and rsf as for scored layers. Returns the number of non-finite values in the
 * whole row (reported like every method's; the row is scanned for it). `score` is scratch of E
 * floats (softmax only).
 */
MRK_HD int32_t mrk_hash_token(int32_t scoring, int32_t E, int32_t k, int32_t renormalize, float eps,
                              float rsf, const int32_t *table_row, const void *row, int32_t dtype,
                              float *score, float *w_out, int32_t *id_out) {
    int32_t nonfinite = 0;
    if (scoring == 0) {
        for (int32_t i = 0; i < E; i++) {
            score[i] = mrk_widen(row, dtype, i);
            if (!mrk_is_finite(score[i])) nonfinite++;
        }
        mrk_softmax_row(score, E, score);
        for (int32_t j = 0; j < k; j++) {
            float s = score[table_row[j]];
            w_out[j] = mrk_is_finite(s) ? s : 0.0f;
            id_out[j] = table_row[j];
        }
    } else {
        for (int32_t i = 0; i < E; i++)
            if (!mrk_is_finite(mrk_widen(row, dtype, i))) nonfinite++;
        for (int32_t j = 0; j < k; j++) {
            float s = mrk_score_elementwise(scoring, mrk_widen(row, dtype, table_row[j]));
            w_out[j] = mrk_is_finite(s) ? s : 0.0f;
            id_out[j] = table_row[j];
        }
    }
    mrk_finish_weights(w_out, k, renormalize, eps, rsf);
    return nonfinite;
}

#endif
