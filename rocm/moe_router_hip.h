/*
 * moe_router_hip.h — the C ABI of libmoe_router_hip.so, the ROCm routing backend.
 *
 * Loaded at run time (dlopen) by Sources/MoERouting/ROCmBackend.swift, so that the package
 * builds and runs where no ROCm is installed. The same source builds three libraries:
 *   libmoe_router_hip.so       hipcc, AMD gfx targets (links libamdhip64)
 *   libmoe_router_cuda.so      nvcc, through hip_compat.h (not built by default)
 *   libmoe_router_hip_host.so  any C++ compiler, MRH_HOST_EMULATION: kernels run on the CPU
 *
 * Every function returning int32_t returns a runtime status: 0 is success, anything else is the
 * runtime's error code (hipError_t, or cudaError_t in the CUDA build); mrh_error_name and
 * mrh_error_string describe it. Enum values (method, scoring, dtype) are those of moe_kernels.h.
 */
#ifndef MOE_ROUTER_HIP_H
#define MOE_ROUTER_HIP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MRH_ABI_VERSION 3 /* 2: mrh_layer_create_ex, mrh_route_ex; 3: mrh_host_register, mrh_route_mapped,
                             mrh_stream_set_copy_above */

/* Only the functions below are exported (the library builds with -fvisibility=hidden), so two
 * builds of it (device and host emulation) can be loaded into one process side by side. */
#define MRH_API __attribute__((visibility("default")))

/* A layer resident on one device: its parameters, its bias (fp32 widening of the bias as stored
 * in the gate dtype) and, for a hash-routed layer, its tid2eid table, uploaded once at creation.
 * Immutable afterwards; shareable. */
typedef struct mrh_layer mrh_layer;

/* One worker's queue: a device stream, pinned host staging buffers (mapped for the device) and
 * device I/O buffers, grown on demand. Not thread-safe: one stream per concurrent caller. */
typedef struct mrh_stream mrh_stream;

MRH_API int32_t mrh_abi_version(void);

/* "hip", "cuda" or "host-emulation". */
MRH_API const char *mrh_runtime_name(void);

/* Number of usable devices. Without a device the status is the runtime's no-device code
 * (hipErrorNoDevice = 100) and *count is 0. */
MRH_API int32_t mrh_device_count(int32_t *count);

/* The device's architecture name (e.g. "gfx90a:sramecc+:xnack-"), NUL-terminated in buf. */
MRH_API int32_t mrh_device_name(int32_t device, char *buf, int32_t len);

MRH_API const char *mrh_error_name(int32_t status);
MRH_API const char *mrh_error_string(int32_t status);

/* Allocates the layer on `device` and uploads `bias` (num_experts floats, or NULL for methods
 * without bias). The layer must already be valid (BuiltLayer validates it). */
MRH_API int32_t mrh_layer_create(int32_t device, int32_t method, int32_t scoring, int32_t num_experts,
                         int32_t top_k, int32_t num_groups, int32_t topk_group,
                         int32_t renormalize, float routed_scaling_factor, const float *bias,
                         mrh_layer **out);

/* mrh_layer_create with the added schemes (shared/ROUTING.md, "Added schemes"): scoring may be
 * 2 (sqrtsoftplus) or 3 (none); renorm_epsilon > 0 renormalises by sum + eps, never skipped (0:
 * the contract's renormalisation); tid2eid, when not NULL, makes a hash-routed layer: [vocab,
 * top_k] expert ids in [0, num_experts), uploaded with the layer (requests must then carry token
 * ids). */
MRH_API int32_t mrh_layer_create_ex(int32_t device, int32_t method, int32_t scoring, int32_t num_experts,
                                    int32_t top_k, int32_t num_groups, int32_t topk_group,
                                    int32_t renormalize, float routed_scaling_factor, float renorm_epsilon,
                                    const float *bias, const int32_t *tid2eid, int64_t vocab,
                                    mrh_layer **out);
MRH_API void mrh_layer_destroy(mrh_layer *layer);

MRH_API int32_t mrh_stream_create(int32_t device, mrh_stream **out);
MRH_API void mrh_stream_destroy(mrh_stream *stream);

/*
 * Routes `tokens` rows of `logits` ([tokens, num_experts] in `dtype`) on the layer's device:
 * copies them into the stream's pinned staging buffer, runs the kernel, and copies
 * `weights`/`ids` ([tokens, top_k]) out of the output staging. Up to the stream's copy
 * threshold (mrh_stream_set_copy_above; by default every batch) the kernel reads and writes the
 * staging buffers in place, as mapped host memory; above it they are uploaded to and downloaded
 * from device memory. Synchronous: returns when the outputs are written. `fallback_bias`, when not NULL, replaces the layer's resident bias for this call
 * (the bias converted to the request dtype; uploaded with the logits). Non-finite inputs are
 * clamped; their count goes to *nonfinite. On error the outputs are not written.
 */
MRH_API int32_t mrh_route(const mrh_layer *layer, mrh_stream *stream, const float *fallback_bias,
                  const void *logits, int32_t dtype, int64_t tokens, float *weights,
                  int32_t *ids, int64_t *nonfinite);

/*
 * mrh_route with protocol version 2's extras, uploaded with the logits:
 *  - mask ([tokens] bytes, or NULL): a nonzero byte marks a padding row: its ids are -1 and its
 *    weights 0, its logits and token id are not read, its non-finite values not counted;
 *  - token_ids ([tokens] int32 or int64, token_id_bytes 4 or 8): required by a hash-routed layer
 *    (ignored otherwise); every unmasked one must be in [0, vocab) (checked here on the host:
 *    hipErrorInvalidValue otherwise, nothing written).
 */
MRH_API int32_t mrh_route_ex(const mrh_layer *layer, mrh_stream *stream, const float *fallback_bias,
                             const void *logits, int32_t dtype, int64_t tokens, const uint8_t *mask,
                             const void *token_ids, int32_t token_id_bytes, float *weights, int32_t *ids,
                             int64_t *nonfinite);

/*
 * Inline requests of more than `tokens` tokens on this stream copy their data to and from device
 * memory; smaller ones are read and written in place in mapped pinned staging (see mrh_route).
 * 0: every request copies; INT64_MAX (the default, unless the environment variable
 * MRH_COPY_ABOVE_TOKENS gives a count when the stream is made): none does. Negative:
 * hipErrorInvalidValue. mrh_stream_copy_above returns the threshold (-1 for a NULL stream).
 */
MRH_API int32_t mrh_stream_set_copy_above(mrh_stream *stream, int64_t tokens);
MRH_API int64_t mrh_stream_copy_above(const mrh_stream *stream);

/*
 * Zero copies from a client's memory. mrh_host_register pins `bytes` bytes at `ptr` and maps them
 * for `device` (hipHostRegister / cudaHostRegister, mapped); the library remembers the range.
 * hipErrorInvalidValue for a NULL pointer or 0 bytes, hipErrorHostMemoryAlreadyRegistered when
 * any byte of it is registered already. mrh_host_unregister takes a pointer mrh_host_register
 * was given (hipErrorHostMemoryNotRegistered otherwise); no route using the range may be running.
 * mrh_host_registered reports the live registrations and their bytes (leak checks). Thread-safe.
 */
MRH_API int32_t mrh_host_register(int32_t device, void *ptr, uint64_t bytes);
MRH_API int32_t mrh_host_unregister(void *ptr);
MRH_API void mrh_host_registered(int64_t *count, uint64_t *bytes);

/*
 * mrh_route_ex on registered memory: every non-NULL buffer (logits, mask, token_ids, weights,
 * ids) must lie wholly inside one registration on the layer's device (else hipErrorInvalidValue,
 * nothing written). One kernel launch reads the logits and writes weights and ids in place,
 * then one synchronisation; no copy. The fallback bias and the non-finite count go through the
 * stream's mapped staging. The memory may be shared with a process that rewrites it at any time:
 * token ids and mask are checked here before the launch, and the kernel reads each value once
 * and routes a row whose token id it finds out of range nowhere (ids -1, weights 0), so a
 * rewrite can change the answer but never makes the device read outside its buffers.
 */
MRH_API int32_t mrh_route_mapped(const mrh_layer *layer, mrh_stream *stream, const float *fallback_bias,
                                 const void *logits, int32_t dtype, int64_t tokens, const uint8_t *mask,
                                 const void *token_ids, int32_t token_id_bytes, float *weights, int32_t *ids,
                                 int64_t *nonfinite);

#ifdef __cplusplus
}
#endif

#endif
