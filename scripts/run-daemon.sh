#!/usr/bin/env bash
# Sets up a fresh machine (Debian packages, release build) and runs moe-routerd in the
# foreground on the embedded default: the deepseek-v3 preset with its synthetic bias.
# Extra arguments go to moe-routerd (e.g. --preset kimi-k2 --metrics 127.0.0.1:9464).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --runtime
swift build -c release --product moe-routerd
[ "$#" -gt 0 ] || set -- --preset deepseek-v3
exec .build/release/moe-routerd "$@"
