#!/usr/bin/env bash
# Runs every test: Swift Testing suites, then the pytest suites (numpy reference, daemon, clients).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
python3 -m pip install -q -e python 2>/dev/null || python3 -m pip install -q --break-system-packages -e python
make -s clientlib examples   # the plain-C client library and the C/C++ examples the tests run
scripts/build-rocm.sh   # the HIP library, and its host-emulation build the ROCm tests run
swift build --build-tests
swift test --skip-build --disable-xctest
MOE_ROUTER_REQUIRE_TORCH=1 python3 -m pytest -q IntegrationTests/python
scripts/fuzz.sh --seconds 30   # libFuzzer + ASan on the decoder, config and checkpoint readers (docs/RELIABILITY.md)
