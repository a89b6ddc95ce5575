#!/usr/bin/env bash
# The GPU backend on an NVIDIA GPU, in one short run (docs/GPU.md): builds the CUDA library,
# checks it bit for bit against the CPU reference (copied and zero-copy routes), times the routing
# kernels, the library's host round trips (staged, copied, through a registered segment) and
# PyTorch eager on the same GPU, and prints one table.
#
# Usage: [OUT=DIR] scripts/gpu-check.sh
#   OUT                  where the results go (default build/gpu-check): gpu-check.txt (the
#                        table and the check's verdict), gpu-check.log (everything), *.tsv
#   GPU_CHECK_SECONDS    budget for the steps (default 270); the table is printed after it
#   GPU_CHECK_EMULATE=1  a dry run on the host-emulation library (also what happens where nvcc
#                        is absent): every step runs, on small sizes; timings are the CPU's
# Needs: nvcc (on PATH or in /usr/local/cuda/bin), g++/c++, cc, python3 (torch with CUDA for the baseline; without it that step is
# skipped). A failed step says why and the run goes on to the next step that can run; the exit
# status is 0 when the bit-exactness and zero-copy checks passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ -z "${GPU_CHECK_INNER:-}" ]; then
    rm -f "$OUT"/*.tsv "$OUT/gpu-check.txt"
    GPU_CHECK_INNER=1 timeout -k 5 "${GPU_CHECK_SECONDS:-270}" bash "$0" 2>&1 | tee "$OUT/gpu-check.log"
    [ "${PIPESTATUS[0]}" = 124 ] && echo "gpu-check: the steps ran out of time (GPU_CHECK_SECONDS)" | tee -a "$OUT/gpu-check.log"
    {
        echo "== gpu-check $(date -u +%FT%TZ) on $(cat "$OUT/device.txt" 2>/dev/null || echo '?')"
        cat "$OUT/ptxas.txt" 2>/dev/null
        grep -h '^gpu_check: [0-9]' "$OUT/check.txt" 2>/dev/null || echo "bit-exactness check: no verdict (see gpu-check.log)"
        grep -h 'MISMATCH' "$OUT/check.txt" 2>/dev/null | head -20
        grep -h '^gpu_check mapped: ' "$OUT/mapped.txt" 2>/dev/null || echo "zero-copy check: no verdict (see gpu-check.log)"
        echo
        timeout 30 python3 rocm/check/report.py "$OUT/kernel.tsv" "$OUT/route.tsv" "$OUT/torch.tsv"
    } > "$OUT/gpu-check.txt" 2>&1
    tee -a "$OUT/gpu-check.log" < "$OUT/gpu-check.txt"
    # the exit status says whether both checks passed
    grep -q '^gpu-check: bit-exactness PASSED' "$OUT/gpu-check.log" && grep -q '^gpu-check: zero copy PASSED' "$OUT/gpu-check.log"
    exit
fi

export PYTHONUNBUFFERED=1
B=build/gpu-check-bin
mkdir -p "$B"
INCLUDES=(-Irocm -ISources/CMoEKernels -ISources/CMoEKernels/include)
step() { echo; echo "== $* ($(date +%T))"; }
fail() { echo "gpu-check: FAILED: $*"; }

# Sizes: the full set on a GPU; small ones in emulation (a CPU emulates ~10^4-10^5 tokens/s).
MAIN_LAYERS=deepseek-v3,kimi-k2
V4_LAYERS=deepseek-v4,deepseek-v4-hash # the hash layer: its kernel alone (it has no thread-per-token twin)
OTHER_LAYERS=glm-4.5,glm-4.5-air,minimax-m2,deepseek-v2,deepseek-v2-lite,qwen3-moe,mixtral-8x7b,gpt-oss-120b,llama-4-maverick
export NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)} # as build-cuda.sh finds it
if [ "${GPU_CHECK_EMULATE:-0}" != 1 ] && command -v "$NVCC" >/dev/null; then
    EMULATE=0
    CHECK_ARGS=(--layers all --tokens 1,64,4096)
    MAIN_TOKENS=1,64,1024,4096,16384,65536 OTHER_TOKENS=1,4096 REPS=200 ROUTE_REPS=0
    MAPPED_ARGS=(--layers all --tokens 1,64,4096 --families gaussian,exact-ties,non-finite)
else
    EMULATE=1
    echo "gpu-check: DRY RUN on the host-emulation library (no nvcc, or GPU_CHECK_EMULATE=1): every step"
    echo "gpu-check: runs, on small sizes; the timings are of the CPU emulating the GPU, not of a GPU"
    CHECK_ARGS=(--layers all --tokens 1,9 --families gaussian,exact-ties,group-ties,non-finite)
    MAIN_TOKENS=1,16 OTHER_TOKENS=1 REPS=2 ROUTE_REPS=5
    MAPPED_ARGS=(--layers all --tokens 1,9 --families gaussian,non-finite)
fi

step "machine"
if [ "$EMULATE" = 0 ]; then
    timeout 20 nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader |
        tee "$OUT/device.txt" || fail "nvidia-smi"
    timeout 20 "$NVCC" --version | tail -2
else
    echo "host emulation ($(uname -m), $(nproc) cores)" | tee "$OUT/device.txt"
fi
echo "cores: $(nproc); $(c++ --version | head -1); $(python3 --version 2>&1)"

step "build: the library and the timing program, the checker meanwhile"
if [ "$EMULATE" = 0 ]; then
    LIB=build/cuda/libmoe_router_cuda.so TIMING=build/cuda/kernel_timing
    timeout 200 scripts/build-cuda.sh --timing > "$OUT/build-cuda.txt" 2>&1 &
    cuda_build=$!
else
    LIB=build/rocm/libmoe_router_hip_host.so TIMING=$B/kernel_timing
fi
cc -O2 -ffp-contract=off "${INCLUDES[@]}" -c Sources/CMoEKernels/kernels.c -o "$B/kernels.o" &&
    cc -O2 "${INCLUDES[@]}" -c rocm/check/generic_only.c -o "$B/generic_only.o" &&
    c++ -std=c++17 -O2 -ffp-contract=off "${INCLUDES[@]}" rocm/check/gpu_check.cpp "$B/kernels.o" \
        "$B/generic_only.o" -o "$B/gpu_check" -ldl -lm || fail "building the checker"
if [ "$EMULATE" = 0 ]; then
    wait "$cuda_build" || fail "scripts/build-cuda.sh --timing"
    cat "$OUT/build-cuda.txt"
    grep '^build-cuda: sm_' "$OUT/build-cuda.txt" > "$OUT/ptxas.txt"
    cp build/cuda/ptxas.log "$OUT/ptxas.log" 2>/dev/null
else
    scripts/build-rocm.sh --host-only || fail "scripts/build-rocm.sh --host-only"
    c++ -std=c++17 -O2 -ffp-contract=off -Wno-unknown-pragmas -DMRH_HOST_EMULATION "${INCLUDES[@]}" \
        rocm/check/kernel_timing.cpp rocm/host_emulation.cpp "$B/kernels.o" "$B/generic_only.o" \
        -o "$TIMING" -lm || fail "building kernel_timing (host emulation)"
    echo "(host emulation: no ptxas)" > "$OUT/ptxas.txt"
fi
"$TIMING" --list > "$OUT/layers.tsv" 2>/dev/null || fail "kernel_timing --list"
echo "kernel per layer (layer, method, kernel):"
awk -F'\t' '{ printf "  %-24s %-20s %s\n", $1, $2, $11 }' "$OUT/layers.tsv"

step "bit-exactness: $LIB against the CPU reference (${CHECK_ARGS[*]})"
timeout 90 "$B/gpu_check" "$LIB" check "${CHECK_ARGS[@]}" | tee "$OUT/check.txt"
case "${PIPESTATUS[0]}" in
0) echo "gpu-check: bit-exactness PASSED" ;;
124) fail "bit-exactness check timed out" ;;
*) fail "bit-exactness check (mismatches above, or the library could not run)" ;;
esac

step "zero copy: mrh_route_mapped on registered host memory against mrh_route_ex (${MAPPED_ARGS[*]})"
timeout 60 "$B/gpu_check" "$LIB" mapped "${MAPPED_ARGS[@]}" > "$OUT/mapped.txt" 2>&1
rc=$?
grep -v 'bit-identical$' "$OUT/mapped.txt" | head -40
[ "$rc" = 0 ] && echo "gpu-check: zero copy PASSED" || fail "zero-copy check (status $rc: mismatches or refusals above)"

step "kernels alone: team vs thread-per-token, device-resident, $REPS back-to-back launches"
{
    timeout 60 "$TIMING" --layers "$MAIN_LAYERS" --tokens "$MAIN_TOKENS" --reps "$REPS" || fail "kernel timing, $MAIN_LAYERS"
    timeout 30 "$TIMING" --layers "$V4_LAYERS" --tokens "$MAIN_TOKENS" --reps "$REPS" || fail "kernel timing, $V4_LAYERS"
    timeout 30 "$TIMING" --layers "$OTHER_LAYERS" --tokens "$OTHER_TOKENS" --reps "$REPS" || fail "kernel timing, other layers"
} | tee "$OUT/kernel.tsv"

step "whole routes, host memory in and out (wall clock): staged in place, copied, through a registered segment"
{
    timeout 60 "$B/gpu_check" "$LIB" time --layers "$MAIN_LAYERS" --tokens "$MAIN_TOKENS" --reps "$ROUTE_REPS" ||
        fail "route timing, $MAIN_LAYERS"
    timeout 40 "$B/gpu_check" "$LIB" time --layers "$V4_LAYERS" --tokens "$MAIN_TOKENS" --reps "$ROUTE_REPS" ||
        fail "route timing, $V4_LAYERS"
    timeout 20 "$B/gpu_check" "$LIB" time --layers "$OTHER_LAYERS" --tokens "$OTHER_TOKENS" --reps "$ROUTE_REPS" ||
        fail "route timing, other layers"
} | tee "$OUT/route.tsv"

step "PyTorch eager on the same device"
DEVICE=cuda
[ "$EMULATE" = 1 ] && DEVICE=cpu
if python3 -c 'import torch' 2>/dev/null; then
    {
        timeout 60 python3 rocm/check/torch_baseline.py --layers-tsv "$OUT/layers.tsv" --device "$DEVICE" \
            --layers "$MAIN_LAYERS" --tokens "$MAIN_TOKENS" || fail "PyTorch baseline, $MAIN_LAYERS"
        timeout 40 python3 rocm/check/torch_baseline.py --layers-tsv "$OUT/layers.tsv" --device "$DEVICE" \
            --layers "$V4_LAYERS" --tokens "$MAIN_TOKENS" || fail "PyTorch baseline, $V4_LAYERS"
        timeout 30 python3 rocm/check/torch_baseline.py --layers-tsv "$OUT/layers.tsv" --device "$DEVICE" \
            --layers "$OTHER_LAYERS" --tokens "$OTHER_TOKENS" || fail "PyTorch baseline, other layers"
    } | tee "$OUT/torch.tsv"
else
    fail "PyTorch baseline: python3 cannot import torch"
fi
