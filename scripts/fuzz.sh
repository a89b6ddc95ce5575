#!/usr/bin/env bash
# Builds moe-router-fuzz with libFuzzer and AddressSanitizer (Swift's coverage instrumentation)
# and runs each target — decoder (the request core), config (the YAML loader), checkpoint
# (config.json and safetensors) — from the checked-in corpus (IntegrationTests/fuzz/corpus).
#   scripts/fuzz.sh                 30 s per target (scripts/test.sh runs this: 1.5 minutes)
#   scripts/fuzz.sh --seconds N     N seconds per target
#   scripts/fuzz.sh --runs N        N executions per target (the long run: --runs 10000000)
# New inputs go to a scratch corpus (FUZZ_WORK, default .build-fuzz/work), never into the repo;
# a crash leaves its input in FUZZ_WORK/artifacts and fails the script. docs/RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=(-max_total_time=30)
case "${1:-}" in
    --seconds) limit=(-max_total_time="$2") ;;
    --runs) limit=(-runs="$2") ;;
    "") ;;
    *) echo "usage: scripts/fuzz.sh [--seconds N | --runs N]" >&2; exit 64 ;;
esac
# Coverage instrumentation as -sanitize=fuzzer gives it, but libFuzzer without its main: SwiftPM
# links an executable's own entry point as main, which calls LLVMFuzzerRunDriver.
toolchain=$(dirname "$(readlink -f "$(command -v swiftc)")")/..
fuzzer_lib=$(ls "$toolchain"/lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a 2>/dev/null | head -1)
[ -n "$fuzzer_lib" ] || { echo "no libclang_rt.fuzzer_no_main in the Swift toolchain ($toolchain)" >&2; exit 1; }
swift build -c release --scratch-path .build-fuzz --product moe-router-fuzz -Xswiftc -DMOE_FUZZING \
    -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,trace-cmp,inline-8bit-counters,pc-table \
    -Xlinker "$fuzzer_lib" -Xlinker -lstdc++ 2>&1 | grep -v "Cannot export local symbol" || true
bin=.build-fuzz/release/moe-router-fuzz
[ -x "$bin" ] || { echo "fuzz build failed" >&2; exit 1; }
work="${FUZZ_WORK:-.build-fuzz/work}"
mkdir -p "$work/artifacts"
status=0
for target in decoder config checkpoint; do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    # -rss_limit_mb bounds a leak; -timeout a hang (seconds per input).
    if MOE_FUZZ_TARGET=$target ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=suppressions=IntegrationTests/fuzz/lsan.supp "$bin" "${limit[@]}" -rss_limit_mb=4096 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$work/artifacts/$target-" \
        "$work/$target" "IntegrationTests/fuzz/corpus/$target" > "$log" 2>&1; then
        runs=$(grep -m1 "stat::number_of_executed_units" "$log" | awk '{print $2}')
        rate=$(grep -m1 "stat::average_exec_per_sec" "$log" | awk '{print $2}')
        cov=$(grep -E "^#[0-9]+.*(DONE|cov:)" "$log" | tail -1 | grep -o "cov: [0-9]*" || true)
        echo "fuzz $target: $runs executions, $rate/s, $cov, 0 crashes"
    else
        status=1
        echo "fuzz $target: FAILED (log: $log)" >&2
        grep -E "ERROR|SUMMARY|Test unit written" "$log" | head -5 >&2
    fi
done
exit $status
