/*
 * Dispatch, the generic path, dtype conversions, the non-finite scan and sharded counters.
 *
 * Why C and not Swift SIMD for the kernels: the per-token contract must be one piece of code
 * that the generic CPU path, the AVX-512 path's tests and the HIP kernels all share
 * (moe_token.h), and C lets one portable binary carry an AVX-512 path chosen at run time
 * (target attributes + __builtin_cpu_supports) without unsafe build flags or -target-cpu.
 */
#include <pthread.h>

#include "moe_kernels.h"
#include "moe_token.h"

int64_t mrk_route_avx512(const mrk_layer *layer, const void *logits, int32_t dtype,
                         int64_t tokens, float *weights, int32_t *ids);
int64_t mrk_hash_avx512(const mrk_layer *layer, const void *logits, int32_t dtype, int64_t tokens,
                        const uint8_t *mask, const void *token_ids, int32_t token_id_bytes,
                        float *weights, int32_t *ids);

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
                                     L->renorm_epsilon, L->routed_scaling_factor, L->bias, row,
                                     dtype, score, key, weights + t * L->top_k,
                                     ids + t * L->top_k);
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

/* The AVX-512 path covers every layer (every method, scoring and renorm_epsilon). */
int64_t mrk_route(const mrk_layer *layer, const void *logits, int32_t dtype, int64_t tokens,
                  float *weights, int32_t *ids, int32_t impl) {
    if (impl == MRK_IMPL_AVX512)
        return mrk_route_avx512(layer, logits, dtype, tokens, weights, ids);
    return route_generic(layer, logits, dtype, tokens, weights, ids);
}

static int64_t token_id_at(const void *token_ids, int32_t bytes, int64_t t) {
    if (bytes == 8) return ((const int64_t *)token_ids)[t];
    return ((const int32_t *)token_ids)[t];
}

/* The generic path of a hash-routed layer is mrk_hash_token per token (the definition); the
 * AVX-512 one (avx512_hash.c) reproduces it. */
static int64_t route_hash(const mrk_layer *L, const void *logits, int32_t dtype, int64_t tokens,
                          const uint8_t *mask, const void *token_ids, int32_t token_id_bytes,
                          float *weights, int32_t *ids, int32_t impl) {
    if (impl == MRK_IMPL_AVX512)
        return mrk_hash_avx512(L, logits, dtype, tokens, mask, token_ids, token_id_bytes, weights, ids);
    float score[MRK_MAX_EXPERTS];
    const int32_t E = L->num_experts, k = L->top_k;
    const size_t row_bytes = (size_t)E * dtype_size(dtype);
    int64_t nonfinite = 0;
    for (int64_t t = 0; t < tokens; t++) {
        if (mask && mask[t]) continue;
        const int64_t tid = token_id_at(token_ids, token_id_bytes, t);
        nonfinite += mrk_hash_token(L->scoring, E, k, L->renormalize, L->renorm_epsilon,
                                    L->routed_scaling_factor, L->tid2eid + tid * k,
                                    (const char *)logits + (size_t)t * row_bytes, dtype, score,
                                    weights + t * k, ids + t * k);
    }
    return nonfinite;
}

int64_t mrk_route_ex(const mrk_layer *layer, const void *logits, int32_t dtype, int64_t tokens,
                     const uint8_t *mask, const void *token_ids, int32_t token_id_bytes,
                     float *weights, int32_t *ids, int32_t impl) {
    const int32_t k = layer->top_k;
    if (mask)
        for (int64_t t = 0; t < tokens; t++)
            if (mask[t])
                for (int32_t j = 0; j < k; j++) {
                    weights[t * k + j] = 0.0f;
                    ids[t * k + j] = -1;
                }
    if (layer->tid2eid)
        return route_hash(layer, logits, dtype, tokens, mask, token_ids, token_id_bytes, weights,
                          ids, impl);
    if (!mask) return mrk_route(layer, logits, dtype, tokens, weights, ids, impl);
    /* runs of unmasked rows, each routed as one batch */
    const size_t row_bytes = (size_t)layer->num_experts * dtype_size(dtype);
    int64_t nonfinite = 0;
    for (int64_t t = 0; t < tokens;) {
        if (mask[t]) {
            t++;
            continue;
        }
        int64_t end = t + 1;
        while (end < tokens && !mask[end]) end++;
        nonfinite += mrk_route(layer, (const char *)logits + (size_t)t * row_bytes, dtype, end - t,
                               weights + t * k, ids + t * k, impl);
        t = end;
    }
    return nonfinite;
}

int64_t mrk_check_mask(const uint8_t *mask, int64_t tokens, int64_t *masked) {
    int64_t n = 0;
    for (int64_t t = 0; t < tokens; t++) {
        if (mask[t] > 1) {
            *masked = n;
            return t;
        }
        n += mask[t];
    }
    *masked = n;
    return -1;
}

int64_t mrk_check_token_ids(const void *token_ids, int32_t token_id_bytes, int64_t tokens,
                            int64_t vocab, const uint8_t *mask, int64_t *value) {
    for (int64_t t = 0; t < tokens; t++) {
        if (mask && mask[t]) continue;
        const int64_t v = token_id_at(token_ids, token_id_bytes, t);
        if (v < 0 || v >= vocab) {
            *value = v;
            return t;
        }
    }
    *value = 0;
    return -1;
}

/* The ids may lie in a client's shared memory, which the client can rewrite while we read them:
 * each is loaded once (a relaxed atomic load the compiler cannot repeat) and one outside
 * [0, num_experts) is skipped like a masked row's -1, so a rewrite never indexes outside the
 * counters or the placement tables. */
static inline int32_t id_once(const int32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/* Histogram slot of ids[i]: id + 1 for an id in [0, slots), else 0 (a compare and a select). */
static inline uint32_t slot_of(const int32_t *ids, int64_t i, uint32_t slots) {
    const uint32_t s = (uint32_t)id_once(&ids[i]) + 1u;
    return s <= slots ? s : 0u;
}

void mrk_place_and_count(int32_t *ids, int64_t tokens, int32_t k, int64_t t0,
                         const int32_t *offsets, const int32_t *replicas, uint64_t *counts,
                         int32_t num_experts) {
    const int64_t n = tokens * k;
    if (counts) {
        /* the calling thread's row (sharded counters, below) */
        const int32_t shard = mrk_thread_shard();
        uint64_t *row = counts + shard * mrk_counts_stride(num_experts);
        if (n * 4 < num_experts) {
            for (int64_t i = 0; i < n; i++) {
                const int32_t e = id_once(&ids[i]);
                if (e >= 0 && e < num_experts) mrk_row_add(&row[e], shard, 1);
            }
        } else {
            /* Four local histograms, ids taken in turn: an increment then rarely waits for the
             * previous one to the same counter (a store-to-load chain). Slot 0 of each takes the
             * -1 of masked rows (and any id out of range), so the loop has no branch. */
            uint32_t local[4][MRK_MAX_EXPERTS + 1];
            const uint32_t slots = (uint32_t)num_experts;
            for (int32_t h = 0; h < 4; h++)
                for (int32_t e = 0; e <= num_experts; e++) local[h][e] = 0;
            for (int64_t base = 0; base < n;) {
                /* at most 2^32 - 1 per pass, so a local counter cannot wrap */
                const int64_t end = n - base > 0xffffffffLL ? base + 0xffffffffLL : n;
                int64_t i = base;
                for (; i + 4 <= end; i += 4) {
                    local[0][slot_of(ids, i, slots)]++;
                    local[1][slot_of(ids, i + 1, slots)]++;
                    local[2][slot_of(ids, i + 2, slots)]++;
                    local[3][slot_of(ids, i + 3, slots)]++;
                }
                for (; i < end; i++) local[0][slot_of(ids, i, slots)]++;
                for (int32_t e = 0; e < num_experts; e++) {
                    const uint64_t sum = (uint64_t)local[0][e + 1] + local[1][e + 1] + local[2][e + 1] + local[3][e + 1];
                    if (sum) mrk_row_add(&row[e], shard, sum);
                }
                for (int32_t h = 0; h < 4; h++)
                    for (int32_t e = 0; e <= num_experts; e++) local[h][e] = 0;
                base = end;
            }
        }
    }
    if (!offsets) return;
    for (int64_t t = 0; t < tokens; t++) {
        int32_t *row = ids + t * k;
        const uint64_t tok = (uint64_t)(t0 + t);
        for (int32_t j = 0; j < k; j++) {
            const int32_t e = id_once(&row[j]);
            if (e < 0 || e >= num_experts) continue;
            const int32_t first = offsets[e], count = offsets[e + 1] - first;
            row[j] = replicas[first + (int32_t)(tok % (uint64_t)count)];
        }
    }
}

void mrk_counts_load(const uint64_t *counts, uint64_t *out, int32_t n) {
    const int64_t stride = mrk_counts_stride(n);
    for (int32_t i = 0; i < n; i++) out[i] = mrk_sharded_sum(&counts[i], stride);
}

int64_t mrk_scan_nonfinite(const void *logits, int32_t dtype, int64_t experts, int64_t tokens,
                           int64_t *count) {
    return mrk_scan_nonfinite_masked(logits, dtype, experts, tokens, NULL, count);
}

int64_t mrk_scan_nonfinite_masked(const void *logits, int32_t dtype, int64_t experts,
                                  int64_t tokens, const uint8_t *mask, int64_t *count) {
    int64_t first = -1, n = 0;
    const size_t row_bytes = (size_t)experts * dtype_size(dtype);
    for (int64_t t = 0; t < tokens; t++) {
        if (mask && mask[t]) continue;
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
float mrk_sqrtsoftplus(float x) { return mrk_sqrtsoftplus_f(x); }

/* ---- Per-thread counter rows (mrk_thread_shard, moe_kernels.h) ----
 *
 * A counter that every request bumps from whichever thread serves it (STATS, the per-expert
 * loads) cost a locked add per increment: ~5 ns each here, 13 of them on a 1-token route. Each
 * thread instead takes a row of its own while it lives and bumps it with a plain load and
 * store (no other thread writes that row); readers add the rows up. Rows are few, so a thread
 * that finds none free shares the last one, with atomic adds as before.
 */

__thread int32_t mrk_shard_of_thread = -1;

/* Bit i set: row i (< MRK_SHARDS - 1) is free. */
static uint32_t free_rows = (1u << (MRK_SHARDS - 1)) - 1;
static pthread_key_t row_key;
static pthread_once_t row_key_once = PTHREAD_ONCE_INIT;

/* A thread's exit gives its row back (the value is row + 1: a NULL value runs no destructor).
 * The row keeps its counts: the next owner goes on adding to them. */
static void give_back(void *value) {
    const uint32_t row = (uint32_t)(uintptr_t)value - 1;
    __atomic_fetch_or(&free_rows, 1u << row, __ATOMIC_RELEASE);
}

static void make_key(void) {
    if (pthread_key_create(&row_key, give_back) != 0) free_rows = 0; /* no way back: all share */
}

int32_t mrk_shard_take(void) {
    pthread_once(&row_key_once, make_key);
    uint32_t rows = __atomic_load_n(&free_rows, __ATOMIC_RELAXED);
    for (;;) {
        if (rows == 0) return mrk_shard_of_thread = MRK_SHARDS - 1;
        const uint32_t row = (uint32_t)__builtin_ctz(rows);
        if (__atomic_compare_exchange_n(&free_rows, &rows, rows & ~(1u << row), 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED)) {
            if (pthread_setspecific(row_key, (void *)(uintptr_t)(row + 1)) != 0) {
                give_back((void *)(uintptr_t)(row + 1));
                return mrk_shard_of_thread = MRK_SHARDS - 1;
            }
            return mrk_shard_of_thread = (int32_t)row;
        }
    }
}

uint64_t mrk_sharded_sum(const uint64_t *first, int64_t stride) {
    uint64_t sum = 0;
    for (int32_t r = 0; r < MRK_SHARDS; r++) sum += __atomic_load_n(&first[r * stride], __ATOMIC_RELAXED);
    return sum;
}
