/*
 * route_kernels.h — the routing kernels of the GPU backend (HIP, CUDA, host emulation) and the
 * launch that picks one for a layer.
 *
 * The team kernel routes one token with a team of 16 lanes. Lane l holds experts l, l + 16,
 * l + 32, ... in registers: exactly the contract's 16 softmax summation lanes
 * (Sources/CMoEKernels/moe_token.h), so the softmax denominator is summed in the contract's
 * order and folded across lanes in its order (8, 4, 2, 1). 16 divides every warp size (32 on
 * NVIDIA and RDNA, 64 on CDNA), so a team never straddles a warp and the same source serves both:
 * a wave64 holds four tokens, a warp32 two. Group scores, group selection and the top-k are
 * reductions over packed (value, index) keys by xor shuffles within the team; the scalar math
 * (widening, exp, sigmoid, clamping, the weight formulas) is moe_token.h's own, so the results
 * are the CPU backend's bit for bit.
 *
 * The thread-per-token kernel runs mrk_route_token itself, scratch in private memory. It serves
 * the layers the team kernel does not (more than kMaxTeamGroups groups) and is the baseline that
 * rocm/check/kernel_timing.cpp measures the team kernel against.
 *
 * The hash kernel routes hash-routed layers (DeepSeek-V4's tid2eid) with the same teams: the
 * row's non-finite count and, for softmax scoring, the softmax as the team kernel computes them;
 * the ids from the table; the weights as mrk_hash_token computes them.
 *
 * Padding masks (mask byte 1): the token's ids are -1 and its weights 0, its logits and token id
 * are never read and its non-finite values are not counted. In the team kernels a masked team
 * still meets its warp's collectives, with no live slots (every value it holds is a constant).
 *
 * The inputs may be a client's shared memory, mapped for the device (mrh_route_mapped), which the
 * client can rewrite while the kernel runs. The host checks masks and token ids before the launch;
 * the kernels stay memory-safe whatever they read afterwards: each logit, mask byte and token id
 * is read once into a register (read_once for those that choose an address), and a token id
 * outside the table routes the row nowhere (ids -1, weights 0). A changed value can change the
 * answer, never what memory is read.
 */
#ifndef MRH_ROUTE_KERNELS_H
#define MRH_ROUTE_KERNELS_H

#include "hip_compat.h"

#define MRK_HD __host__ __device__ static inline
#include "moe_kernels.h"
#include "moe_token.h"

namespace mrh {

struct LayerParams {
    int32_t method, scoring, num_experts, top_k, num_groups, topk_group, renormalize;
    float rsf;
    float eps; /* renorm_epsilon: 0, the contract's renormalisation; > 0, w / (sum + eps) */
};

constexpr int kTeamLanes = 16;    /* lanes per token: the contract's softmax summation lanes */
constexpr int kTeamsPerBlock = 8; /* tokens per block of the team kernel (128 threads), or fewer
                                     when the batch is smaller */
constexpr int kTeamBlockThreads = kTeamLanes * kTeamsPerBlock;
constexpr int kMaxTeamGroups = 4 * kTeamLanes; /* group scores a team keeps: 4 per lane */
constexpr int kThreadBlockThreads = 64; /* thread-per-token kernel: one wavefront on CDNA */
static_assert(MRH_WARP_SIZE % kTeamLanes == 0, "a team must not straddle a warp");
static_assert(MRK_MAX_EXPERTS <= 64 * kTeamLanes, "a lane's experts must fit a 64-bit slot mask");

/* ---- Selection keys ----------------------------------------------------------------------
 * An order-preserving image of the value in the high 32 bits and the complemented index in the
 * low 32, so that the largest key holds the largest value and, among equal values, the lowest
 * index: the contract's tie rule, in one unsigned comparison. Both zeros map to +0's image since
 * the contract compares values (-0 == +0); no consumer of a chosen value can tell them apart
 * (it is subtracted from or added to, or fed to a sigmoid that is even in the sign of zero).
 * Key 0 is below every value's key, including -inf's: "no candidate". */
typedef unsigned long long SelectKey;

__device__ inline uint32_t ordered_bits(float v) {
    const uint32_t u = mrk_bits_from_f32(v == 0.0f ? 0.0f : v);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

__device__ inline SelectKey select_key(float v, int32_t index) {
    return (SelectKey)ordered_bits(v) << 32 | (uint32_t)~index;
}

__device__ inline int32_t key_index(SelectKey k) { return (int32_t) ~(uint32_t)k; }

__device__ inline float key_value(SelectKey k) {
    const uint32_t o = (uint32_t)(k >> 32);
    return mrk_f32_from_bits((o & 0x80000000u) ? o & 0x7fffffffu : ~o);
}

/* A mask byte or token id that may change under us: one load the compiler cannot repeat after the
 * range check that uses it. */
template <class T> __device__ inline T read_once(const T *p) { return *(const volatile T *)p; }

/* ---- Team reductions (every lane ends with the team's result) ----------------------------- */

/* The team's largest key, or largest value (values are never NaN here; -inf when none). */
template <class T> __device__ inline T team_max(T v) {
    for (int m = kTeamLanes / 2; m >= 1; m >>= 1) {
        const T other = mrh_shfl_xor(v, m, kTeamLanes);
        v = other > v ? other : v;
    }
    return v;
}

__device__ inline int32_t team_sum(int32_t n) {
    for (int m = kTeamLanes / 2; m >= 1; m >>= 1) n += mrh_shfl_xor(n, m, kTeamLanes);
    return n;
}

/* The contract's fold of its 16 lane sums (halves 8, 4, 2, 1): lane l adds lane l ^ m, which for
 * l < m is the contract's lanes[l] + lanes[l + m], and for l >= m the same two values the other
 * way round — equal, fp32 addition commutes. Every lane ends with the contract's lanes[0]. */
__device__ inline float team_fold_sum(float lane_sum) {
    for (int m = kTeamLanes / 2; m >= 1; m >>= 1)
        lane_sum = lane_sum + mrh_shfl_xor(lane_sum, m, kTeamLanes);
    return lane_sum;
}

/* The two largest values of a multiset (t1 >= t2), as mrk_group_score keeps them; -inf pads. */
struct TopTwo {
    float t1, t2;
};

__device__ inline TopTwo top_two_insert(TopTwo t, float v) {
    if (v > t.t1) return {v, t.t1};
    if (v > t.t2) t.t2 = v;
    return t;
}

/* Merges the team's multisets; exact whatever the order, since only values are kept. */
__device__ inline TopTwo team_top_two(TopTwo t) {
    for (int m = kTeamLanes / 2; m >= 1; m >>= 1) {
        const SelectKey packed = (SelectKey)mrk_bits_from_f32(t.t1) << 32 | mrk_bits_from_f32(t.t2);
        const SelectKey other = mrh_shfl_xor(packed, m, kTeamLanes);
        const float o1 = mrk_f32_from_bits((uint32_t)(other >> 32));
        const float o2 = mrk_f32_from_bits((uint32_t)other);
        t = top_two_insert(top_two_insert(t, o1), o2);
    }
    return t;
}

/* ---- One token in a team ------------------------------------------------------------------
 * SLOTS is the number of experts a lane holds (a bucket >= ceil(E / 16)); slot s of lane l is
 * expert s * 16 + l. A 64-bit mask `live` says which slots are still candidates. */

/* The best candidate key among this lane's live slots (0 when none). */
template <int SLOTS>
__device__ inline SelectKey lane_best(const float (&key)[SLOTS], uint64_t live, int lane) {
    SelectKey best = 0;
#pragma unroll
    for (int s = 0; s < SLOTS; s++)
        if (live >> s & 1) {
            const SelectKey c = select_key(key[s], s * kTeamLanes + lane);
            best = c > best ? c : best;
        }
    return best;
}

/* This lane's slots holding experts [lo, hi). */
template <int SLOTS>
__device__ inline uint64_t slots_in_range(int lane, int lo, int hi) {
    uint64_t m = 0;
#pragma unroll
    for (int s = 0; s < SLOTS; s++) {
        const int i = s * kTeamLanes + lane;
        if (i >= lo && i < hi) m |= 1ull << s;
    }
    return m;
}

/* Widens the token's logits into x; returns how many of this lane's are not finite. */
template <int SLOTS>
__device__ inline int32_t load_row(const void *row, int32_t dtype, int lane, uint64_t live, float (&x)[SLOTS]) {
    int32_t nonfinite = 0;
#pragma unroll
    for (int s = 0; s < SLOTS; s++) {
        x[s] = 0.0f;
        if (live >> s & 1) {
            x[s] = mrk_widen(row, dtype, s * kTeamLanes + lane);
            nonfinite += !mrk_is_finite(x[s]);
        }
    }
    return nonfinite;
}

/* mrk_softmax_row across the team, in place. Its max skips NaNs except x[0]; whether the max is
 * NaN when x[0] is never shows: a NaN anywhere makes the sum, hence every score, NaN. */
template <int SLOTS>
__device__ inline void team_softmax(float (&x)[SLOTS], uint64_t live) {
    float m = -__builtin_inff();
#pragma unroll
    for (int s = 0; s < SLOTS; s++)
        if ((live >> s & 1) && x[s] > m) m = x[s];
    m = team_max(m);
    float lane_sum = 0.0f; /* the contract's lanes[lane]: this lane's experts in ascending order */
#pragma unroll
    for (int s = 0; s < SLOTS; s++)
        if (live >> s & 1) {
            x[s] = mrk_exp_nonpos(x[s] - m);
            lane_sum = lane_sum + x[s];
        }
    const float sum = team_fold_sum(lane_sum);
#pragma unroll
    for (int s = 0; s < SLOTS; s++)
        if (live >> s & 1) x[s] = x[s] / sum;
}

/* mrk_group_score + mrk_keep_groups across the team: returns the mask of this lane's slots in
 * the Gk best groups (lowest group index on ties). Group g's score is kept by lane g % 16 in
 * gscore[g / 16]; G <= kMaxTeamGroups. */
template <int SLOTS>
__device__ inline uint64_t kept_group_slots(const float (&key)[SLOTS], uint64_t live, int lane, int E,
                                            int G, int Gk, bool top2) {
    const int P = E / G;
    constexpr int kGroupSlots = kMaxTeamGroups / kTeamLanes;
    float gscore[kGroupSlots] = {};
    for (int g = 0; g < G; g++) {
        const uint64_t in_group = live & slots_in_range<SLOTS>(lane, g * P, (g + 1) * P);
        TopTwo t = {-__builtin_inff(), -__builtin_inff()};
#pragma unroll
        for (int s = 0; s < SLOTS; s++)
            if (in_group >> s & 1) t = top_two_insert(t, key[s]);
        t = team_top_two(t);
        if (g % kTeamLanes == lane) {
#pragma unroll
            for (int q = 0; q < kGroupSlots; q++)
                if (q == g / kTeamLanes) gscore[q] = top2 ? t.t1 + t.t2 : t.t1;
        }
    }
    uint64_t group_live = 0;
#pragma unroll
    for (int q = 0; q < kGroupSlots; q++)
        if (q * kTeamLanes + lane < G) group_live |= 1ull << q;
    SelectKey mine = lane_best(gscore, group_live, lane);
    uint64_t kept = 0;
    for (int j = 0; j < Gk; j++) {
        const int g = key_index(team_max(mine));
        if (g % kTeamLanes == lane) {
            group_live &= ~(1ull << (g / kTeamLanes));
            mine = lane_best(gscore, group_live, lane);
        }
        kept |= slots_in_range<SLOTS>(lane, g * P, (g + 1) * P);
    }
    return kept;
}

/* w from the chosen keys (output order) and the chosen experts' unbiased scores: the dispatch
 * of mrk_token_weights, with the scores already gathered from their lanes. */
__device__ inline void team_weights(const LayerParams &p, const float *chosen, const float *picked, float *w) {
    if (p.method == MRK_TOPK_SOFTMAX) {
        mrk_selected_softmax(chosen, p.top_k, p.rsf, w);
    } else if (p.method == MRK_LLAMA4_TOP1) {
        for (int32_t j = 0; j < p.top_k; j++) w[j] = mrk_sigmoid_f(chosen[j]) * p.rsf;
    } else {
        for (int32_t j = 0; j < p.top_k; j++) w[j] = picked[j];
        mrk_finish_weights(w, p.top_k, p.renormalize, p.eps, p.rsf);
    }
}

/* The token's scores (mrk_route_token's first half: widen, score, clamp) and selection keys
 * (score + bias); returns how many of this lane's inputs are not finite. */
template <int SLOTS>
__device__ inline int32_t score_row(const LayerParams &p, const float *bias, const void *row, int32_t dtype,
                                    int lane, uint64_t live, float (&score)[SLOTS], float (&key)[SLOTS]) {
    const int32_t nonfinite = load_row(row, dtype, lane, live, score);
    const bool logit_key = p.method == MRK_TOPK_SOFTMAX || p.method == MRK_LLAMA4_TOP1;
    if (!logit_key) {
        if (p.scoring == MRK_SCORING_SOFTMAX) {
            team_softmax(score, live);
        } else {
#pragma unroll
            for (int s = 0; s < SLOTS; s++)
                if (live >> s & 1) score[s] = mrk_score_elementwise(p.scoring, score[s]);
        }
    }
#pragma unroll
    for (int s = 0; s < SLOTS; s++) {
        if (!mrk_is_finite(score[s])) score[s] = 0.0f;
        key[s] = score[s];
        if (bias && (live >> s & 1)) key[s] = score[s] + bias[s * kTeamLanes + lane];
    }
    return nonfinite;
}

/* The top-k of the live keys, in output order: chosen[j] = key, ids[j] = expert and, when
 * `with_scores`, picked[j] = the expert's unbiased score. Each round the team's best key is the
 * next column; its lane drops it and finds its next best. */
template <int SLOTS>
__device__ inline void select_top_k(int k, const float (&key)[SLOTS], const float (&score)[SLOTS], uint64_t live,
                                    int lane, bool with_scores, float *chosen, int32_t *ids, float *picked) {
    SelectKey mine = lane_best(key, live, lane);
    for (int j = 0; j < k; j++) {
        const SelectKey best = team_max(mine);
        const int32_t id = key_index(best);
        const int owner = id % kTeamLanes;
        float score_of_id = 0.0f;
        if (lane == owner) {
#pragma unroll
            for (int s = 0; s < SLOTS; s++)
                if (s == id / kTeamLanes) score_of_id = score[s];
            live &= ~(1ull << (id / kTeamLanes));
            mine = lane_best(key, live, lane);
        }
        chosen[j] = key_value(best);
        ids[j] = id;
        if (with_scores) picked[j] = mrh_shfl(score_of_id, owner, kTeamLanes);
    }
}

/* The ids -1 and weights 0 of a masked token, by a team's lanes. */
__device__ inline void write_masked(int32_t k, int lane, int64_t t, float *weights, int32_t *ids) {
    for (int j = lane; j < k; j += kTeamLanes) {
        weights[t * k + j] = 0.0f;
        ids[t * k + j] = -1;
    }
}

template <int SLOTS>
__global__ void __launch_bounds__(kTeamBlockThreads)
route_team_kernel(LayerParams p, const float *bias, const void *logits, int32_t dtype, int64_t tokens,
                  const uint8_t *mask, float *weights, int32_t *ids, unsigned long long *nonfinite) {
    const int lane = (int)(threadIdx.x % kTeamLanes);
    const int64_t token = (int64_t)blockIdx.x * (blockDim.x / kTeamLanes) + threadIdx.x / kTeamLanes;
    /* A spare team (past the last token) routes the last token again and writes nothing, so
     * every lane of a warp reaches every shuffle. */
    const bool writes = token < tokens;
    const int64_t t = writes ? token : tokens - 1;
    const bool masked = mask && read_once(mask + t);
    const size_t row_bytes = (size_t)p.num_experts * (dtype == MRK_DTYPE_FP32 ? 4 : 2);
    const void *row = (const char *)logits + (size_t)t * row_bytes;

    uint64_t live = masked ? 0 : slots_in_range<SLOTS>(lane, 0, p.num_experts);
    float score[SLOTS], key[SLOTS];
    const int32_t lane_nonfinite = score_row(p, bias, row, dtype, lane, live, score, key);
    if ((p.method == MRK_GROUPED_TOPK || p.method == MRK_BIASED_GROUPED_TOPK) && p.num_groups > 1)
        live &= kept_group_slots(key, live, lane, p.num_experts, p.num_groups, p.topk_group,
                                 p.method == MRK_BIASED_GROUPED_TOPK);

    float chosen[MRK_MAX_TOPK], picked[MRK_MAX_TOPK], w[MRK_MAX_TOPK];
    int32_t chosen_id[MRK_MAX_TOPK];
    const bool weights_from_scores = p.method != MRK_TOPK_SOFTMAX && p.method != MRK_LLAMA4_TOP1;
    select_top_k(p.top_k, key, score, live, lane, weights_from_scores, chosen, chosen_id, picked);
    team_weights(p, chosen, picked, w);
    const int32_t token_nonfinite = team_sum(lane_nonfinite);

    if (!writes) return;
    if (masked) return write_masked(p.top_k, lane, t, weights, ids);
    for (int j = lane; j < p.top_k; j += kTeamLanes) {
        weights[t * p.top_k + j] = w[j];
        ids[t * p.top_k + j] = chosen_id[j];
    }
    if (lane == 0 && token_nonfinite) atomicAdd(nonfinite, (unsigned long long)token_nonfinite);
}

/* ---- Hash-routed layers (a team per token) ------------------------------------------------- */

__device__ inline int64_t token_id_at(const void *token_ids, int32_t bytes, int64_t t) {
    return bytes == 8 ? read_once((const int64_t *)token_ids + t) : (int64_t)read_once((const int32_t *)token_ids + t);
}

/* mrk_hash_token across a team: ids = the token's tid2eid row (its entries in [0, E), checked at
 * layer creation); each column's score from the lane holding that expert's logit (the team's
 * softmax, or the element-wise scoring of the logit), clamped; then mrk_finish_weights on every
 * lane. The token id was checked against vocab by the host; one found outside it now (a client
 * rewrote mapped memory since) makes the row a masked one. */
template <int SLOTS>
__global__ void __launch_bounds__(kTeamBlockThreads)
route_hash_team_kernel(LayerParams p, const int32_t *tid2eid, int64_t vocab, const void *logits, int32_t dtype,
                       int64_t tokens, const uint8_t *mask, const void *token_ids, int32_t token_id_bytes,
                       float *weights, int32_t *ids, unsigned long long *nonfinite) {
    const int lane = (int)(threadIdx.x % kTeamLanes);
    const int64_t token = (int64_t)blockIdx.x * (blockDim.x / kTeamLanes) + threadIdx.x / kTeamLanes;
    const bool writes = token < tokens; /* spare teams: as in route_team_kernel */
    const int64_t t = writes ? token : tokens - 1;
    const bool padding = mask && read_once(mask + t);
    const int64_t id = padding ? 0 : token_id_at(token_ids, token_id_bytes, t);
    const bool masked = padding || id < 0 || id >= vocab;
    const size_t row_bytes = (size_t)p.num_experts * (dtype == MRK_DTYPE_FP32 ? 4 : 2);
    const void *row = (const char *)logits + (size_t)t * row_bytes;
    const int32_t k = p.top_k;
    const int32_t *table_row = masked ? nullptr : tid2eid + id * k;

    const uint64_t live = masked ? 0 : slots_in_range<SLOTS>(lane, 0, p.num_experts);
    float x[SLOTS];
    const int32_t lane_nonfinite = load_row(row, dtype, lane, live, x);
    const bool softmax = p.scoring == MRK_SCORING_SOFTMAX;
    if (softmax) team_softmax(x, live);
    float w[MRK_MAX_TOPK];
    for (int32_t j = 0; j < k; j++) {
        const int32_t e = masked ? 0 : table_row[j];
        float held = 0.0f;
#pragma unroll
        for (int q = 0; q < SLOTS; q++)
            if (q == e / kTeamLanes) held = x[q];
        /* the logit (or softmax score) as its lane loaded it: the row is read once */
        const float v = mrh_shfl(held, e % kTeamLanes, kTeamLanes);
        const float s = softmax ? v : mrk_score_elementwise(p.scoring, v);
        w[j] = mrk_is_finite(s) ? s : 0.0f;
    }
    mrk_finish_weights(w, k, p.renormalize, p.eps, p.rsf);
    const int32_t token_nonfinite = team_sum(lane_nonfinite);

    if (!writes) return;
    if (masked) return write_masked(k, lane, t, weights, ids);
    for (int j = lane; j < k; j += kTeamLanes) {
        weights[t * k + j] = w[j];
        ids[t * k + j] = table_row[j];
    }
    if (lane == 0 && token_nonfinite) atomicAdd(nonfinite, (unsigned long long)token_nonfinite);
}

/* ---- One token per thread ----------------------------------------------------------------- */

__global__ void route_thread_kernel(LayerParams p, const float *bias, const void *logits, int32_t dtype,
                                    int64_t tokens, const uint8_t *mask, float *weights, int32_t *ids,
                                    unsigned long long *nonfinite) {
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= tokens) return;
    if (mask && read_once(mask + t)) {
        for (int32_t j = 0; j < p.top_k; j++) {
            weights[t * p.top_k + j] = 0.0f;
            ids[t * p.top_k + j] = -1;
        }
        return;
    }
    float score[MRK_MAX_EXPERTS], key[MRK_MAX_EXPERTS];
    const size_t row_bytes = (size_t)p.num_experts * (dtype == MRK_DTYPE_FP32 ? 4 : 2);
    const void *row = (const char *)logits + (size_t)t * row_bytes;
    int32_t n = mrk_route_token(p.method, p.scoring, p.num_experts, p.top_k, p.num_groups, p.topk_group,
                                p.renormalize, p.eps, p.rsf, bias, row, dtype, score, key, weights + t * p.top_k,
                                ids + t * p.top_k);
    if (n) atomicAdd(nonfinite, (unsigned long long)n);
}

/* ---- Launch ------------------------------------------------------------------------------- */

/* Device pointers (mask, token_ids and tid2eid may be null: no mask; a scored layer);
 * *nonfinite must be zeroed before the launch. */
struct RouteArgs {
    const float *bias;
    const void *logits;
    int32_t dtype;
    int64_t tokens;
    float *weights;
    int32_t *ids;
    unsigned long long *nonfinite;
    const uint8_t *mask = nullptr;
    const int32_t *tid2eid = nullptr;
    int64_t vocab = 0; /* rows of tid2eid */
    const void *token_ids = nullptr;
    int32_t token_id_bytes = 4;
};

enum class Kernel { team, thread_per_token, hash_team };

inline const char *kernel_name(Kernel k) {
    return k == Kernel::team ? "team16" : k == Kernel::hash_team ? "hash-team16" : "thread-per-token";
}

/* The hash kernel for a hash-routed layer; else the team kernel, unless the layer has more groups
 * than a team keeps scores for. */
inline Kernel kernel_for(const LayerParams &p, bool hash = false) {
    if (hash) return Kernel::hash_team;
    const bool grouped = (p.method == MRK_GROUPED_TOPK || p.method == MRK_BIASED_GROUPED_TOPK) && p.num_groups > 1;
    return grouped && p.num_groups > kMaxTeamGroups ? Kernel::thread_per_token : Kernel::team;
}

template <int SLOTS>
inline void launch_team(Kernel kernel, const LayerParams &p, const RouteArgs &a, hipStream_t stream) {
    const int64_t teams = a.tokens < kTeamsPerBlock ? a.tokens : kTeamsPerBlock;
    const unsigned blocks = (unsigned)((a.tokens + teams - 1) / teams);
    if (kernel == Kernel::hash_team)
        MRH_LAUNCH(route_hash_team_kernel<SLOTS>, blocks, (unsigned)(teams * kTeamLanes), stream, p, a.tid2eid,
                   a.vocab, a.logits, a.dtype, a.tokens, a.mask, a.token_ids, a.token_id_bytes, a.weights, a.ids,
                   a.nonfinite);
    else
        MRH_LAUNCH(route_team_kernel<SLOTS>, blocks, (unsigned)(teams * kTeamLanes), stream, p, a.bias, a.logits,
                   a.dtype, a.tokens, a.mask, a.weights, a.ids, a.nonfinite);
}

/* Launches `kernel` for a.tokens > 0 tokens on `stream`; the caller checks hipGetLastError. The
 * team kernels are instantiated for a few slot counts: a lane's experts rounded up to the next. */
inline void launch_route(Kernel kernel, const LayerParams &p, const RouteArgs &a, hipStream_t stream) {
    if (kernel == Kernel::thread_per_token) {
        const unsigned blocks = (unsigned)((a.tokens + kThreadBlockThreads - 1) / kThreadBlockThreads);
        MRH_LAUNCH(route_thread_kernel, blocks, kThreadBlockThreads, stream, p, a.bias, a.logits, a.dtype,
                   a.tokens, a.mask, a.weights, a.ids, a.nonfinite);
        return;
    }
    const int per_lane = (p.num_experts + kTeamLanes - 1) / kTeamLanes;
    if (per_lane <= 1) launch_team<1>(kernel, p, a, stream);
    else if (per_lane <= 2) launch_team<2>(kernel, p, a, stream);
    else if (per_lane <= 4) launch_team<4>(kernel, p, a, stream);
    else if (per_lane <= 8) launch_team<8>(kernel, p, a, stream);
    else if (per_lane <= 16) launch_team<16>(kernel, p, a, stream);
    else if (per_lane <= 24) launch_team<24>(kernel, p, a, stream);
    else if (per_lane <= 32) launch_team<32>(kernel, p, a, stream);
    else launch_team<64>(kernel, p, a, stream);
}

} // namespace mrh

#endif
