#!/usr/bin/env bash
# Builds the ROCm routing backend (rocm/) into build/rocm/:
#   libmoe_router_hip.so       HIP kernels for AMD GPUs (hipcc), loaded by ROCmBackend at run time
#   libmoe_router_hip_host.so  the same source with MRH_HOST_EMULATION: kernels run on the CPU,
#                              so the kernel logic and the Swift plumbing are tested without a GPU
#
# Usage: scripts/build-rocm.sh [--host-only]
# Env:   MOE_ROUTER_HIP_ARCHS  gfx targets (default below: every one Debian's ROCm 5.2 device
#                              libraries support among current datacenter/workstation parts)
#        HIPCC, CXX            compilers (default: hipcc, c++)
# Needs (Debian 12): apt-get install hipcc   (pulls clang-15, lld-15, rocm-device-libs,
#                    libamdhip64-dev, libamd-comgr-dev, libhsa-runtime-dev)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=build/rocm
mkdir -p "$OUT"
ARCHS=${MOE_ROUTER_HIP_ARCHS:-"gfx906 gfx908 gfx90a gfx940 gfx1030"}
INCLUDES=(-Irocm -ISources/CMoEKernels -ISources/CMoEKernels/include)
# Bit-exactness with the CPU backend (Sources/CMoEKernels/moe_token.h): no contraction into FMA,
# IEEE fp32 division, denormals kept.
EXACT=(-ffp-contract=off)

CXX=${CXX:-c++}
echo "build-rocm: host emulation with $CXX -> $OUT/libmoe_router_hip_host.so"
"$CXX" -std=c++17 -O2 -fPIC -shared -fvisibility=hidden -DMRH_HOST_EMULATION "${EXACT[@]}" -Wall -Wno-unknown-pragmas \
    "${INCLUDES[@]}" -x c++ rocm/moe_router_hip.cpp rocm/host_emulation.cpp -o "$OUT/libmoe_router_hip_host.so.tmp"
mv "$OUT/libmoe_router_hip_host.so.tmp" "$OUT/libmoe_router_hip_host.so"

[ "${1:-}" = "--host-only" ] && exit 0

HIPCC=${HIPCC:-hipcc}
if ! command -v "$HIPCC" >/dev/null; then
    echo "build-rocm: $HIPCC not found (apt-get install hipcc); device library not built" >&2
    exit 1
fi
OFFLOAD=()
for a in $ARCHS; do OFFLOAD+=("--offload-arch=$a"); done
echo "build-rocm: $HIPCC for $ARCHS -> $OUT/libmoe_router_hip.so"
# hipcc runs rocm_agent_enumerator only when no --offload-arch is given; we always give them.
"$HIPCC" -std=c++17 -O3 -fPIC -shared -fvisibility=hidden "${OFFLOAD[@]}" "${EXACT[@]}" \
    -fno-gpu-flush-denormals-to-zero -fhip-fp32-correctly-rounded-divide-sqrt \
    -Wno-unknown-pragmas "${INCLUDES[@]}" -x hip rocm/moe_router_hip.cpp \
    -o "$OUT/libmoe_router_hip.so.tmp"
mv "$OUT/libmoe_router_hip.so.tmp" "$OUT/libmoe_router_hip.so"
echo "$ARCHS" > "$OUT/ARCHS"

# Guard: the device IR must hold no fused multiply-add, contractable operation or approximate
# division, since any of them would break bit-exactness with the CPU backend. (The ISA does hold
# v_fma: the correctly rounded division expansion, which is exact by construction.)
first_arch=${ARCHS%% *}
"$HIPCC" -std=c++17 -O3 --offload-arch="$first_arch" --cuda-device-only -S -emit-llvm "${EXACT[@]}" \
    -fno-gpu-flush-denormals-to-zero -fhip-fp32-correctly-rounded-divide-sqrt \
    -Wno-unknown-pragmas -Wno-unused-command-line-argument "${INCLUDES[@]}" -x hip \
    rocm/moe_router_hip.cpp -o "$OUT/device-$first_arch.ll"
if grep -nE 'fmuladd|llvm\.fma\.|(fadd|fsub|fmul|fdiv) [a-z ]*(contract|fast|afn)|!fpmath' \
    "$OUT/device-$first_arch.ll"; then
    echo "build-rocm: device code for $first_arch is not bit-exact (see the lines above)" >&2
    exit 1
fi
echo "build-rocm: device IR for $first_arch checked: no FMA, no contraction, IEEE division"

# Guard: the fat binary holds a code object for every requested target.
BUNDLER=$(command -v clang-offload-bundler clang-offload-bundler-15 2>/dev/null | head -1 || true)
if [ -n "$BUNDLER" ]; then
    objcopy -O binary --only-section=.hip_fatbin "$OUT/libmoe_router_hip.so" "$OUT/fatbin.bin"
    bundled=$("$BUNDLER" --list --type=o --input="$OUT/fatbin.bin")
    rm -f "$OUT/fatbin.bin"
    for a in $ARCHS; do
        grep -q -- "--$a\$" <<<"$bundled" || { echo "build-rocm: no code object for $a" >&2; exit 1; }
    done
    echo "build-rocm: code objects present for $ARCHS"
fi
