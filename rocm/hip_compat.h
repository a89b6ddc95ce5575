/*
 * hip_compat.h — one kernel source, three compilers.
 *
 *  - hipcc (ROCm):        the HIP runtime, unchanged.
 *  - nvcc (CUDA):         each hip* name used by moe_router_hip.cpp maps to its cuda* twin.
 *  - a plain C++ compiler with MRH_HOST_EMULATION: a tiny in-process "device" whose memory is
 *    host memory and whose threads run as cooperative fibers, one warp at a time, meeting at
 *    every warp collective (rocm/host_emulation.cpp). It exists so the kernel bodies, their
 *    lane exchanges and the host-side plumbing are tested on machines without a GPU.
 *
 * Every compiler also gets the few lane-exchange primitives the kernels use, by one name:
 *   mrh_shfl_xor(v, lane_mask, width), mrh_shfl(v, src_lane, width)
 * with the semantics of CUDA's __shfl_xor_sync/__shfl_sync: `width` (a power of two dividing
 * the warp size) splits the warp into independent segments, and every lane of a warp calls them
 * together (the emulation insists on the whole warp: stricter than CUDA, which needs only the
 * segment). MRH_WARP_SIZE is the target's warp size (a compile-time
 * constant: 32 on NVIDIA, 64 on CDNA, 32 or 64 on RDNA as the compiler builds it).
 *
 * Only the subset the backend uses is mapped; add names here, never in the kernel source.
 */
#ifndef MRH_HIP_COMPAT_H
#define MRH_HIP_COMPAT_H

#if defined(MRH_HOST_EMULATION)

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)

/* The emulated warp size; 32 unless the build asks for wave64 (-DMRH_EMULATED_WARP_SIZE=64). */
#ifndef MRH_EMULATED_WARP_SIZE
#define MRH_EMULATED_WARP_SIZE 32
#endif
#define MRH_WARP_SIZE MRH_EMULATED_WARP_SIZE

typedef int hipError_t;
enum {
    hipSuccess = 0,
    hipErrorInvalidValue = 1,
    hipErrorOutOfMemory = 2,
    hipErrorNoDevice = 100,
    hipErrorHostMemoryAlreadyRegistered = 712,
    hipErrorHostMemoryNotRegistered = 713,
};
typedef struct mrh_emulated_stream *hipStream_t;
enum hipMemcpyKind { hipMemcpyHostToDevice = 1, hipMemcpyDeviceToHost = 2 };
enum { hipStreamNonBlocking = 1, hipHostMallocDefault = 0, hipHostMallocMapped = 2, hipHostRegisterMapped = 2 };

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
/* The coordinates of the emulated thread running now (set by the fiber scheduler before it
 * resumes a thread; launches are sequential per OS thread). Initial-exec TLS: read at every
 * step of a kernel, and a few bytes fit the static TLS that glibc keeps for dlopen. */
#define MRH_EMULATION_TLS __attribute__((tls_model("initial-exec")))
extern MRH_EMULATION_TLS thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace mrh_emulation {
/* A warp collective (host_emulation.cpp): suspends the calling thread until every thread of its
 * warp has called it, then returns the `value` that thread `src_lane` (a lane of the same warp)
 * passed. Aborts, naming `what`, if the warp's threads meet at different collectives or some
 * have exited: what a GPU would not report but a correct kernel never does. */
unsigned long long exchange(unsigned long long value, unsigned src_lane, unsigned width, const char *what);

/* Runs the grid: blocks in order, each block's warps in order, the threads of a warp as fibers
 * that switch at every collective. `body(ctx)` is one thread's kernel call. */
void launch(dim3 grid, dim3 block, void (*body)(void *), void *ctx);

template <class F> void invoke(void *f) { (*static_cast<F *>(f))(); }

template <class T> unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "exchange carries 64 bits");
    unsigned long long u = 0;
    std::memcpy(&u, &v, sizeof v);
    return u;
}
template <class T> T from_bits(unsigned long long u) {
    T v;
    std::memcpy(&v, &u, sizeof v);
    return v;
}
inline unsigned lane_id() { return threadIdx.x % MRH_WARP_SIZE; }
} // namespace mrh_emulation

template <class T> T mrh_shfl_xor(T v, int lane_mask, int width) {
    const unsigned lane = mrh_emulation::lane_id(), w = (unsigned)width;
    const unsigned src = (lane & ~(w - 1)) | ((lane ^ (unsigned)lane_mask) & (w - 1));
    return mrh_emulation::from_bits<T>(mrh_emulation::exchange(mrh_emulation::to_bits(v), src, w, "shfl_xor"));
}
template <class T> T mrh_shfl(T v, int src_lane, int width) {
    const unsigned lane = mrh_emulation::lane_id(), w = (unsigned)width;
    const unsigned src = (lane & ~(w - 1)) | ((unsigned)src_lane & (w - 1));
    return mrh_emulation::from_bits<T>(mrh_emulation::exchange(mrh_emulation::to_bits(v), src, w, "shfl"));
}

static inline hipError_t hipGetDeviceCount(int *n) { *n = 1; return hipSuccess; }
static inline hipError_t hipSetDevice(int d) { return d == 0 ? hipSuccess : hipErrorInvalidValue; }
static inline hipError_t hipMalloc(void **p, size_t n) {
    *p = std::malloc(n ? n : 1);
    return *p ? hipSuccess : hipErrorOutOfMemory;
}
static inline hipError_t hipFree(void *p) { std::free(p); return hipSuccess; }
static inline hipError_t hipHostMalloc(void **p, size_t n, unsigned) { return hipMalloc(p, n); }
static inline hipError_t hipHostFree(void *p) { return hipFree(p); }
/* Host registration is bookkeeping here (moe_router_hip.cpp keeps the table and checks the
 * ranges); the device sees host memory at its own address, as with unified addressing. */
static inline hipError_t hipHostRegister(void *, size_t, unsigned) { return hipSuccess; }
static inline hipError_t hipHostUnregister(void *) { return hipSuccess; }
static inline hipError_t hipHostGetDevicePointer(void **d, void *h, unsigned) {
    *d = h;
    return hipSuccess;
}
static inline hipError_t hipMemcpy(void *d, const void *s, size_t n, hipMemcpyKind) {
    std::memcpy(d, s, n);
    return hipSuccess;
}
/* Stream copies on this thread, for tests that a path copies nothing (mrh_emulation_copies). */
static thread_local long long mrh_emulated_copies = 0;
static inline hipError_t hipMemcpyAsync(void *d, const void *s, size_t n, hipMemcpyKind k, hipStream_t) {
    mrh_emulated_copies++;
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
static inline hipError_t hipDeviceSynchronize(void) { return hipSuccess; }
/* Events read the host clock: launches have finished by the time they return. */
typedef struct mrh_emulated_event { std::chrono::steady_clock::time_point at; } *hipEvent_t;
static inline hipError_t hipEventCreate(hipEvent_t *e) {
    *e = new mrh_emulated_event();
    return hipSuccess;
}
static inline hipError_t hipEventRecord(hipEvent_t e, hipStream_t) {
    e->at = std::chrono::steady_clock::now();
    return hipSuccess;
}
static inline hipError_t hipEventSynchronize(hipEvent_t) { return hipSuccess; }
static inline hipError_t hipEventElapsedTime(float *ms, hipEvent_t start, hipEvent_t stop) {
    *ms = std::chrono::duration<float, std::milli>(stop->at - start->at).count();
    return hipSuccess;
}
static inline hipError_t hipEventDestroy(hipEvent_t e) {
    delete e;
    return hipSuccess;
}
static inline const char *hipGetErrorName(hipError_t e) {
    switch (e) {
    case hipSuccess: return "hipSuccess";
    case hipErrorInvalidValue: return "hipErrorInvalidValue";
    case hipErrorOutOfMemory: return "hipErrorOutOfMemory";
    case hipErrorNoDevice: return "hipErrorNoDevice";
    case hipErrorHostMemoryAlreadyRegistered: return "hipErrorHostMemoryAlreadyRegistered";
    case hipErrorHostMemoryNotRegistered: return "hipErrorHostMemoryNotRegistered";
    default: return "hipErrorUnknown";
    }
}
static inline const char *hipGetErrorString(hipError_t e) {
    switch (e) {
    case hipSuccess: return "no error";
    case hipErrorInvalidValue: return "invalid argument";
    case hipErrorOutOfMemory: return "out of memory";
    case hipErrorNoDevice: return "no ROCm-capable device is detected";
    case hipErrorHostMemoryAlreadyRegistered: return "part or all of the requested memory range is already mapped";
    case hipErrorHostMemoryNotRegistered: return "pointer does not correspond to a registered memory region";
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

/* Runs the grid on the calling thread before returning (mrh_emulation::launch). Warp
 * collectives are emulated; block barriers and shared memory are not (no kernel uses them). */
#define MRH_LAUNCH(kernel, grid, block, stream, ...)                                             \
    do {                                                                                          \
        (void)(stream);                                                                           \
        auto mrh_thread = [&] { kernel(__VA_ARGS__); };                                           \
        mrh_emulation::launch(dim3(grid), dim3(block), mrh_emulation::invoke<decltype(mrh_thread)>, \
                              &mrh_thread);                                                       \
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
#define hipErrorHostMemoryAlreadyRegistered cudaErrorHostMemoryAlreadyRegistered
#define hipErrorHostMemoryNotRegistered cudaErrorHostMemoryNotRegistered
#define hipMemcpyHostToDevice cudaMemcpyHostToDevice
#define hipMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define hipStreamNonBlocking cudaStreamNonBlocking
#define hipHostMallocDefault cudaHostAllocDefault
#define hipHostMallocMapped cudaHostAllocMapped
#define hipHostRegisterMapped cudaHostRegisterMapped
#define hipHostRegister cudaHostRegister
#define hipHostUnregister cudaHostUnregister
#define hipHostGetDevicePointer cudaHostGetDevicePointer
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
#define hipDeviceSynchronize cudaDeviceSynchronize
typedef cudaEvent_t hipEvent_t;
#define hipEventCreate cudaEventCreate
#define hipEventRecord cudaEventRecord
#define hipEventSynchronize cudaEventSynchronize
#define hipEventElapsedTime cudaEventElapsedTime
#define hipEventDestroy cudaEventDestroy
#define MRH_RUNTIME_NAME "cuda"
#define MRH_WARP_SIZE 32
/* The calling lane's segment of `width` lanes: the lanes that take part (a block smaller than
 * a warp leaves the rest of the warp unlaunched, so the full-warp mask would name absent lanes). */
__device__ inline unsigned mrh_segment_mask(int width) {
    const unsigned lane = threadIdx.x % 32u;
    return width >= 32 ? 0xffffffffu : ((1u << width) - 1u) << (lane & ~(unsigned)(width - 1));
}
template <class T> __device__ inline T mrh_shfl_xor(T v, int lane_mask, int width) {
    return __shfl_xor_sync(mrh_segment_mask(width), v, lane_mask, width);
}
template <class T> __device__ inline T mrh_shfl(T v, int src_lane, int width) {
    return __shfl_sync(mrh_segment_mask(width), v, src_lane, width);
}
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
/* Each device pass of the fat binary sees its own target's wavefront size (64 on gfx9, 32 on
 * gfx10+ built in wave32); the host pass needs none. */
#if defined(__AMDGCN_WAVEFRONT_SIZE)
#define MRH_WARP_SIZE __AMDGCN_WAVEFRONT_SIZE
#else
#define MRH_WARP_SIZE 64
#endif
template <class T> __device__ inline T mrh_shfl_xor(T v, int lane_mask, int width) {
    return __shfl_xor(v, lane_mask, width);
}
template <class T> __device__ inline T mrh_shfl(T v, int src_lane, int width) {
    return __shfl(v, src_lane, width);
}
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
