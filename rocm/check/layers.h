/*
 * layers.h — the layer shapes and input families that rocm/check/ programs route.
 *
 * The presets copy Sources/MoERouting/Presets.swift (`Presets.spec(named:)`, whose values are
 * shared/ROUTING.md's table; gate dtype bf16, the presets' default) and its synthetic bias. The
 * extra shapes copy Tests/MoERoutingTests/InputKinds.swift's `extraSpecs` (E not a multiple of
 * 16, k = E, k = 32, E = 1024, G = 16, softmax-scored biased groups, ...) plus qwen1.5-moe's
 * E = 60 and a layer with more groups than a team keeps (the thread-per-token kernel's case).
 * The input families copy InputKinds.swift's. Keep them in step with those files.
 * Hash-routed layers (vocab > 0) use TokenTable.synthetic's table (LayerSpec.swift).
 */
#ifndef MRH_CHECK_LAYERS_H
#define MRH_CHECK_LAYERS_H

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "moe_kernels.h"

namespace check {

struct Layer {
    const char *name;
    int32_t method, num_experts, top_k, num_groups, topk_group, scoring, renormalize;
    float rsf;
    float bias_scale; /* 0: no bias; else bias = synthetic bias x bias_scale */
    bool preset;
    float eps = 0;     /* renorm_epsilon */
    int64_t vocab = 0; /* > 0: hash-routed, synthetic_table(vocab, top_k, num_experts) */
};

inline const std::vector<Layer> &all_layers() {
    enum {
        SOFTMAX = MRK_SCORING_SOFTMAX,
        SIGMOID = MRK_SCORING_SIGMOID,
        SSP = MRK_SCORING_SQRTSOFTPLUS,
        NONE = MRK_SCORING_NONE,
    };
    static const std::vector<Layer> layers = {
        /* Presets.swift, in its order */
        {"deepseek-v3", MRK_BIASED_GROUPED_TOPK, 256, 8, 8, 4, SIGMOID, 1, 2.5f, 1, true},
        {"kimi-k2", MRK_BIASED_GROUPED_TOPK, 384, 8, 1, 1, SIGMOID, 1, 2.827f, 1, true},
        {"glm-4.5", MRK_BIASED_GROUPED_TOPK, 160, 8, 1, 1, SIGMOID, 1, 2.5f, 1, true},
        {"glm-4.5-air", MRK_BIASED_GROUPED_TOPK, 128, 8, 1, 1, SIGMOID, 1, 1.0f, 1, true},
        {"minimax-m2", MRK_BIASED_TOPK, 256, 8, 1, 1, SIGMOID, 1, 1.0f, 1, true},
        {"deepseek-v2", MRK_GROUPED_TOPK, 160, 6, 8, 3, SOFTMAX, 0, 16.0f, 0, true},
        {"deepseek-v2-lite", MRK_SOFTMAX_TOPK, 64, 6, 1, 1, SOFTMAX, 0, 1.0f, 0, true},
        {"qwen3-moe", MRK_SOFTMAX_TOPK, 128, 8, 1, 1, SOFTMAX, 1, 1.0f, 0, true},
        {"mixtral-8x7b", MRK_SOFTMAX_TOPK, 8, 2, 1, 1, SOFTMAX, 1, 1.0f, 0, true},
        {"gpt-oss-120b", MRK_TOPK_SOFTMAX, 128, 4, 1, 1, SOFTMAX, 0, 1.0f, 0, true},
        {"llama-4-maverick", MRK_LLAMA4_TOP1, 128, 1, 1, 1, SIGMOID, 0, 1.0f, 0, true},
        {"deepseek-v4", MRK_BIASED_TOPK, 384, 6, 1, 1, SSP, 1, 2.5f, 1, true},
        {"deepseek-v4-flash", MRK_BIASED_TOPK, 256, 6, 1, 1, SSP, 1, 2.5f, 1, true},
        {"deepseek-v4-hash", MRK_BIASED_TOPK, 384, 6, 1, 1, SSP, 1, 2.5f, 0, true, 0.0f, 129280},
        /* InputKinds.swift extraSpecs (bias: synthetic x 3) */
        {"softmax-e24-k5", MRK_SOFTMAX_TOPK, 24, 5, 1, 1, SOFTMAX, 1, 1.0f, 0, false},
        {"softmax-k-eq-e", MRK_SOFTMAX_TOPK, 12, 12, 1, 1, SOFTMAX, 1, 1.5f, 0, false},
        {"softmax-k1-e1", MRK_SOFTMAX_TOPK, 1, 1, 1, 1, SOFTMAX, 0, 1.0f, 0, false},
        {"grouped-e72-g6", MRK_GROUPED_TOPK, 72, 5, 6, 2, SOFTMAX, 1, 2.0f, 0, false},
        {"grouped-sigmoid", MRK_GROUPED_TOPK, 48, 4, 4, 2, SIGMOID, 0, 1.0f, 0, false},
        {"biased-e40-g4", MRK_BIASED_GROUPED_TOPK, 40, 6, 4, 2, SIGMOID, 1, 2.5f, 3, false},
        {"biased-softmax-scoring", MRK_BIASED_GROUPED_TOPK, 64, 6, 8, 3, SOFTMAX, 0, 1.25f, 3, false},
        {"biased-k-eq-gk-p", MRK_BIASED_GROUPED_TOPK, 32, 16, 4, 2, SIGMOID, 1, 1.0f, 3, false},
        {"biased-topk-e1000-k32", MRK_BIASED_TOPK, 1000, 32, 1, 1, SIGMOID, 1, 1.0f, 3, false},
        {"biased-topk-no-renorm", MRK_BIASED_TOPK, 17, 3, 1, 1, SIGMOID, 0, 3.0f, 3, false},
        {"topk-softmax-e100-k7", MRK_TOPK_SOFTMAX, 100, 7, 1, 1, SOFTMAX, 0, 2.0f, 0, false},
        {"llama4-e33-k3", MRK_LLAMA4_TOP1, 33, 3, 1, 1, SIGMOID, 0, 1.0f, 0, false},
        {"max-e1024-k32", MRK_BIASED_GROUPED_TOPK, 1024, 32, 16, 8, SIGMOID, 1, 1.0f, 3, false},
        {"none-biased-e64-g8", MRK_BIASED_GROUPED_TOPK, 64, 6, 8, 3, NONE, 1, 1.0f, 3, false},
        {"sigmoid-eps-e256-k8", MRK_BIASED_TOPK, 256, 8, 1, 1, SIGMOID, 1, 1.0f, 3, false, 1e-20f},
        {"ssp-grouped-eps", MRK_BIASED_GROUPED_TOPK, 256, 8, 8, 4, SSP, 1, 2.5f, 3, false, 1e-6f},
        {"softmax-eps-e8-k2", MRK_SOFTMAX_TOPK, 8, 2, 1, 1, SOFTMAX, 1, 1.0f, 0, false, 1e-3f},
        {"hash-softmax-e60-k4", MRK_SOFTMAX_TOPK, 60, 4, 1, 1, SOFTMAX, 1, 1.0f, 0, false, 0.0f, 1000},
        {"hash-none-e17-k3-eps", MRK_BIASED_TOPK, 17, 3, 1, 1, NONE, 1, 2.0f, 0, false, 1e-4f, 50},
        /* here only */
        {"qwen1.5-moe-e60-k4", MRK_SOFTMAX_TOPK, 60, 4, 1, 1, SOFTMAX, 0, 1.0f, 0, false},
        {"grouped-e512-g128", MRK_BIASED_GROUPED_TOPK, 512, 8, 128, 8, SIGMOID, 1, 2.5f, 3, false},
        {"ssp-e512-g128-eps", MRK_BIASED_GROUPED_TOPK, 512, 8, 128, 8, SSP, 1, 2.5f, 3, false, 1e-6f},
        {"hash-ssp-e1024-k32", MRK_BIASED_TOPK, 1024, 32, 1, 1, SSP, 1, 1.0f, 0, false, 0.0f, 4096},
    };
    return layers;
}

/* The items of a comma-separated command-line list. */
inline std::vector<std::string> split(const std::string &s) {
    std::vector<std::string> out;
    size_t start = 0;
    for (size_t comma; (comma = s.find(',', start)) != std::string::npos; start = comma + 1)
        out.push_back(s.substr(start, comma - start));
    out.push_back(s.substr(start));
    return out;
}

inline const Layer *find_layer(const std::string &name) {
    for (const Layer &l : all_layers())
        if (name == l.name) return &l;
    return nullptr;
}

inline const char *method_name(int32_t m) {
    static const char *names[] = {"softmax_topk", "topk_softmax", "grouped_topk",
                                  "biased_grouped_topk", "biased_topk", "llama4_top1"};
    return m >= 0 && m < 6 ? names[m] : "?";
}

inline const char *scoring_name(int32_t s) {
    static const char *names[] = {"softmax", "sigmoid", "sqrtsoftplus", "none"};
    return s >= 0 && s < 4 ? names[s] : "?";
}

/* Presets.splitmix64: splitmix64's output for input i. */
inline uint64_t splitmix64_at(uint64_t i) {
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Presets.syntheticBias. */
inline float synthetic_bias(int i) {
    return (float)(((double)(splitmix64_at((uint64_t)i) >> 40) / 16777216.0 - 0.5) * 0.2);
}

/* TokenTable.synthetic: row t holds (base + j * step) mod E, base = splitmix64(t) mod E, step =
 * 1 + splitmix64(t + 2^32) mod (E / k). Empty for a scored layer. */
inline std::vector<int32_t> synthetic_table(const Layer &l) {
    std::vector<int32_t> ids((size_t)l.vocab * l.top_k);
    const uint64_t E = (uint64_t)l.num_experts, span = (uint64_t)(l.num_experts / l.top_k);
    for (int64_t t = 0; t < l.vocab; t++) {
        const uint64_t base = splitmix64_at((uint64_t)t) % E, step = 1 + splitmix64_at((uint64_t)t + (1ull << 32)) % span;
        for (int32_t j = 0; j < l.top_k; j++) ids[(size_t)t * l.top_k + j] = (int32_t)((base + (uint64_t)j * step) % E);
    }
    return ids;
}

/* The layer's fp32 bias before it is stored in a gate dtype (empty without bias). */
inline std::vector<float> layer_bias(const Layer &l) {
    std::vector<float> b;
    if (l.bias_scale != 0)
        for (int i = 0; i < l.num_experts; i++) b.push_back(synthetic_bias(i) * l.bias_scale);
    return b;
}

struct SplitMix64 {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return (double)(next() >> 11) / 9007199254740992.0; }
    int below(int n) { return (int)(next() % (uint64_t)n); }
    float gaussian() {
        const double u = 1.0 - uniform(), v = uniform();
        return (float)(std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v));
    }
};

static const char *const kFamilies[] = {"gaussian", "wide",  "all-equal", "exact-ties", "group-ties",
                                        "near-ties", "huge", "tiny",      "non-finite"};
constexpr int kFamilyCount = sizeof kFamilies / sizeof kFamilies[0];

/* [tokens, E] fp32 logits of input family `family` (an index into kFamilies). */
inline std::vector<float> family_rows(int family, int64_t tokens, const Layer &l, uint64_t seed) {
    SplitMix64 rng{seed};
    const int E = l.num_experts, P = E / l.num_groups;
    std::vector<float> v((size_t)tokens * E);
    for (int64_t t = 0; t < tokens; t++)
        for (int i = 0; i < E; i++) {
            float x = 0;
            switch (family) {
            case 0: x = rng.gaussian(); break;
            case 1: x = rng.gaussian() * 8; break;
            case 2: x = t % 2 == 0 ? 0.25f : -3.0f; break;
            case 3: { const float c[] = {-1, 0, 0.5f, 1, 1}; x = c[rng.below(5)]; break; }
            case 4: x = (float)((i % P * 7 + t) % 5) * 0.5f; break; /* every group a copy */
            case 5: {
                const float b = 0.75f;
                const float c[] = {b, std::nextafter(b, 2.0f), std::nextafter(b, 0.0f),
                                   std::nextafter(std::nextafter(b, 2.0f), 2.0f)};
                x = c[rng.below(4)];
                break;
            }
            case 6: x = (rng.below(2) ? 1e4f : -1e4f) * (1 + (float)(i % 3) * 0.5f); break;
            case 7: x = (rng.below(2) ? 1e-30f : -1e-30f) * (float)(1 + i % 7); break;
            default: {
                const int r = rng.below(10);
                x = r == 0 ? NAN : r == 1 ? INFINITY : r == 2 ? -INFINITY : rng.gaussian();
            }
            }
            v[(size_t)t * E + i] = x;
        }
    return v;
}

inline const char *dtype_name(int32_t d) { return d == MRK_DTYPE_FP32 ? "fp32" : d == MRK_DTYPE_BF16 ? "bf16" : "fp16"; }

/* fp32 values as `dtype` bytes (round to nearest even, as moe_kernels.h narrows). */
inline std::vector<uint8_t> as_dtype(const std::vector<float> &v, int32_t dtype) {
    const size_t n = v.size(), size = dtype == MRK_DTYPE_FP32 ? 4 : 2;
    std::vector<uint8_t> out(n * size);
    for (size_t i = 0; i < n; i++) {
        if (dtype == MRK_DTYPE_FP32) {
            std::memcpy(&out[i * 4], &v[i], 4);
        } else {
            const uint16_t h = dtype == MRK_DTYPE_BF16 ? mrk_f32_to_bf16(v[i]) : mrk_f32_to_f16(v[i]);
            std::memcpy(&out[i * 2], &h, 2);
        }
    }
    return out;
}

/* A bias as stored in `dtype` and widened back to fp32 (what layers and requests use). */
inline std::vector<float> bias_in(const std::vector<float> &b, int32_t dtype) {
    std::vector<float> out(b.size());
    for (size_t i = 0; i < b.size(); i++)
        out[i] = dtype == MRK_DTYPE_FP32 ? b[i]
                 : dtype == MRK_DTYPE_BF16 ? mrk_bf16_to_f32(mrk_f32_to_bf16(b[i]))
                                           : mrk_f16_to_f32(mrk_f32_to_f16(b[i]));
    return out;
}

} // namespace check

#endif
