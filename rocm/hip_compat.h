/*
 * hip_compat.h — one kernel source, three compilers.
 *
 *  - hipcc (ROCm):        the HIP runtime, unchanged.
 *  - nvcc (CUDA):         each hip* name used by moe_router_hip.cpp maps to its cuda* twin.
 *  - a plain C++ compiler with MRH_HOST_EMULATION: a tiny in-process "device" whose memory is
 *    host memory and whose kernel launches are loops over (block, thread). It exists so the
 *    kernel bodies and the host-side plumbing are tested on machines without a GPU.
 *
 * Only the subset the backend uses is mapped; add names here, never in the kernel source.
 */
#ifndef MRH_HIP_COMPAT_H
#define MRH_HIP_COMPAT_H

#if defined(MRH_HOST_EMULATION)

#include <cstdlib>
#include <cstring>
#include <cstdint>

#define __global__
#define __device__
#define __host__

typedef int hipError_t;
enum {
    hipSuccess = 0,
    hipErrorInvalidValue = 1,
    hipErrorOutOfMemory = 2,
    hipErrorNoDevice = 100,
};
typedef struct mrh_emulated_stream *hipStream_t;
enum hipMemcpyKind { hipMemcpyHostToDevice = 1, hipMemcpyDeviceToHost = 2 };
enum { hipStreamNonBlocking = 1, hipHostMallocDefault = 0 };

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
/* The coordinates of the emulated thread running now (launches are sequential per OS thread). */
static thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

static inline hipError_t hipGetDeviceCount(int *n) { *n = 1; return hipSuccess; }
static inline hipError_t hipSetDevice(int d) { return d == 0 ? hipSuccess : hipErrorInvalidValue; }
static inline hipError_t hipMalloc(void **p, size_t n) {
    *p = std::malloc(n ? n : 1);
    return *p ? hipSuccess : hipErrorOutOfMemory;
}
static inline hipError_t hipFree(void *p) { std::free(p); return hipSuccess; }
static inline hipError_t hipHostMalloc(void **p, size_t n, unsigned) { return hipMalloc(p, n); }
static inline hipError_t hipHostFree(void *p) { return hipFree(p); }
static inline hipError_t hipMemcpy(void *d, const void *s, size_t n, hipMemcpyKind) {
    std::memcpy(d, s, n);
    return hipSuccess;
}
static inline hipError_t hipMemcpyAsync(void *d, const void *s, size_t n, hipMemcpyKind k, hipStream_t) {
    return hipMemcpy(d, s, n, k);
}
static inline hipError_t hipMemsetAsync(void *d, int v, size_t n, hipStream_t) {
    std::memset(d, v, n);
    return hipSuccess;
}
static inline hipError_t hipStreamCreateWithFlags(hipStream_t *s, unsigned) {
    *s = (hipStream_t)(uintptr_t)1; /* work runs at launch time: nothing to queue */
    return hipSuccess;
}
/* A test hook (mrh_emulation_fail_next): the next synchronisation on this thread fails. */
static thread_local hipError_t mrh_emulated_failure = hipSuccess;
static inline hipError_t hipStreamSynchronize(hipStream_t) {
    hipError_t e = mrh_emulated_failure;
    mrh_emulated_failure = hipSuccess;
    return e;
}
static inline hipError_t hipStreamDestroy(hipStream_t) { return hipSuccess; }
static inline hipError_t hipGetLastError(void) { return hipSuccess; }
static inline const char *hipGetErrorName(hipError_t e) {
    switch (e) {
    case hipSuccess: return "hipSuccess";
    case hipErrorInvalidValue: return "hipErrorInvalidValue";
    case hipErrorOutOfMemory: return "hipErrorOutOfMemory";
    case hipErrorNoDevice: return "hipErrorNoDevice";
    default: return "hipErrorUnknown";
    }
}
static inline const char *hipGetErrorString(hipError_t e) {
    switch (e) {
    case hipSuccess: return "no error";
    case hipErrorInvalidValue: return "invalid argument";
    case hipErrorOutOfMemory: return "out of memory";
    case hipErrorNoDevice: return "no ROCm-capable device is detected";
    default: return "unknown error";
    }
}
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
    unsigned long long old = *p;
    *p = old + v;
    return old;
}
#define MRH_RUNTIME_NAME "host-emulation"
#define MRH_DEVICE_NAME(dev, buf, len) (std::strncpy((buf), "host-emulation", (len)), hipSuccess)

/* Runs every (block, thread) of the grid, one after another. Kernels that use shared memory or
 * barriers cannot be emulated this way; the backend's kernels use neither. */
#define MRH_LAUNCH(kernel, grid, block, stream, ...)                                  \
    do {                                                                               \
        (void)(stream);                                                                \
        gridDim = dim3(grid);                                                          \
        blockDim = dim3(block);                                                        \
        for (unsigned mrh_b = 0; mrh_b < gridDim.x; mrh_b++)                           \
            for (unsigned mrh_t = 0; mrh_t < blockDim.x; mrh_t++) {                    \
                blockIdx = dim3(mrh_b);                                                \
                threadIdx = dim3(mrh_t);                                               \
                kernel(__VA_ARGS__);                                                   \
            }                                                                          \
    } while (0)

#elif defined(__CUDACC__)

#include <cuda_runtime.h>
#include <cstring>

typedef cudaError_t hipError_t;
typedef cudaStream_t hipStream_t;
#define hipSuccess cudaSuccess
#define hipErrorInvalidValue cudaErrorInvalidValue
#define hipErrorOutOfMemory cudaErrorMemoryAllocation
#define hipErrorNoDevice cudaErrorNoDevice
#define hipMemcpyHostToDevice cudaMemcpyHostToDevice
#define hipMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define hipStreamNonBlocking cudaStreamNonBlocking
#define hipHostMallocDefault cudaHostAllocDefault
#define hipGetDeviceCount cudaGetDeviceCount
#define hipSetDevice cudaSetDevice
#define hipMalloc cudaMalloc
#define hipFree cudaFree
#define hipHostMalloc cudaHostAlloc
#define hipHostFree cudaFreeHost
#define hipMemcpy cudaMemcpy
#define hipMemcpyAsync cudaMemcpyAsync
#define hipMemsetAsync cudaMemsetAsync
#define hipStreamCreateWithFlags cudaStreamCreateWithFlags
#define hipStreamSynchronize cudaStreamSynchronize
#define hipStreamDestroy cudaStreamDestroy
#define hipGetLastError cudaGetLastError
#define hipGetErrorName cudaGetErrorName
#define hipGetErrorString cudaGetErrorString
#define MRH_RUNTIME_NAME "cuda"
static inline cudaError_t mrh_device_name_cuda(int dev, char *buf, size_t len) {
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, dev);
    if (e == cudaSuccess) std::strncpy(buf, p.name, len);
    return e;
}
#define MRH_DEVICE_NAME(dev, buf, len) mrh_device_name_cuda((dev), (buf), (len))
#define MRH_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)

#else /* hipcc */

#include <hip/hip_runtime.h>
#include <cstring>

#define MRH_RUNTIME_NAME "hip"
static inline hipError_t mrh_device_name_hip(int dev, char *buf, size_t len) {
    hipDeviceProp_t p;
    hipError_t e = hipGetDeviceProperties(&p, dev);
    if (e == hipSuccess) std::strncpy(buf, p.gcnArchName, len);
    return e;
}
#define MRH_DEVICE_NAME(dev, buf, len) mrh_device_name_hip((dev), (buf), (len))
#define MRH_LAUNCH(kernel, grid, block, stream, ...) \
    hipLaunchKernelGGL(kernel, dim3(grid), dim3(block), 0, (stream), __VA_ARGS__)

#endif

#endif
