/*
 * The GPU routing backend's host side: moe_router_hip.h over the kernels of route_kernels.h.
 *
 * The kernels compute with Sources/CMoEKernels/moe_token.h's arithmetic, so the results are
 * those of the CPU backend bit for bit (no FMA contraction, IEEE fp32 division and denormals:
 * see scripts/build-rocm.sh and scripts/build-cuda.sh for the flags that guarantee it).
 */
#include "route_kernels.h"

#include "moe_router_hip.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace {

using mrh::LayerParams;

/* A device buffer or a pinned, device-mapped host buffer that only grows. `dev` is the address
 * the device uses: ptr itself for a device buffer, the mapping's device address for a pinned one
 * (kernels read and write pinned buffers in place). */
struct Buffer {
    void *ptr = nullptr;
    void *dev = nullptr;
    size_t size = 0;
    bool pinned = false;

    hipError_t reserve(size_t n) {
        if (n <= size) return hipSuccess;
        release();
        size_t want = n < 4096 ? 4096 : n + n / 2;
        hipError_t e = pinned ? hipHostMalloc(&ptr, want, hipHostMallocMapped) : hipMalloc(&ptr, want);
        if (e == hipSuccess) dev = ptr;
        if (e == hipSuccess && pinned) e = hipHostGetDevicePointer(&dev, ptr, 0);
        if (e != hipSuccess) {
            release();
            return e;
        }
        size = want;
        return hipSuccess;
    }
    void release() {
        if (ptr) (void)(pinned ? hipHostFree(ptr) : hipFree(ptr));
        ptr = dev = nullptr;
        size = 0;
    }
};

/* Host memory registered with mrh_host_register (the daemon: its clients' shared-memory
 * segments), by start address. */
struct Registration {
    size_t bytes;
    char *dev; /* the device's address of the start */
    int32_t device;
};
std::mutex registry_lock;
std::map<uintptr_t, Registration> registry;

/* The device address of [p, p + n) when those bytes lie wholly inside one registration on
 * `device`; null otherwise. Caller holds registry_lock. */
void *registered_address(const void *p, size_t n, int32_t device) {
    const uintptr_t a = (uintptr_t)p;
    auto it = registry.upper_bound(a);
    if (it == registry.begin()) return nullptr;
    --it;
    const uintptr_t off = a - it->first;
    if (it->second.device != device || off > it->second.bytes || n > it->second.bytes - off) return nullptr;
    return it->second.dev + off;
}

/* MRH_COPY_ABOVE_TOKENS, read when a stream is made: a token count (decimal, >= 0). */
int64_t copy_above_from_env() {
    const char *v = std::getenv("MRH_COPY_ABOVE_TOKENS");
    if (!v || !*v) return INT64_MAX;
    char *end = nullptr;
    errno = 0;
    const long long n = std::strtoll(v, &end, 10);
    if (*end || errno || n < 0) {
        static std::once_flag warned;
        std::call_once(warned, [v] {
            std::fprintf(stderr, "moe_router_hip: MRH_COPY_ABOVE_TOKENS=\"%s\" is not a token count; ignored\n", v);
        });
        return INT64_MAX;
    }
    return n;
}

size_t align_up(size_t n) { return (n + 255) & ~(size_t)255; }

} // namespace

struct mrh_layer {
    int32_t device;
    LayerParams params;
    float *bias;      /* device */
    int32_t *tid2eid; /* device, [vocab, top_k]; null for a scored layer */
    int64_t vocab;
};

struct mrh_stream {
    int32_t device;
    hipStream_t stream;
    Buffer stage_in, stage_out;    /* pinned host, mapped: [logits | fallback bias | mask | token ids],
                                      [count | weights | ids] */
    Buffer dev_in, dev_out;        /* device: the same layouts, for requests that copy */
    Buffer dev_count;              /* device: the non-finite count of in-place launches (AMD) */
    int64_t copy_above = INT64_MAX; /* inline requests of more tokens copy; the rest are read and
                                       written in place in the staging buffers */
};

extern "C" {

int32_t mrh_abi_version(void) { return MRH_ABI_VERSION; }

const char *mrh_runtime_name(void) { return MRH_RUNTIME_NAME; }

int32_t mrh_device_count(int32_t *count) {
    int n = 0;
    hipError_t e = hipGetDeviceCount(&n);
    *count = e == hipSuccess ? n : 0;
    if (e == hipSuccess && n == 0) return hipErrorNoDevice;
    return e;
}

int32_t mrh_device_name(int32_t device, char *buf, int32_t len) {
    if (!buf || len <= 0) return hipErrorInvalidValue;
    hipError_t e = MRH_DEVICE_NAME(device, buf, (size_t)len);
    buf[len - 1] = 0;
    return e;
}

const char *mrh_error_name(int32_t status) { return hipGetErrorName((hipError_t)status); }
const char *mrh_error_string(int32_t status) { return hipGetErrorString((hipError_t)status); }

int32_t mrh_layer_create(int32_t device, int32_t method, int32_t scoring, int32_t num_experts,
                         int32_t top_k, int32_t num_groups, int32_t topk_group,
                         int32_t renormalize, float routed_scaling_factor, const float *bias,
                         mrh_layer **out) {
    return mrh_layer_create_ex(device, method, scoring, num_experts, top_k, num_groups, topk_group, renormalize,
                               routed_scaling_factor, 0.0f, bias, nullptr, 0, out);
}

int32_t mrh_layer_create_ex(int32_t device, int32_t method, int32_t scoring, int32_t num_experts,
                            int32_t top_k, int32_t num_groups, int32_t topk_group,
                            int32_t renormalize, float routed_scaling_factor, float renorm_epsilon,
                            const float *bias, const int32_t *tid2eid, int64_t vocab, mrh_layer **out) {
    *out = nullptr;
    if (num_experts < 1 || num_experts > MRK_MAX_EXPERTS || top_k < 1 || top_k > MRK_MAX_TOPK ||
        top_k > num_experts || num_groups < 1 || num_experts % num_groups != 0 || scoring < MRK_SCORING_SOFTMAX ||
        scoring > MRK_SCORING_NONE || !(renorm_epsilon >= 0.0f) || (tid2eid && vocab < 1))
        return hipErrorInvalidValue;
    const size_t table_bytes = tid2eid ? sizeof(int32_t) * (size_t)vocab * (size_t)top_k : 0;
    for (size_t i = 0; i < table_bytes / sizeof(int32_t); i++)
        if (tid2eid[i] < 0 || tid2eid[i] >= num_experts) return hipErrorInvalidValue;
    hipError_t e = hipSetDevice(device);
    if (e != hipSuccess) return e;
    mrh_layer *L = new mrh_layer{device,
                                 {method, scoring, num_experts, top_k, num_groups, topk_group,
                                  renormalize, routed_scaling_factor, renorm_epsilon},
                                 nullptr, nullptr, tid2eid ? vocab : 0};
    if (bias) {
        e = hipMalloc((void **)&L->bias, sizeof(float) * (size_t)num_experts);
        if (e == hipSuccess)
            e = hipMemcpy(L->bias, bias, sizeof(float) * (size_t)num_experts, hipMemcpyHostToDevice);
    }
    if (e == hipSuccess && tid2eid) {
        e = hipMalloc((void **)&L->tid2eid, table_bytes);
        if (e == hipSuccess) e = hipMemcpy(L->tid2eid, tid2eid, table_bytes, hipMemcpyHostToDevice);
    }
    if (e != hipSuccess) {
        mrh_layer_destroy(L);
        return e;
    }
    *out = L;
    return hipSuccess;
}

void mrh_layer_destroy(mrh_layer *layer) {
    if (!layer) return;
    if (layer->bias || layer->tid2eid) (void)hipSetDevice(layer->device);
    if (layer->bias) (void)hipFree(layer->bias);
    if (layer->tid2eid) (void)hipFree(layer->tid2eid);
    delete layer;
}

int32_t mrh_stream_create(int32_t device, mrh_stream **out) {
    *out = nullptr;
    hipError_t e = hipSetDevice(device);
    if (e != hipSuccess) return e;
    mrh_stream *s = new mrh_stream();
    s->device = device;
    s->stage_in.pinned = s->stage_out.pinned = true;
    s->copy_above = copy_above_from_env();
    e = hipStreamCreateWithFlags(&s->stream, hipStreamNonBlocking);
    if (e != hipSuccess) {
        delete s;
        return e;
    }
    *out = s;
    return hipSuccess;
}

void mrh_stream_destroy(mrh_stream *s) {
    if (!s) return;
    (void)hipSetDevice(s->device);
    (void)hipStreamSynchronize(s->stream);
    s->stage_in.release();
    s->stage_out.release();
    s->dev_in.release();
    s->dev_out.release();
    s->dev_count.release();
    (void)hipStreamDestroy(s->stream);
    delete s;
}

int32_t mrh_route(const mrh_layer *L, mrh_stream *s, const float *fallback_bias,
                  const void *logits, int32_t dtype, int64_t tokens, float *weights,
                  int32_t *ids, int64_t *nonfinite) {
    return mrh_route_ex(L, s, fallback_bias, logits, dtype, tokens, nullptr, nullptr, 4, weights, ids, nonfinite);
}

int32_t mrh_stream_set_copy_above(mrh_stream *s, int64_t tokens) {
    if (!s || tokens < 0) return hipErrorInvalidValue;
    s->copy_above = tokens;
    return hipSuccess;
}

int64_t mrh_stream_copy_above(const mrh_stream *s) { return s ? s->copy_above : -1; }

int32_t mrh_host_register(int32_t device, void *ptr, uint64_t bytes) {
    const uintptr_t a = (uintptr_t)ptr;
    if (!ptr || bytes == 0 || bytes > UINTPTR_MAX - a) return hipErrorInvalidValue;
    std::lock_guard<std::mutex> hold(registry_lock);
    /* no byte may belong to two registrations (the runtime refuses it too) */
    auto next = registry.lower_bound(a);
    if (next != registry.end() && next->first - a < bytes) return hipErrorHostMemoryAlreadyRegistered;
    if (next != registry.begin() && a - std::prev(next)->first < std::prev(next)->second.bytes)
        return hipErrorHostMemoryAlreadyRegistered;
    hipError_t e = hipSetDevice(device);
    if (e == hipSuccess) e = hipHostRegister(ptr, (size_t)bytes, hipHostRegisterMapped);
    if (e != hipSuccess) return e;
    void *dev = nullptr;
    e = hipHostGetDevicePointer(&dev, ptr, 0);
    if (e != hipSuccess) {
        (void)hipHostUnregister(ptr);
        return e;
    }
    registry[a] = Registration{(size_t)bytes, (char *)dev, device};
    return hipSuccess;
}

int32_t mrh_host_unregister(void *ptr) {
    std::lock_guard<std::mutex> hold(registry_lock);
    auto it = registry.find((uintptr_t)ptr);
    if (it == registry.end()) return hipErrorHostMemoryNotRegistered;
    (void)hipSetDevice(it->second.device);
    registry.erase(it); /* forgotten even if the runtime fails: the caller unmaps it next */
    return hipHostUnregister(ptr);
}

void mrh_host_registered(int64_t *count, uint64_t *bytes) {
    std::lock_guard<std::mutex> hold(registry_lock);
    uint64_t total = 0;
    for (const auto &r : registry) total += r.second.bytes;
    if (count) *count = (int64_t)registry.size();
    if (bytes) *bytes = total;
}

namespace {

#if defined(MRH_HOST_EMULATION)
/* mrh_emulation_before_launch's callback: runs between a route's host checks and its launch. */
thread_local void (*before_launch)(void *) = nullptr;
thread_local void *before_launch_ctx = nullptr;
#endif

/* A request's buffers as the kernel addresses them (device memory, or mapped host memory). */
struct Placement {
    const void *logits;
    const float *bias;
    const uint8_t *mask;
    const void *token_ids;
    float *weights;
    int32_t *ids;
    unsigned long long *count;
};

/* The checks every route makes before touching memory; hipSuccess to go on. */
hipError_t check_request(const mrh_layer *L, mrh_stream *s, int32_t dtype, int64_t tokens, const uint8_t *mask,
                         const void *token_ids, int32_t token_id_bytes, const int64_t *nonfinite) {
    if (!L || !s || !nonfinite || tokens < 0 || dtype < MRK_DTYPE_FP32 || dtype > MRK_DTYPE_FP16 ||
        L->device != s->device || (token_id_bytes != 4 && token_id_bytes != 8))
        return hipErrorInvalidValue;
    if (tokens == 0 || !L->tid2eid) return hipSuccess;
    /* a token id outside the table is refused here; the kernel also routes one it finds out of
     * range nowhere, since mapped client memory may change after this check */
    if (!token_ids) return hipErrorInvalidValue;
    for (int64_t t = 0; t < tokens; t++) {
        if (mask && mask[t]) continue;
        const int64_t id = token_id_bytes == 8 ? ((const int64_t *)token_ids)[t] : ((const int32_t *)token_ids)[t];
        if (id < 0 || id >= L->vocab) return hipErrorInvalidValue;
    }
    return hipSuccess;
}

/* The non-finite count of a launch that reads and writes host memory in place. The kernels add
 * to it with device atomics; on AMD GPUs an atomic on mapped host memory needs PCIe atomics, which
 * not every platform has (without them the adds can be lost), so there the count lives in device
 * memory, zeroed before the launch and copied into the mapped host word after it, in stream order.
 * NVIDIA documents device atomics on mapped host memory as atomic with respect to the device: a
 * CUDA build adds straight into the host word and spends no stream operation on it. (The host
 * emulation takes the AMD path, so CI runs it.) */
#if defined(__CUDACC__)
constexpr bool count_in_host_memory = true;
#else
constexpr bool count_in_host_memory = false;
#endif

/* Zeroes the count for a launch and returns the device address the kernels add to; `host` is
 * the mapped word the count is read from after the stream synchronizes, `host_dev` its device
 * address. */
hipError_t count_before(mrh_stream *s, unsigned long long *host, unsigned long long *host_dev,
                        unsigned long long **counter) {
    *host = 0;
    if (count_in_host_memory) {
        *counter = host_dev;
        return hipSuccess;
    }
    hipError_t e = s->dev_count.reserve(sizeof(unsigned long long));
    if (e == hipSuccess) e = hipMemsetAsync(s->dev_count.ptr, 0, sizeof(unsigned long long), s->stream);
    *counter = (unsigned long long *)s->dev_count.ptr;
    return e;
}

/* After the launch: the device count into the mapped host word (before the synchronization). */
hipError_t count_after(mrh_stream *s, unsigned long long *host) {
    if (count_in_host_memory) return hipSuccess;
    hipError_t e = hipMemcpyAsync(host, s->dev_count.ptr, sizeof(unsigned long long), hipMemcpyDeviceToHost, s->stream);
#if defined(MRH_HOST_EMULATION)
    mrh_emulated_copies--; /* mrh_emulation_copies counts copies of request data, not of this word */
#endif
    return e;
}

/* One launch on `s` with the device addresses of `d`; the caller has zeroed *d.count. */
hipError_t launch(const mrh_layer *L, mrh_stream *s, const Placement &d, int32_t dtype, int64_t tokens,
                  int32_t token_id_bytes) {
    const LayerParams &p = L->params;
    const bool hash = L->tid2eid != nullptr;
    mrh::RouteArgs args = {d.bias, d.logits, dtype, tokens, d.weights, d.ids, d.count};
    args.mask = d.mask;
    if (hash) {
        args.tid2eid = L->tid2eid;
        args.vocab = L->vocab;
        args.token_ids = d.token_ids;
        args.token_id_bytes = token_id_bytes;
    }
#if defined(MRH_HOST_EMULATION)
    if (before_launch) before_launch(before_launch_ctx);
#endif
    mrh::launch_route(mrh::kernel_for(p, hash), p, args, s->stream);
    return hipGetLastError();
}

} // namespace

int32_t mrh_route_ex(const mrh_layer *L, mrh_stream *s, const float *fallback_bias,
                     const void *logits, int32_t dtype, int64_t tokens, const uint8_t *mask,
                     const void *token_ids, int32_t token_id_bytes, float *weights, int32_t *ids,
                     int64_t *nonfinite) {
    if (nonfinite) *nonfinite = 0;
    hipError_t e = check_request(L, s, dtype, tokens, mask, token_ids, token_id_bytes, nonfinite);
    if (e != hipSuccess || tokens == 0) return e;
    const bool hash = L->tid2eid != nullptr;
    const LayerParams &p = L->params;
    const size_t in_bytes = (size_t)tokens * (size_t)p.num_experts * (dtype == MRK_DTYPE_FP32 ? 4 : 2);
    const size_t bias_off = align_up(in_bytes);
    const size_t mask_off = align_up(bias_off + (fallback_bias ? sizeof(float) * (size_t)p.num_experts : 0));
    const size_t ids_in_off = align_up(mask_off + (mask ? (size_t)tokens : 0));
    const size_t in_total = ids_in_off + (hash ? (size_t)tokens * (size_t)token_id_bytes : 0);
    const size_t w_bytes = sizeof(float) * (size_t)tokens * (size_t)p.top_k;
    const size_t ids_bytes = sizeof(int32_t) * (size_t)tokens * (size_t)p.top_k;
    const size_t w_off = 256, ids_off = w_off + align_up(w_bytes), out_total = ids_off + ids_bytes;
    /* Small batches: the kernel reads the staging buffer and writes the output staging in place
     * (mapped pinned memory), no copy on the stream. Larger ones (copy_above): uploaded and
     * downloaded, since the device then reads its own memory at full bandwidth. */
    const bool copy = tokens > s->copy_above;

    e = hipSetDevice(s->device);
    if (e == hipSuccess) e = s->stage_in.reserve(in_total);
    if (e == hipSuccess) e = s->stage_out.reserve(out_total);
    if (e == hipSuccess && copy) e = s->dev_in.reserve(in_total);
    if (e == hipSuccess && copy) e = s->dev_out.reserve(out_total);
    if (e != hipSuccess) return e;

    char *stage_in = (char *)s->stage_in.ptr, *stage_out = (char *)s->stage_out.ptr;
    std::memcpy(stage_in, logits, in_bytes);
    if (fallback_bias) std::memcpy(stage_in + bias_off, fallback_bias, sizeof(float) * (size_t)p.num_experts);
    if (mask) std::memcpy(stage_in + mask_off, mask, (size_t)tokens);
    if (hash) std::memcpy(stage_in + ids_in_off, token_ids, (size_t)tokens * (size_t)token_id_bytes);

    char *dev_in = copy ? (char *)s->dev_in.ptr : (char *)s->stage_in.dev;
    char *dev_out = copy ? (char *)s->dev_out.ptr : (char *)s->stage_out.dev;
    if (copy) {
        e = hipMemcpyAsync(dev_in, stage_in, in_total, hipMemcpyHostToDevice, s->stream);
        if (e == hipSuccess) e = hipMemsetAsync(dev_out, 0, sizeof(unsigned long long), s->stream);
        if (e != hipSuccess) return e;
    }
    unsigned long long *counter = (unsigned long long *)dev_out; /* device memory when copying */
    if (!copy) e = count_before(s, (unsigned long long *)stage_out, (unsigned long long *)dev_out, &counter);
    if (e != hipSuccess) return e;
    const Placement d = {dev_in, fallback_bias ? (const float *)(dev_in + bias_off) : L->bias,
                         mask ? (const uint8_t *)(dev_in + mask_off) : nullptr,
                         hash ? dev_in + ids_in_off : nullptr, (float *)(dev_out + w_off),
                         (int32_t *)(dev_out + ids_off), counter};
    e = launch(L, s, d, dtype, tokens, token_id_bytes);
    if (e == hipSuccess && copy) e = hipMemcpyAsync(stage_out, dev_out, out_total, hipMemcpyDeviceToHost, s->stream);
    if (e == hipSuccess && !copy) e = count_after(s, (unsigned long long *)stage_out);
    if (e == hipSuccess) e = hipStreamSynchronize(s->stream);
    if (e != hipSuccess) return e;

    unsigned long long count;
    std::memcpy(&count, stage_out, sizeof count);
    std::memcpy(weights, stage_out + w_off, w_bytes);
    std::memcpy(ids, stage_out + ids_off, ids_bytes);
    *nonfinite = (int64_t)count;
    return hipSuccess;
}

int32_t mrh_route_mapped(const mrh_layer *L, mrh_stream *s, const float *fallback_bias,
                         const void *logits, int32_t dtype, int64_t tokens, const uint8_t *mask,
                         const void *token_ids, int32_t token_id_bytes, float *weights, int32_t *ids,
                         int64_t *nonfinite) {
    if (nonfinite) *nonfinite = 0;
    hipError_t e = check_request(L, s, dtype, tokens, mask, token_ids, token_id_bytes, nonfinite);
    if (e != hipSuccess || tokens == 0) return e;
    const LayerParams &p = L->params;
    const size_t in_bytes = (size_t)tokens * (size_t)p.num_experts * (dtype == MRK_DTYPE_FP32 ? 4 : 2);
    const size_t out_bytes = sizeof(float) * (size_t)tokens * (size_t)p.top_k;
    Placement d = {};
    {
        /* Every buffer wholly inside one registration (not necessarily the same one). The caller
         * keeps the registrations until this returns. */
        std::lock_guard<std::mutex> hold(registry_lock);
        d.logits = registered_address(logits, in_bytes, L->device);
        d.weights = (float *)registered_address(weights, out_bytes, L->device);
        d.ids = (int32_t *)registered_address(ids, out_bytes, L->device);
        if (mask) d.mask = (const uint8_t *)registered_address(mask, (size_t)tokens, L->device);
        if (token_ids) d.token_ids = registered_address(token_ids, (size_t)tokens * (size_t)token_id_bytes, L->device);
        if (!d.logits || !d.weights || !d.ids || (mask && !d.mask) || (token_ids && !d.token_ids))
            return hipErrorInvalidValue;
    }
    /* The fallback bias and the non-finite count go through the stream's mapped staging. */
    const size_t bias_bytes = fallback_bias ? sizeof(float) * (size_t)p.num_experts : 0;
    e = hipSetDevice(s->device);
    if (e == hipSuccess) e = s->stage_in.reserve(bias_bytes);
    if (e == hipSuccess) e = s->stage_out.reserve(sizeof(unsigned long long));
    if (e != hipSuccess) return e;
    if (fallback_bias) std::memcpy(s->stage_in.ptr, fallback_bias, bias_bytes);
    d.bias = fallback_bias ? (const float *)s->stage_in.dev : L->bias;
    e = count_before(s, (unsigned long long *)s->stage_out.ptr, (unsigned long long *)s->stage_out.dev, &d.count);
    if (e == hipSuccess) e = launch(L, s, d, dtype, tokens, token_id_bytes);
    if (e == hipSuccess) e = count_after(s, (unsigned long long *)s->stage_out.ptr);
    if (e == hipSuccess) e = hipStreamSynchronize(s->stream);
    if (e != hipSuccess) return e;
    unsigned long long count;
    std::memcpy(&count, s->stage_out.ptr, sizeof count);
    *nonfinite = (int64_t)count;
    return hipSuccess;
}

#if defined(MRH_HOST_EMULATION)
/* Test hook, host emulation only: the next mrh_route on the calling thread fails with `status`
 * after running, so tests can drive the backend's device-failure path. */
MRH_API void mrh_emulation_fail_next(int32_t status) { mrh_emulated_failure = (hipError_t)status; }

/* Test hook, host emulation only: stream copies (hipMemcpyAsync) made on the calling thread so far,
 * so tests see which routes copy. */
MRH_API int64_t mrh_emulation_copies(void) { return mrh_emulated_copies; }

/* Test hook, host emulation only: `fn(ctx)` runs on the calling thread after each route's host
 * checks, just before its launch (NULL: none), as a client rewriting mapped memory would. */
MRH_API void mrh_emulation_before_launch(void (*fn)(void *), void *ctx) {
    before_launch = fn;
    before_launch_ctx = ctx;
}
#endif

} // extern "C"
