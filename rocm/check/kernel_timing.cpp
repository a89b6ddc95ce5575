/*
 * kernel_timing — the routing kernels alone, on device-resident data: the team kernel against
 * the thread-per-token kernel (rocm/route_kernels.h), in one run.
 *
 *   kernel_timing --list   (name, method, E, k, G, Gk, scoring, renormalize, rsf, biased, kernel, vocab;
 *                           vocab > 0: hash-routed)
 *       One line per layer of layers.h: name, method, E, k, G, Gk, scoring, renormalize, rsf,
 *       biased (0/1) and the kernel mrh_route launches for it (tab-separated; for
 *       rocm/check/torch_baseline.py and the report).
 *   kernel_timing [--layers NAME,...] [--tokens 1,64,...] [--reps 200]
 *       Per scored layer (hash-routed ones are skipped) and token count: fp32 gaussian logits
 *       and the bf16-stored bias uploaded once, then each kernel launched `reps` times back to
 *       back between two events; prints
 *       "kernel<TAB>layer<TAB>tokens<TAB>mean_us_team<TAB>mean_us_thread<TAB>kernel<TAB>same" —
 *       `same` says whether the two kernels' outputs were bit-identical.
 *
 * Compiled by scripts/gpu-check.sh with nvcc (-x cu, the library's flags) or, for a dry run
 * without a GPU, as host emulation with any C++17 compiler (with rocm/host_emulation.cpp).
 */
#include "route_kernels.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "layers.h"

namespace {

void require(hipError_t e, const char *what) {
    if (e == hipSuccess) return;
    std::fprintf(stderr, "kernel_timing: %s failed: %s\n", what, hipGetErrorString(e));
    std::exit(1);
}

mrh::LayerParams params_of(const check::Layer &l) {
    return {l.method, l.scoring, l.num_experts, l.top_k, l.num_groups, l.topk_group, l.renormalize, l.rsf, l.eps};
}

void list_layers() {
    for (const check::Layer &l : check::all_layers())
        std::printf("%s\t%s\t%d\t%d\t%d\t%d\t%s\t%d\t%g\t%d\t%s\t%lld\n", l.name, check::method_name(l.method),
                    l.num_experts, l.top_k, l.num_groups, l.topk_group, check::scoring_name(l.scoring), l.renormalize, l.rsf,
                    l.bias_scale != 0, mrh::kernel_name(mrh::kernel_for(params_of(l), l.vocab != 0)), (long long)l.vocab);
}

template <class T> T *device_copy(const std::vector<T> &v) {
    T *d;
    require(hipMalloc((void **)&d, v.size() * sizeof(T) + 1), "hipMalloc");
    require(hipMemcpy(d, v.data(), v.size() * sizeof(T), hipMemcpyHostToDevice), "hipMemcpy");
    return d;
}

/* Device outputs of one kernel for `tokens` x k. */
struct DeviceOutputs {
    float *w;
    int32_t *ids;
    unsigned long long *nonfinite;
    DeviceOutputs(size_t n) {
        require(hipMalloc((void **)&w, n * sizeof(float)), "hipMalloc");
        require(hipMalloc((void **)&ids, n * sizeof(int32_t)), "hipMalloc");
        require(hipMalloc((void **)&nonfinite, sizeof *nonfinite), "hipMalloc");
    }
    ~DeviceOutputs() {
        (void)hipFree(w);
        (void)hipFree(ids);
        (void)hipFree(nonfinite);
    }
    std::vector<uint32_t> fetch(size_t n) const { /* weight bits, then ids */
        std::vector<uint32_t> out(2 * n);
        require(hipMemcpy(out.data(), w, n * 4, hipMemcpyDeviceToHost), "hipMemcpy");
        require(hipMemcpy(out.data() + n, ids, n * 4, hipMemcpyDeviceToHost), "hipMemcpy");
        return out;
    }
};

/* Mean microseconds per launch over `reps` back-to-back launches (after 3 warm-up launches). */
double time_kernel(mrh::Kernel kernel, const mrh::LayerParams &p, const mrh::RouteArgs &a, int reps,
                   hipEvent_t start, hipEvent_t stop) {
    const hipStream_t stream = 0;
    for (int r = 0; r < 3; r++) mrh::launch_route(kernel, p, a, stream);
    require(hipGetLastError(), "warm-up launch");
    require(hipEventRecord(start, stream), "hipEventRecord");
    for (int r = 0; r < reps; r++) mrh::launch_route(kernel, p, a, stream);
    require(hipEventRecord(stop, stream), "hipEventRecord");
    require(hipEventSynchronize(stop), "hipEventSynchronize");
    require(hipGetLastError(), "launch");
    float ms = 0;
    require(hipEventElapsedTime(&ms, start, stop), "hipEventElapsedTime");
    return ms * 1000.0 / reps;
}

void time_layer(const check::Layer &l, const std::vector<int64_t> &token_counts, int reps) {
    int64_t most = 0;
    for (int64_t t : token_counts) most = t > most ? t : most;
    const mrh::LayerParams p = params_of(l);
    const std::vector<float> bias = check::bias_in(check::layer_bias(l), MRK_DTYPE_BF16);
    float *d_bias = bias.empty() ? nullptr : device_copy(bias);
    float *d_logits = device_copy(check::family_rows(0, most, l, 42));
    DeviceOutputs team((size_t)most * l.top_k), thread((size_t)most * l.top_k);
    hipEvent_t start, stop;
    require(hipEventCreate(&start), "hipEventCreate");
    require(hipEventCreate(&stop), "hipEventCreate");
    if (l.vocab) { /* the hash kernel alone: it has no thread-per-token counterpart */
        const std::vector<int32_t> table = check::synthetic_table(l);
        std::vector<int32_t> token_ids((size_t)most);
        for (int64_t t = 0; t < most; t++) token_ids[(size_t)t] = (int32_t)(check::splitmix64_at((uint64_t)t) % (uint64_t)l.vocab);
        int32_t *d_table = device_copy(table), *d_token_ids = device_copy(token_ids);
        for (int64_t tokens : token_counts) {
            mrh::RouteArgs a = {d_bias, d_logits, MRK_DTYPE_FP32, tokens, team.w, team.ids, team.nonfinite};
            a.tid2eid = d_table;
            a.vocab = l.vocab;
            a.token_ids = d_token_ids;
            const double us = time_kernel(mrh::Kernel::hash_team, p, a, reps, start, stop);
            std::printf("kernel\t%s\t%lld\t%.2f\t-\t%s\t-\n", l.name, (long long)tokens, us,
                        mrh::kernel_name(mrh::Kernel::hash_team));
            std::fflush(stdout);
        }
        (void)hipFree(d_table);
        (void)hipFree(d_token_ids);
    }
    const mrh::Kernel chosen = mrh::kernel_for(p);
    for (int64_t tokens : token_counts) {
        if (l.vocab) break;
        const mrh::RouteArgs a_team = {d_bias, d_logits, MRK_DTYPE_FP32, tokens, team.w, team.ids, team.nonfinite};
        const mrh::RouteArgs a_thread = {d_bias, d_logits, MRK_DTYPE_FP32, tokens, thread.w, thread.ids, thread.nonfinite};
        const double us_chosen = time_kernel(chosen, p, a_team, reps, start, stop);
        const double us_thread = time_kernel(mrh::Kernel::thread_per_token, p, a_thread, reps, start, stop);
        const size_t n = (size_t)tokens * l.top_k;
        const bool same = team.fetch(n) == thread.fetch(n);
        std::printf("kernel\t%s\t%lld\t%.2f\t%.2f\t%s\t%s\n", l.name, (long long)tokens, us_chosen, us_thread,
                    mrh::kernel_name(chosen), same ? "same" : "DIFFERENT");
        std::fflush(stdout);
    }
    (void)hipEventDestroy(start);
    (void)hipEventDestroy(stop);
    (void)hipFree(d_logits);
    if (d_bias) (void)hipFree(d_bias);
}

} // namespace

int main(int argc, char **argv) {
    std::vector<std::string> layers = {"deepseek-v3", "kimi-k2"};
    std::vector<int64_t> tokens = {1, 64, 1024, 4096, 16384, 65536};
    int reps = 200;
    for (int i = 1; i < argc; i++) {
        const std::string flag = argv[i];
        if (flag == "--list") {
            list_layers();
            return 0;
        }
        if (i + 1 >= argc) break;
        const std::string value = argv[++i];
        if (flag == "--layers") layers = check::split(value);
        else if (flag == "--tokens") {
            tokens.clear();
            for (const std::string &t : check::split(value)) tokens.push_back(std::atoll(t.c_str()));
        } else if (flag == "--reps") reps = std::atoi(value.c_str());
        else {
            std::fprintf(stderr, "usage: kernel_timing --list | [--layers A,B] [--tokens N,...] [--reps N]\n");
            return 2;
        }
    }
    int devices = 0;
    require(hipGetDeviceCount(&devices), "hipGetDeviceCount");
    require(hipSetDevice(0), "hipSetDevice");
    for (const std::string &name : layers) {
        const check::Layer *l = check::find_layer(name);
        if (!l) {
            std::fprintf(stderr, "kernel_timing: unknown layer %s\n", name.c_str());
            return 2;
        }
        time_layer(*l, tokens, reps);
    }
    return 0;
}
