#!/usr/bin/env bash
# Compares the CPU routing kernels of two git revisions (default: HEAD and the working tree)
# in one process, alternating A and B, after checking they produce identical outputs.
#   scripts/kernel-ab.sh [REV_A [REV_B|- [LAYERS [DTYPES [TOKENS [ROUNDS]]]]]]
#   defaults: A = HEAD, B = - (the working tree), deepseek-v3 fp32,bf16 64,4096 40
#   A DTYPES entry DA/DB (e.g. fp32/bf16) routes A in DA and B in DB: with A = B, a same-run
#   comparison of two input dtypes. REV_B = threads: REV_A's kernel on 1 thread vs 2 POSIX
#   threads on the two halves of the batch (the machine's ceiling for a 2-thread backend).
# Builds each side's Sources/CMoEKernels with the flags of Package.swift into build/kernel-ab/.
set -euo pipefail
cd "$(dirname "$0")/.."
a=${1:-HEAD}; b=${2:--}
layers=${3:-deepseek-v3}; dtypes=${4:-fp32,bf16}; sizes=${5:-64,4096}; rounds=${6:-40}
out=build/kernel-ab; mkdir -p "$out"
cc=${CC_KERNELS:-clang}
build_side() {  # REV NAME
    local src="$out/$2-src"; rm -rf "$src"; mkdir -p "$src"
    if [ "$1" = - ]; then cp -r Sources/CMoEKernels/. "$src/"; else git archive "$1" Sources/CMoEKernels | tar -x -C "$src" --strip-components=2; fi
    $cc -O3 -ffp-contract=off -fPIC -shared -I"$src/include" -I"$src" "$src"/*.c -o "$out/$2.so" -lm
}
build_side "$a" A
if [ "$b" = threads ]; then b_so=threads; else build_side "$b" B; b_so="$out/B.so"; fi
$cc -O2 -Wall -ISources/CMoEKernels/include scripts/kernel-ab/kernel_ab.c -o "$out/kernel_ab" -ldl -lpthread
echo "A = $a, B = ${b/#-/working tree}"
for l in ${layers//,/ }; do for d in ${dtypes//,/ }; do for t in ${sizes//,/ }; do
    "$out/kernel_ab" "$out/A.so" "$b_so" "$l" "$d" "$t" "$rounds"
done; done; done
