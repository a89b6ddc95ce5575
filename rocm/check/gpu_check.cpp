/*
 * gpu_check — a GPU backend library (libmoe_router_cuda.so, libmoe_router_hip.so or the host
 * emulation) against the CPU reference, bit for bit, and the library's mrh_route timed.
 *
 *   gpu_check LIBRARY check [--layers presets|all|NAME,...] [--tokens 1,64,4096]
 *                           [--families all|NAME,...]
 *       For every layer x dtype (fp32, bf16, fp16) x token count x input family: routes the same
 *       logits through mrh_route_ex and through the CPU backend's generic path (Sources/CMoEKernels,
 *       mrk_route_ex, MRK_IMPL_GENERIC: the contract's reference code) and compares weights (bits),
 *       ids and the non-finite count. The layer's gate dtype is bf16, so bf16 requests use the
 *       resident bias and fp32/fp16 ones the fallback bias. The odd-numbered families carry a
 *       padding mask (token t masked when (7t + family) % 5 == 0); hash-routed layers get random
 *       token ids, int64 for bf16 requests and int32 otherwise. Prints each mismatching case (first
 *       differing entries) and a summary; exits 1 on any mismatch.
 *
 *   gpu_check LIBRARY time [--layers ...] [--tokens ...]
 *       Wall-clock mrh_route (host logits in, host weights/ids out), fp32 gaussian logits: prints
 *       "route<TAB>layer<TAB>tokens<TAB>median_us<TAB>min_us<TAB>reps" per case.
 *
 * Built by scripts/gpu-check.sh and tests/python/test_gpu_kernels_emulated.py with any C++17
 * compiler, against Sources/CMoEKernels/kernels.c and generic_only.c (compiled as C,
 * -ffp-contract=off).
 */
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "layers.h"
#include "moe_router_hip.h"

namespace {

struct Library {
    decltype(&mrh_runtime_name) runtime_name;
    decltype(&mrh_device_count) device_count;
    decltype(&mrh_device_name) device_name;
    decltype(&mrh_error_name) error_name;
    decltype(&mrh_layer_create_ex) layer_create;
    decltype(&mrh_layer_destroy) layer_destroy;
    decltype(&mrh_stream_create) stream_create;
    decltype(&mrh_stream_destroy) stream_destroy;
    decltype(&mrh_route_ex) route;
};

template <class F> void bind(void *so, const char *name, F &fn) {
    fn = reinterpret_cast<F>(dlsym(so, name));
    if (!fn) {
        std::fprintf(stderr, "gpu_check: the library lacks %s\n", name);
        std::exit(2);
    }
}

Library open_library(const char *path) {
    void *so = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!so) {
        std::fprintf(stderr, "gpu_check: cannot load %s: %s\n", path, dlerror());
        std::exit(2);
    }
    Library L;
    bind(so, "mrh_runtime_name", L.runtime_name);
    bind(so, "mrh_device_count", L.device_count);
    bind(so, "mrh_device_name", L.device_name);
    bind(so, "mrh_error_name", L.error_name);
    bind(so, "mrh_layer_create_ex", L.layer_create);
    bind(so, "mrh_layer_destroy", L.layer_destroy);
    bind(so, "mrh_stream_create", L.stream_create);
    bind(so, "mrh_stream_destroy", L.stream_destroy);
    bind(so, "mrh_route_ex", L.route);
    return L;
}

[[noreturn]] void usage() {
    std::fprintf(stderr, "usage: gpu_check LIBRARY check|time [--layers presets|all|NAME,...] "
                         "[--tokens N,...] [--families all|NAME,...]\n");
    std::exit(2);
}

struct Options {
    std::vector<const check::Layer *> layers;
    std::vector<int64_t> tokens = {1, 64, 4096};
    std::vector<int> families;
};

Options parse(int argc, char **argv) {
    Options o;
    std::string layers = "presets", families = "all";
    for (int i = 3; i < argc; i += 2) {
        if (i + 1 >= argc) usage();
        const std::string flag = argv[i], value = argv[i + 1];
        if (flag == "--layers") layers = value;
        else if (flag == "--families") families = value;
        else if (flag == "--tokens") {
            o.tokens.clear();
            for (const std::string &t : check::split(value)) o.tokens.push_back(std::atoll(t.c_str()));
        } else usage();
    }
    for (const check::Layer &l : check::all_layers())
        if (layers == "all" || (layers == "presets" && l.preset)) o.layers.push_back(&l);
    if (layers != "all" && layers != "presets")
        for (const std::string &name : check::split(layers)) {
            const check::Layer *l = check::find_layer(name);
            if (!l) {
                std::fprintf(stderr, "gpu_check: unknown layer %s\n", name.c_str());
                std::exit(2);
            }
            o.layers.push_back(l);
        }
    for (int f = 0; f < check::kFamilyCount; f++)
        for (const std::string &name : check::split(families))
            if (families == "all" || name == check::kFamilies[f]) o.families.push_back(f);
    if (o.layers.empty() || o.families.empty() || o.tokens.empty()) usage();
    return o;
}

void require(const Library &L, int32_t status, const char *what) {
    if (status == 0) return;
    std::fprintf(stderr, "gpu_check: %s failed: %s (%d)\n", what, L.error_name(status), status);
    std::exit(2);
}

/* A layer on device 0 with its bias stored in bf16 (the presets' gate dtype), and its table. */
struct DeviceLayer {
    const Library &L;
    mrh_layer *layer = nullptr;
    std::vector<float> bias;     /* fp32 before the gate dtype */
    std::vector<int32_t> table; /* tid2eid (hash-routed layers) */

    DeviceLayer(const Library &lib, const check::Layer &l)
        : L(lib), bias(check::layer_bias(l)), table(check::synthetic_table(l)) {
        const std::vector<float> stored = check::bias_in(bias, MRK_DTYPE_BF16);
        require(L, L.layer_create(0, l.method, l.scoring, l.num_experts, l.top_k, l.num_groups, l.topk_group,
                                  l.renormalize, l.rsf, l.eps, bias.empty() ? nullptr : stored.data(),
                                  table.empty() ? nullptr : table.data(), l.vocab, &layer),
                "mrh_layer_create_ex");
    }
    ~DeviceLayer() { L.layer_destroy(layer); }
};

/* A request's padding mask and token ids (see the usage above). */
struct Extras {
    std::vector<uint8_t> mask;
    std::vector<int32_t> ids32;
    std::vector<int64_t> ids64;
    int32_t id_bytes = 4;

    Extras(const check::Layer &l, int32_t dtype, int64_t tokens, int family, uint64_t seed) {
        if (family % 2)
            for (int64_t t = 0; t < tokens; t++) mask.push_back((t * 7 + family) % 5 == 0);
        if (!l.vocab) return;
        check::SplitMix64 rng{seed ^ 0x7091d5ull};
        id_bytes = dtype == MRK_DTYPE_BF16 ? 8 : 4;
        for (int64_t t = 0; t < tokens; t++) {
            const int64_t id = (int64_t)(rng.next() % (uint64_t)l.vocab);
            ids32.push_back((int32_t)id);
            ids64.push_back(id);
        }
    }
    const uint8_t *mask_ptr() const { return mask.empty() ? nullptr : mask.data(); }
    const void *ids_ptr() const {
        if (ids32.empty()) return nullptr;
        return id_bytes == 8 ? (const void *)ids64.data() : (const void *)ids32.data();
    }
};

struct Outputs {
    std::vector<float> w;
    std::vector<int32_t> ids;
    int64_t nonfinite = 0;
};

/* Prints up to three differing entries; returns whether the outputs are identical. */
bool same(const check::Layer &l, const char *case_name, const Outputs &got, const Outputs &want) {
    const bool equal = got.nonfinite == want.nonfinite && got.ids == want.ids &&
                       std::memcmp(got.w.data(), want.w.data(), want.w.size() * sizeof(float)) == 0;
    if (equal) return true;
    std::printf("MISMATCH %s: nonfinite %" PRId64 " (want %" PRId64 ")\n", case_name, got.nonfinite, want.nonfinite);
    int shown = 0;
    for (size_t i = 0; i < want.w.size() && shown < 3; i++) {
        uint32_t gb, wb;
        std::memcpy(&gb, &got.w[i], 4);
        std::memcpy(&wb, &want.w[i], 4);
        if (got.ids[i] == want.ids[i] && gb == wb) continue;
        shown++;
        std::printf("  token %zu column %zu: id %d weight %.9g (0x%08x), want id %d weight %.9g (0x%08x)\n",
                    i / l.top_k, i % l.top_k, got.ids[i], got.w[i], gb, want.ids[i], want.w[i], wb);
    }
    return false;
}

int run_check(const Library &L, const Options &o) {
    mrh_stream *stream;
    require(L, L.stream_create(0, &stream), "mrh_stream_create");
    int passed = 0, failed = 0;
    for (const check::Layer *l : o.layers) {
        DeviceLayer dl(L, *l);
        int layer_failed = 0;
        for (int32_t dtype : {MRK_DTYPE_FP32, MRK_DTYPE_BF16, MRK_DTYPE_FP16}) {
            /* The bias this request is computed against: the resident one, or the fallback. */
            const std::vector<float> request_bias = check::bias_in(check::bias_in(dl.bias, MRK_DTYPE_BF16), dtype);
            const bool fallback = !dl.bias.empty() && dtype != MRK_DTYPE_BF16;
            const mrk_layer ref = {l->method, l->scoring, l->num_experts, l->top_k, l->num_groups, l->topk_group,
                                   l->renormalize, l->rsf, dl.bias.empty() ? nullptr : request_bias.data(), l->eps, 0,
                                   dl.table.empty() ? nullptr : dl.table.data(), l->vocab};
            for (int64_t tokens : o.tokens)
                for (int family : o.families) {
                    const uint64_t seed = (uint64_t)l->num_experts * 7919 + (uint64_t)tokens * 31 + family;
                    const std::vector<uint8_t> in = check::as_dtype(check::family_rows(family, tokens, *l, seed), dtype);
                    const Extras ex(*l, dtype, tokens, family, seed);
                    const size_t n = (size_t)tokens * l->top_k;
                    Outputs got{std::vector<float>(n), std::vector<int32_t>(n)}, want = got;
                    require(L, L.route(dl.layer, stream, fallback ? request_bias.data() : nullptr, in.data(), dtype,
                                       tokens, ex.mask_ptr(), ex.ids_ptr(), ex.id_bytes, got.w.data(), got.ids.data(),
                                       &got.nonfinite),
                            "mrh_route_ex");
                    want.nonfinite = mrk_route_ex(&ref, in.data(), dtype, tokens, ex.mask_ptr(), ex.ids_ptr(), ex.id_bytes,
                                                  want.w.data(), want.ids.data(), MRK_IMPL_GENERIC);
                    char case_name[160];
                    std::snprintf(case_name, sizeof case_name, "%s %s %" PRId64 " tokens %s%s%s%s", l->name,
                                  check::dtype_name(dtype), tokens, check::kFamilies[family],
                                  fallback ? " (fallback bias)" : "", ex.mask.empty() ? "" : " (masked)",
                                  l->vocab ? (ex.id_bytes == 8 ? " (int64 ids)" : " (int32 ids)") : "");
                    if (same(*l, case_name, got, want)) passed++;
                    else failed++, layer_failed++;
                }
        }
        std::printf("%-24s %-20s E=%-4d k=%-2d G=%-3d %s\n", l->name, check::method_name(l->method), l->num_experts,
                    l->top_k, l->num_groups, layer_failed ? "MISMATCH" : "bit-identical");
        std::fflush(stdout);
    }
    L.stream_destroy(stream);
    std::printf("gpu_check: %d cases bit-identical, %d mismatching (%zu layers x 3 dtypes x %zu token counts x "
                "%zu input families)\n",
                passed, failed, o.layers.size(), o.tokens.size(), o.families.size());
    return failed ? 1 : 0;
}

int run_time(const Library &L, const Options &o) {
    mrh_stream *stream;
    require(L, L.stream_create(0, &stream), "mrh_stream_create");
    for (const check::Layer *l : o.layers) {
        DeviceLayer dl(L, *l);
        for (int64_t tokens : o.tokens) {
            const std::vector<float> in = check::family_rows(0, tokens, *l, 42);
            const Extras ex(*l, MRK_DTYPE_FP32, tokens, 0, 42);
            const size_t n = (size_t)tokens * l->top_k;
            std::vector<float> w(n);
            std::vector<int32_t> ids(n);
            int64_t nonfinite;
            /* ~0.5 s per case at most, never fewer than 20 reps */
            const int reps = tokens <= 4096 ? 200 : tokens <= 16384 ? 50 : 20;
            std::vector<double> us;
            for (int r = -5; r < reps; r++) { /* 5 warm-up calls */
                const auto t0 = std::chrono::steady_clock::now();
                require(L, L.route(dl.layer, stream, nullptr, in.data(), MRK_DTYPE_FP32, tokens, nullptr, ex.ids_ptr(),
                                   ex.id_bytes, w.data(), ids.data(), &nonfinite),
                        "mrh_route_ex");
                const auto t1 = std::chrono::steady_clock::now();
                if (r >= 0) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
            }
            std::sort(us.begin(), us.end());
            std::printf("route\t%s\t%" PRId64 "\t%.2f\t%.2f\t%d\n", l->name, tokens, us[us.size() / 2], us[0], reps);
            std::fflush(stdout);
        }
    }
    L.stream_destroy(stream);
    return 0;
}

} // namespace

int main(int argc, char **argv) {
    if (argc < 3) usage();
    const std::string mode = argv[2];
    if (mode != "check" && mode != "time") usage();
    const Options o = parse(argc, argv);
    const Library L = open_library(argv[1]);
    int32_t devices = 0;
    require(L, L.device_count(&devices), "mrh_device_count");
    char name[256] = "";
    require(L, L.device_name(0, name, sizeof name), "mrh_device_name");
    std::fprintf(stderr, "gpu_check: %s, runtime %s, device 0 = %s\n", argv[1], L.runtime_name(), name);
    return mode == "check" ? run_check(L, o) : run_time(L, o);
}
