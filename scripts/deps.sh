#!/usr/bin/env bash
# Installs what building and testing need, idempotently: Debian packages and Python modules.
# Swift itself (6.1+) must already be on PATH.
set -euo pipefail

# hipcc (Debian 12: ROCm 5.2) pulls clang-15, lld-15, rocm-device-libs, libamdhip64-dev/-5 and the
# HSA runtime: what scripts/build-rocm.sh needs to compile the HIP kernels (docs/ROCM.md).
APT_PACKAGES=(libzmq3-dev libbsd-dev pkg-config python3-pip hipcc)
PIP_PACKAGES=(pyzmq numpy pytest)
if [ "${1:-}" = "--runtime" ]; then  # just what building and running the daemon needs
    APT_PACKAGES=(libzmq3-dev libbsd-dev pkg-config)
    PIP_PACKAGES=()
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] || [ "${MOE_ROUTER_APT_UPDATE:-0}" = 1 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]:-${APT_PACKAGES[@]}}"
fi

if [ "${#PIP_PACKAGES[@]}" -gt 0 ] && ! python3 -c "import zmq, numpy, pytest" 2>/dev/null; then
    python3 -m pip install -q "${PIP_PACKAGES[@]}" 2>/dev/null \
        || python3 -m pip install -q --break-system-packages "${PIP_PACKAGES[@]}"
fi
