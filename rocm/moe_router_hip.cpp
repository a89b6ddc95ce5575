/*
 * The GPU routing backend's host side: moe_router_hip.h over the kernels of route_kernels.h.
 *
 * The kernels compute with Sources/CMoEKernels/moe_token.h's arithmetic, so the results are
 * those of the CPU backend bit for bit (no FMA contraction, IEEE fp32 division and denormals:
 * see scripts/build-rocm.sh and scripts/build-cuda.sh for the flags that guarantee it).
 */
#include "route_kernels.h"

#include "moe_router_hip.h"

#include <cstdlib>
#include <cstring>

namespace {

using mrh::LayerParams;

/* A device buffer or a pinned host buffer that only grows. */
struct Buffer {
    void *ptr = nullptr;
    size_t size = 0;
    bool pinned = false;

    hipError_t reserve(size_t n) {
        if (n <= size) return hipSuccess;
        release();
        size_t want = n < 4096 ? 4096 : n + n / 2;
        hipError_t e = pinned ? hipHostMalloc(&ptr, want, hipHostMallocDefault) : hipMalloc(&ptr, want);
        if (e != hipSuccess) {
            ptr = nullptr;
            return e;
        }
        size = want;
        return hipSuccess;
    }
    void release() {
        if (ptr) (void)(pinned ? hipHostFree(ptr) : hipFree(ptr));
        ptr = nullptr;
        size = 0;
    }
};

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
    Buffer stage_in, stage_out;    /* pinned host */
    Buffer dev_in, dev_out;        /* device: [logits | fallback bias | mask | token ids],
                                      [count | weights | ids] */
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
    (void)hipStreamDestroy(s->stream);
    delete s;
}

int32_t mrh_route(const mrh_layer *L, mrh_stream *s, const float *fallback_bias,
                  const void *logits, int32_t dtype, int64_t tokens, float *weights,
                  int32_t *ids, int64_t *nonfinite) {
    return mrh_route_ex(L, s, fallback_bias, logits, dtype, tokens, nullptr, nullptr, 4, weights, ids, nonfinite);
}

int32_t mrh_route_ex(const mrh_layer *L, mrh_stream *s, const float *fallback_bias,
                     const void *logits, int32_t dtype, int64_t tokens, const uint8_t *mask,
                     const void *token_ids, int32_t token_id_bytes, float *weights, int32_t *ids,
                     int64_t *nonfinite) {
    *nonfinite = 0;
    if (!L || !s || tokens < 0 || dtype < MRK_DTYPE_FP32 || dtype > MRK_DTYPE_FP16 ||
        L->device != s->device || (token_id_bytes != 4 && token_id_bytes != 8))
        return hipErrorInvalidValue;
    if (tokens == 0) return hipSuccess;
    const bool hash = L->tid2eid != nullptr;
    if (hash) {
        /* a token id outside the table would be a device read out of bounds: refused here */
        if (!token_ids) return hipErrorInvalidValue;
        for (int64_t t = 0; t < tokens; t++) {
            if (mask && mask[t]) continue;
            const int64_t id = token_id_bytes == 8 ? ((const int64_t *)token_ids)[t] : ((const int32_t *)token_ids)[t];
            if (id < 0 || id >= L->vocab) return hipErrorInvalidValue;
        }
    }
    const LayerParams &p = L->params;
    const size_t in_bytes = (size_t)tokens * (size_t)p.num_experts * (dtype == MRK_DTYPE_FP32 ? 4 : 2);
    const size_t bias_off = align_up(in_bytes);
    const size_t mask_off = align_up(bias_off + (fallback_bias ? sizeof(float) * (size_t)p.num_experts : 0));
    const size_t ids_in_off = align_up(mask_off + (mask ? (size_t)tokens : 0));
    const size_t in_total = ids_in_off + (hash ? (size_t)tokens * (size_t)token_id_bytes : 0);
    const size_t w_bytes = sizeof(float) * (size_t)tokens * (size_t)p.top_k;
    const size_t ids_bytes = sizeof(int32_t) * (size_t)tokens * (size_t)p.top_k;
    const size_t w_off = 256, ids_off = w_off + align_up(w_bytes), out_total = ids_off + ids_bytes;

    hipError_t e = hipSetDevice(s->device);
    if (e == hipSuccess) e = s->stage_in.reserve(in_total);
    if (e == hipSuccess) e = s->stage_out.reserve(out_total);
    if (e == hipSuccess) e = s->dev_in.reserve(in_total);
    if (e == hipSuccess) e = s->dev_out.reserve(out_total);
    if (e != hipSuccess) return e;

    char *stage_in = (char *)s->stage_in.ptr, *stage_out = (char *)s->stage_out.ptr;
    char *dev_in = (char *)s->dev_in.ptr, *dev_out = (char *)s->dev_out.ptr;
    std::memcpy(stage_in, logits, in_bytes);
    if (fallback_bias) std::memcpy(stage_in + bias_off, fallback_bias, sizeof(float) * (size_t)p.num_experts);
    if (mask) std::memcpy(stage_in + mask_off, mask, (size_t)tokens);
    if (hash) std::memcpy(stage_in + ids_in_off, token_ids, (size_t)tokens * (size_t)token_id_bytes);
    const float *bias = fallback_bias ? (const float *)(dev_in + bias_off) : L->bias;

    e = hipMemcpyAsync(dev_in, stage_in, in_total, hipMemcpyHostToDevice, s->stream);
    if (e == hipSuccess) e = hipMemsetAsync(dev_out, 0, sizeof(unsigned long long), s->stream);
    if (e != hipSuccess) return e;
    mrh::RouteArgs args = {bias, dev_in, dtype, tokens, (float *)(dev_out + w_off),
                           (int32_t *)(dev_out + ids_off), (unsigned long long *)dev_out};
    if (mask) args.mask = (const uint8_t *)(dev_in + mask_off);
    if (hash) {
        args.tid2eid = L->tid2eid;
        args.token_ids = dev_in + ids_in_off;
        args.token_id_bytes = token_id_bytes;
    }
    mrh::launch_route(mrh::kernel_for(p, hash), p, args, s->stream);
    e = hipGetLastError();
    if (e == hipSuccess)
        e = hipMemcpyAsync(stage_out, dev_out, out_total, hipMemcpyDeviceToHost, s->stream);
    if (e == hipSuccess) e = hipStreamSynchronize(s->stream);
    if (e != hipSuccess) return e;

    unsigned long long count;
    std::memcpy(&count, stage_out, sizeof count);
    std::memcpy(weights, stage_out + w_off, w_bytes);
    std::memcpy(ids, stage_out + ids_off, ids_bytes);
    *nonfinite = (int64_t)count;
    return hipSuccess;
}

#if defined(MRH_HOST_EMULATION)
/* Test hook, host emulation only: the next mrh_route on the calling thread fails with `status`
 * after running, so tests can drive the backend's device-failure path. */
MRH_API void mrh_emulation_fail_next(int32_t status) { mrh_emulated_failure = (hipError_t)status; }
#endif

} // extern "C"
