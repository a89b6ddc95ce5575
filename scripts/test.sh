#!/usr/bin/env bash
# Runs every test: Swift Testing suites, then the pytest suites (numpy reference, daemon, clients).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
swift build --build-tests
swift test --skip-build --disable-xctest
python3 -m pytest -q tests/python
