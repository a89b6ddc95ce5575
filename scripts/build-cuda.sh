#!/usr/bin/env bash
# Builds the GPU routing backend (rocm/) for NVIDIA GPUs with nvcc, through rocm/hip_compat.h:
#   build/cuda/libmoe_router_cuda.so    the C ABI of rocm/moe_router_hip.h; load it with
#                                       MOE_ROUTER_HIP_LIB=build/cuda/libmoe_router_cuda.so
#   build/cuda/kernel_timing            with --timing: rocm/check/kernel_timing.cpp, the kernels
#                                       timed alone (scripts/gpu-check.sh runs it)
#
# Usage: scripts/build-cuda.sh [--timing]
# Env:   MOE_ROUTER_CUDA_ARCHS  SM targets (default "80 90": A100, H100/H200), each built as
#                               SASS, plus the last one's PTX for later GPUs
#        NVCC, CC               compilers (default: nvcc on PATH or in /usr/local/cuda/bin, cc)
# Prints ptxas's registers / stack frame / spill lines for every kernel of the library (-Xptxas
# -v; one target at a time, so that ptxas's lines do not interleave): the team kernel should
# spill nothing; the thread-per-token kernel's stack frame holds its scratch rows.
# CI has no nvcc: this script is for GPU machines and fails with a message where nvcc is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

# nvcc on PATH, else where the CUDA toolkit installs it
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if ! command -v "$NVCC" >/dev/null; then
    echo "build-cuda: $NVCC not found: this machine has no CUDA toolkit; libmoe_router_cuda.so not built" >&2
    echo "build-cuda: (CI tests the kernels through host emulation: scripts/build-rocm.sh --host-only)" >&2
    exit 1
fi
OUT=build/cuda
mkdir -p "$OUT"
ARCHS=${MOE_ROUTER_CUDA_ARCHS:-"80 90"}
GENCODE=()
last=
for a in $ARCHS; do GENCODE+=("-gencode=arch=compute_$a,code=sm_$a"); last=$a; done
GENCODE+=("-gencode=arch=compute_$last,code=compute_$last")

# Bit-exactness with the CPU backend (Sources/CMoEKernels/moe_token.h): no contraction into FMA,
# IEEE fp32 division and square root, denormals kept.
EXACT=(--fmad=false -prec-div=true -prec-sqrt=true -ftz=false)
INCLUDES=(-Irocm -ISources/CMoEKernels -ISources/CMoEKernels/include)
NVCC_FLAGS=(-x cu -std=c++17 -O3 "${EXACT[@]}" "${GENCODE[@]}" "${INCLUDES[@]}")

timing_pid=
if [ "${1:-}" = --timing ]; then
    # the same kernels and flags; the CPU reference's conversions come from kernels.c (as C)
    echo "build-cuda: $NVCC -> $OUT/kernel_timing"
    (
        "${CC:-cc}" -O2 -ffp-contract=off "${INCLUDES[@]}" -c Sources/CMoEKernels/kernels.c -o "$OUT/kernels.o"
        "${CC:-cc}" -O2 "${INCLUDES[@]}" -c rocm/check/generic_only.c -o "$OUT/generic_only.o"
        "$NVCC" "${NVCC_FLAGS[@]}" --threads 0 -c rocm/check/kernel_timing.cpp -o "$OUT/kernel_timing.o"
        "$NVCC" "${GENCODE[@]}" "$OUT/kernel_timing.o" "$OUT/kernels.o" "$OUT/generic_only.o" -o "$OUT/kernel_timing"
    ) &
    timing_pid=$!
fi

echo "build-cuda: $NVCC for sm_${ARCHS// /, sm_} -> $OUT/libmoe_router_cuda.so"
"$NVCC" "${NVCC_FLAGS[@]}" -Xptxas -v -shared -Xcompiler -fPIC -Xcompiler -fvisibility=hidden \
    rocm/moe_router_hip.cpp -o "$OUT/libmoe_router_cuda.so.tmp" > "$OUT/ptxas.log" 2>&1 || {
    cat "$OUT/ptxas.log" >&2
    echo "build-cuda: nvcc failed" >&2
    exit 1
}
mv "$OUT/libmoe_router_cuda.so.tmp" "$OUT/libmoe_router_cuda.so"
echo "$ARCHS" > "$OUT/ARCHS"
# One line per kernel and target: its name (demangled), then ptxas's usage figures.
awk '/Compiling entry function/ { name = $0; sub(/.*function .?/, "", name); sub(/.? for .*/, "", name)
                                 arch = $NF; gsub(/\047/, "", arch); frame = "" }
     /bytes stack frame/ { frame = $0; sub(/^[ \t]+/, "", frame); frame = frame "; " }
     /Used [0-9]+ registers/ && name != "" { regs = $0; sub(/.*Used/, "Used", regs)
                                             print "build-cuda: " arch " " name ": " frame regs; name = "" }' "$OUT/ptxas.log" |
    { command -v c++filt >/dev/null && c++filt || cat; }
grep -iE 'warning|error' "$OUT/ptxas.log" >&2 || true
if [ -n "$timing_pid" ]; then
    wait "$timing_pid" || { echo "build-cuda: building kernel_timing failed" >&2; exit 1; }
fi
