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
 *   gpu_check LIBRARY mapped [--layers ...] [--tokens ...] [--families ...]
 *       Zero copy (ABI 3): the same cases with every buffer in one registered shared mapping,
 *       through mrh_route_mapped, against mrh_route_ex bit for bit (and, on the host emulation,
 *       that neither made a stream copy); then the API's refusals (unregistered and straddling
 *       buffers, overlapping and unknown registrations, the copy threshold), token ids and mask
 *       bytes rewritten between the host check and the launch (emulation), and no registration
 *       left behind.
 *
 *   gpu_check LIBRARY time [--layers ...] [--tokens ...] [--reps N]
 *       Wall clock (median of N calls per path; by default 200 up to 4096 tokens, 50 up to 16384,
 *       else 20), fp32 gaussian logits, per case three lines
 *       "PATH<TAB>layer<TAB>tokens<TAB>median_us<TAB>min_us<TAB>reps": route (mrh_route_ex, inline
 *       data through the mapped staging), copy (mrh_route_ex with every batch copied to and from
 *       device memory) and mapped (mrh_route_mapped on registered host memory: a client's segment).
 *
 * Built by scripts/gpu-check.sh and tests/python/test_gpu_kernels_emulated.py with any C++17
 * compiler, against Sources/CMoEKernels/kernels.c and generic_only.c (compiled as C,
 * -ffp-contract=off).
 */
#include <dlfcn.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
    decltype(&mrh_route_mapped) route_mapped;
    decltype(&mrh_host_register) host_register;
    decltype(&mrh_host_unregister) host_unregister;
    decltype(&mrh_host_registered) host_registered;
    decltype(&mrh_stream_set_copy_above) set_copy_above;
    decltype(&mrh_stream_copy_above) copy_above;
    /* host emulation only (null otherwise) */
    int64_t (*emulation_copies)(void);
    void (*emulation_before_launch)(void (*)(void *), void *);
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
    bind(so, "mrh_route_mapped", L.route_mapped);
    bind(so, "mrh_host_register", L.host_register);
    bind(so, "mrh_host_unregister", L.host_unregister);
    bind(so, "mrh_host_registered", L.host_registered);
    bind(so, "mrh_stream_set_copy_above", L.set_copy_above);
    bind(so, "mrh_stream_copy_above", L.copy_above);
    L.emulation_copies = reinterpret_cast<int64_t (*)(void)>(dlsym(so, "mrh_emulation_copies"));
    L.emulation_before_launch =
        reinterpret_cast<void (*)(void (*)(void *), void *)>(dlsym(so, "mrh_emulation_before_launch"));
    return L;
}

[[noreturn]] void usage() {
    std::fprintf(stderr, "usage: gpu_check LIBRARY check|mapped|time [--layers presets|all|NAME,...] "
                         "[--tokens N,...] [--families all|NAME,...] [--reps N]\n");
    std::exit(2);
}

struct Options {
    std::vector<const check::Layer *> layers;
    std::vector<int64_t> tokens = {1, 64, 4096};
    std::vector<int> families;
    int reps = 0; /* time: 0 = by batch size */
};

Options parse(int argc, char **argv) {
    Options o;
    std::string layers = "presets", families = "all";
    for (int i = 3; i < argc; i += 2) {
        if (i + 1 >= argc) usage();
        const std::string flag = argv[i], value = argv[i + 1];
        if (flag == "--layers") layers = value;
        else if (flag == "--families") families = value;
        else if (flag == "--reps") o.reps = std::atoi(value.c_str());
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

/* A client's shared segment: MAP_SHARED memory holding a request's buffers, 256-byte aligned. */
struct Segment {
    char *base = nullptr;
    size_t bytes = 0;
    size_t used = 0;

    explicit Segment(size_t n) : bytes(n) {
        void *p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            std::perror("gpu_check: mmap");
            std::exit(2);
        }
        base = (char *)p;
    }
    ~Segment() { munmap(base, bytes); }
    template <class T> T *take(size_t count) {
        T *p = (T *)(base + used);
        used += (count * sizeof(T) + 255) & ~(size_t)255;
        if (used > bytes) {
            std::fprintf(stderr, "gpu_check: segment too small\n");
            std::exit(2);
        }
        return p;
    }
    static size_t needed(const check::Layer &l, int64_t tokens) {
        const size_t t = (size_t)tokens;
        return 5 * 256 + t * l.num_experts * 4 + t + t * 8 + 2 * t * l.top_k * 4 + 4096;
    }
};

/* A case's request copied into a segment: logits, mask, token ids, outputs. */
struct MappedRequest {
    Segment seg;
    void *logits;
    uint8_t *mask = nullptr;
    void *ids_in = nullptr;
    float *w;
    int32_t *ids;
    MappedRequest(const check::Layer &l, int64_t tokens, const std::vector<uint8_t> &in, const Extras &ex)
        : seg(Segment::needed(l, tokens)) {
        logits = seg.take<char>(in.size());
        std::memcpy(logits, in.data(), in.size());
        if (!ex.mask.empty()) {
            mask = seg.take<uint8_t>(ex.mask.size());
            std::memcpy(mask, ex.mask.data(), ex.mask.size());
        }
        if (ex.ids_ptr()) {
            ids_in = seg.take<char>((size_t)tokens * ex.id_bytes);
            std::memcpy(ids_in, ex.ids_ptr(), (size_t)tokens * ex.id_bytes);
        }
        w = seg.take<float>((size_t)tokens * l.top_k);
        ids = seg.take<int32_t>((size_t)tokens * l.top_k);
    }
};

int64_t copies(const Library &L) { return L.emulation_copies ? L.emulation_copies() : 0; }

/* Token ids and mask bytes a client rewrites between the host check and the launch. */
struct Rewrite {
    void *ids;
    int32_t id_bytes;
    uint8_t *mask;
    int64_t tokens, vocab;
    static void apply(void *ctx) {
        Rewrite *r = (Rewrite *)ctx;
        const int64_t bad[] = {-1, r->vocab, INT64_MAX, INT32_MIN};
        for (int64_t t = 0; t < r->tokens; t += 3) { /* tokens 0, 3, 6, ...: out of range now */
            const int64_t v = bad[(t / 3) % 4];
            if (r->id_bytes == 8) ((int64_t *)r->ids)[t] = v;
            else ((int32_t *)r->ids)[t] = (int32_t)v;
            if (r->mask) r->mask[t] = 0; /* and unmasked, so the kernel reads them */
        }
    }
};

int run_mapped(const Library &L, const Options &o) {
    mrh_stream *stream;
    require(L, L.stream_create(0, &stream), "mrh_stream_create");
    int passed = 0, failed = 0, api_failed = 0, api_passed = 0;
    auto expect = [&](bool ok, const char *what) {
        if (ok) api_passed++;
        else {
            api_failed++;
            std::printf("FAILED: %s\n", what);
        }
    };
    for (const check::Layer *l : o.layers) {
        DeviceLayer dl(L, *l);
        int layer_failed = 0;
        for (int32_t dtype : {MRK_DTYPE_FP32, MRK_DTYPE_BF16, MRK_DTYPE_FP16}) {
            const std::vector<float> request_bias = check::bias_in(check::bias_in(dl.bias, MRK_DTYPE_BF16), dtype);
            const bool fallback = !dl.bias.empty() && dtype != MRK_DTYPE_BF16;
            for (int64_t tokens : o.tokens)
                for (int family : o.families) {
                    const uint64_t seed = (uint64_t)l->num_experts * 7919 + (uint64_t)tokens * 31 + family;
                    const std::vector<uint8_t> in = check::as_dtype(check::family_rows(family, tokens, *l, seed), dtype);
                    const Extras ex(*l, dtype, tokens, family, seed);
                    const size_t n = (size_t)tokens * l->top_k;
                    Outputs want{std::vector<float>(n), std::vector<int32_t>(n)}, got = want;
                    const float *bias = fallback ? request_bias.data() : nullptr;
                    const int64_t c0 = copies(L);
                    require(L, L.route(dl.layer, stream, bias, in.data(), dtype, tokens, ex.mask_ptr(), ex.ids_ptr(),
                                       ex.id_bytes, want.w.data(), want.ids.data(), &want.nonfinite),
                            "mrh_route_ex");
                    MappedRequest m(*l, tokens, in, ex);
                    require(L, L.host_register(0, m.seg.base, m.seg.bytes), "mrh_host_register");
                    require(L, L.route_mapped(dl.layer, stream, bias, m.logits, dtype, tokens, m.mask, m.ids_in,
                                              ex.id_bytes, m.w, m.ids, &got.nonfinite),
                            "mrh_route_mapped");
                    const int64_t made = copies(L) - c0;
                    std::memcpy(got.w.data(), m.w, n * sizeof(float));
                    std::memcpy(got.ids.data(), m.ids, n * sizeof(int32_t));
                    char case_name[160];
                    std::snprintf(case_name, sizeof case_name, "mapped %s %s %" PRId64 " tokens %s%s%s", l->name,
                                  check::dtype_name(dtype), tokens, check::kFamilies[family],
                                  fallback ? " (fallback bias)" : "", ex.mask.empty() ? "" : " (masked)");
                    bool ok = same(*l, case_name, got, want);
                    if (made != 0) {
                        std::printf("COPIES %s: %" PRId64 " stream copies (want none)\n", case_name, made);
                        ok = false;
                    }
                    /* Rewritten after the check: out-of-range ids route nowhere, the rest as before. */
                    if (l->vocab && L.emulation_before_launch) {
                        Rewrite r{m.ids_in, ex.id_bytes, m.mask, tokens, l->vocab};
                        L.emulation_before_launch(Rewrite::apply, &r);
                        int64_t nf;
                        const int32_t st = L.route_mapped(dl.layer, stream, bias, m.logits, dtype, tokens, m.mask,
                                                          m.ids_in, ex.id_bytes, m.w, m.ids, &nf);
                        L.emulation_before_launch(nullptr, nullptr);
                        bool rewritten_ok = st == 0;
                        for (int64_t t = 0; t < tokens && rewritten_ok; t++)
                            for (int32_t j = 0; j < l->top_k; j++) {
                                const size_t i = (size_t)t * l->top_k + j;
                                uint32_t gb, wb;
                                std::memcpy(&gb, &m.w[i], 4);
                                std::memcpy(&wb, &want.w[i], 4);
                                if (t % 3 == 0 ? (m.ids[i] != -1 || gb != 0) : (m.ids[i] != want.ids[i] || gb != wb))
                                    rewritten_ok = false;
                            }
                        if (!rewritten_ok) std::printf("REWRITE %s: status %d, rows with rewritten ids not -1/0\n", case_name, st);
                        ok = ok && rewritten_ok;
                    }
                    require(L, L.host_unregister(m.seg.base), "mrh_host_unregister");
                    if (ok) passed++;
                    else failed++, layer_failed++;
                }
        }
        std::printf("%-24s %-20s E=%-4d k=%-2d G=%-3d %s\n", l->name, check::method_name(l->method), l->num_experts,
                    l->top_k, l->num_groups, layer_failed ? "MISMATCH" : "bit-identical");
        std::fflush(stdout);
    }

    /* The refusals, on the first layer: nothing is written when a buffer is not registered. */
    {
        const check::Layer &l = *o.layers[0];
        DeviceLayer dl(L, l);
        const int64_t tokens = 8;
        const std::vector<uint8_t> in = check::as_dtype(check::family_rows(0, tokens, l, 1), MRK_DTYPE_BF16);
        const Extras ex(l, MRK_DTYPE_BF16, tokens, 1, 1);
        MappedRequest m(l, tokens, in, ex);
        const size_t n = (size_t)tokens * l.top_k;
        auto untouched = [&] {
            for (size_t i = 0; i < n; i++)
                if (m.ids[i] != 12345) return false;
            return true;
        };
        auto route = [&](const void *logits, float *w, int32_t *ids) {
            for (size_t i = 0; i < n; i++) m.ids[i] = 12345;
            int64_t nf;
            return L.route_mapped(dl.layer, stream, nullptr, logits, MRK_DTYPE_BF16, tokens, m.mask, m.ids_in,
                                  ex.id_bytes, w, ids, &nf);
        };
        const int32_t invalid = route(m.logits, m.w, m.ids); /* nothing registered yet */
        expect(invalid != 0 && untouched(), "an unregistered segment is refused, nothing written");
        /* the segment registered up to 4 bytes before the end of the logits: they straddle it */
        const size_t logits_end = (size_t)((char *)m.logits - m.seg.base) + in.size();
        require(L, L.host_register(0, m.seg.base, logits_end - 4), "mrh_host_register");
        expect(route(m.logits, m.w, m.ids) == invalid && untouched(), "logits straddling a registration's end are refused");
        /* the rest registered separately: the logits straddle two registrations */
        require(L, L.host_register(0, m.seg.base + logits_end - 4, m.seg.bytes - logits_end + 4), "mrh_host_register");
        expect(route(m.logits, m.w, m.ids) == invalid && untouched(), "logits across two registrations are refused");
        expect(L.host_unregister(m.seg.base + logits_end - 4) == 0, "unregister the second part");
        expect(L.host_unregister(m.seg.base) == 0, "unregister the first part");
        require(L, L.host_register(0, m.seg.base, m.seg.bytes), "mrh_host_register");
        expect(route(m.logits, m.w, m.ids) == 0 && !untouched(), "the whole segment registered: routed");
        std::vector<float> w(n);
        std::vector<int32_t> ids(n, 12345);
        int64_t nf;
        expect(L.route_mapped(dl.layer, stream, nullptr, m.logits, MRK_DTYPE_BF16, tokens, m.mask, m.ids_in,
                              ex.id_bytes, w.data(), ids.data(), &nf) == invalid && ids[0] == 12345,
               "outputs outside the registration are refused");
        expect(route(in.data(), m.w, m.ids) == invalid && untouched(), "logits outside the registration are refused");
        expect(L.host_register(0, m.seg.base + 4096, 4096) != 0, "an overlapping registration is refused");
        expect(L.host_register(0, m.seg.base, m.seg.bytes) != 0, "registering the same range twice is refused");
        expect(L.host_register(0, nullptr, 4096) == invalid && L.host_register(0, m.seg.base, 0) == invalid,
               "a NULL or empty range is refused");
        expect(L.host_unregister(m.seg.base + 8) != 0, "unregistering an address inside a registration is refused");
        int64_t count = -1;
        uint64_t bytes = 0;
        L.host_registered(&count, &bytes);
        expect(count == 1 && bytes == m.seg.bytes, "one registration of the segment's bytes is counted");
        expect(L.host_unregister(m.seg.base) == 0, "unregister");
        expect(L.host_unregister(m.seg.base) != 0, "unregistering twice is refused");

        /* The copy threshold: inline requests copy only above it. */
        expect(L.copy_above(stream) == INT64_MAX || std::getenv("MRH_COPY_ABOVE_TOKENS"), "by default nothing copies");
        expect(L.set_copy_above(stream, -1) == invalid && L.set_copy_above(nullptr, 5) == invalid,
               "a negative threshold or NULL stream is refused");
        Outputs a{std::vector<float>(n), std::vector<int32_t>(n)}, b = a;
        expect(L.set_copy_above(stream, 0) == 0 && L.copy_above(stream) == 0, "threshold 0 set");
        int64_t c0 = copies(L);
        require(L, L.route(dl.layer, stream, nullptr, in.data(), MRK_DTYPE_BF16, tokens, ex.mask_ptr(), ex.ids_ptr(),
                           ex.id_bytes, a.w.data(), a.ids.data(), &a.nonfinite), "mrh_route_ex");
        expect(!L.emulation_copies || copies(L) - c0 == 2, "above the threshold: uploaded and downloaded");
        require(L, L.set_copy_above(stream, tokens), "mrh_stream_set_copy_above");
        c0 = copies(L);
        require(L, L.route(dl.layer, stream, nullptr, in.data(), MRK_DTYPE_BF16, tokens, ex.mask_ptr(), ex.ids_ptr(),
                           ex.id_bytes, b.w.data(), b.ids.data(), &b.nonfinite), "mrh_route_ex");
        expect(copies(L) == c0, "at the threshold: no copy");
        expect(same(l, "copied vs in place", a, b), "copied and in-place results are identical");
    }
    /* MRH_COPY_ABOVE_TOKENS is read when a stream is made; a malformed value is ignored. */
    for (const char *value : {"4096", "lots", "-3"}) {
        setenv("MRH_COPY_ABOVE_TOKENS", value, 1);
        mrh_stream *s2;
        require(L, L.stream_create(0, &s2), "mrh_stream_create");
        const int64_t want = value[0] == '4' ? 4096 : INT64_MAX;
        char what[96];
        std::snprintf(what, sizeof what, "MRH_COPY_ABOVE_TOKENS=%s gives threshold %" PRId64, value, want);
        expect(L.copy_above(s2) == want, what);
        L.stream_destroy(s2);
    }
    unsetenv("MRH_COPY_ABOVE_TOKENS");
    int64_t count = -1;
    uint64_t bytes = 1;
    L.host_registered(&count, &bytes);
    expect(count == 0 && bytes == 0, "no registration left behind");
    L.stream_destroy(stream);
    std::printf("gpu_check mapped: %d cases bit-identical, %d mismatching; %d API checks passed, %d failed\n", passed,
                failed, api_passed, api_failed);
    return failed || api_failed ? 1 : 0;
}

/* Median and minimum wall clock of `call`, after 5 warm-up calls. */
template <class F> std::pair<double, double> wall_clock(int reps, F call) {
    std::vector<double> us;
    for (int r = -5; r < reps; r++) {
        const auto t0 = std::chrono::steady_clock::now();
        call();
        const auto t1 = std::chrono::steady_clock::now();
        if (r >= 0) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    std::sort(us.begin(), us.end());
    return {us[us.size() / 2], us[0]};
}

int run_time(const Library &L, const Options &o) {
    mrh_stream *stream;
    require(L, L.stream_create(0, &stream), "mrh_stream_create");
    for (const check::Layer *l : o.layers) {
        DeviceLayer dl(L, *l);
        for (int64_t tokens : o.tokens) {
            const std::vector<float> rows = check::family_rows(0, tokens, *l, 42);
            const Extras ex(*l, MRK_DTYPE_FP32, tokens, 0, 42);
            const size_t n = (size_t)tokens * l->top_k;
            std::vector<float> w(n);
            std::vector<int32_t> ids(n);
            int64_t nonfinite;
            /* ~0.5 s per path and case at most, never fewer than 20 reps */
            const int reps = o.reps > 0 ? o.reps : tokens <= 4096 ? 200 : tokens <= 16384 ? 50 : 20;
            auto inline_route = [&] {
                require(L, L.route(dl.layer, stream, nullptr, rows.data(), MRK_DTYPE_FP32, tokens, nullptr,
                                   ex.ids_ptr(), ex.id_bytes, w.data(), ids.data(), &nonfinite),
                        "mrh_route_ex");
            };
            require(L, L.set_copy_above(stream, INT64_MAX), "mrh_stream_set_copy_above");
            const auto staged = wall_clock(reps, inline_route);
            require(L, L.set_copy_above(stream, 0), "mrh_stream_set_copy_above");
            const auto copied = wall_clock(reps, inline_route);
            /* A client's segment, registered once, as the daemon does at REGISTER */
            const std::vector<uint8_t> in((const uint8_t *)rows.data(), (const uint8_t *)(rows.data() + rows.size()));
            MappedRequest m(*l, tokens, in, ex);
            require(L, L.host_register(0, m.seg.base, m.seg.bytes), "mrh_host_register");
            const auto mapped = wall_clock(reps, [&] {
                require(L, L.route_mapped(dl.layer, stream, nullptr, m.logits, MRK_DTYPE_FP32, tokens, nullptr, m.ids_in,
                                          ex.id_bytes, m.w, m.ids, &nonfinite),
                        "mrh_route_mapped");
            });
            require(L, L.host_unregister(m.seg.base), "mrh_host_unregister");
            for (const auto &[path, t] : {std::pair{"route", staged}, {"copy", copied}, {"mapped", mapped}})
                std::printf("%s\t%s\t%" PRId64 "\t%.2f\t%.2f\t%d\n", path, l->name, tokens, t.first, t.second, reps);
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
    if (mode != "check" && mode != "mapped" && mode != "time") usage();
    const Options o = parse(argc, argv);
    const Library L = open_library(argv[1]);
    int32_t devices = 0;
    require(L, L.device_count(&devices), "mrh_device_count");
    char name[256] = "";
    require(L, L.device_name(0, name, sizeof name), "mrh_device_name");
    std::fprintf(stderr, "gpu_check: %s, runtime %s, device 0 = %s\n", argv[1], L.runtime_name(), name);
    return mode == "check" ? run_check(L, o) : mode == "mapped" ? run_mapped(L, o) : run_time(L, o);
}
