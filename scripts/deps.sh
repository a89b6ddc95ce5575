#!/usr/bin/env bash
# Installs what building and testing need, idempotently: Debian packages and Python modules.
# Swift itself (6.1+) must already be on PATH.
set -euo pipefail

# hipcc (Debian 12: ROCm 5.2) pulls clang-15, lld-15, rocm-device-libs, libamdhip64-dev/-5 and the
# HSA runtime: what scripts/build-rocm.sh needs to compile the HIP kernels (docs/ROCM.md).
APT_PACKAGES=(libzmq3-dev libbsd-dev pkg-config python3-pip hipcc)
PIP_PACKAGES=(pyzmq numpy pytest safetensors)
# torch (CPU build) for the engine-hook tests (IntegrationTests/python/test_integrations.py).
TORCH=1
if [ "${1:-}" = "--runtime" ]; then  # just what building and running the daemon needs
    APT_PACKAGES=(libzmq3-dev libbsd-dev pkg-config)
    PIP_PACKAGES=()
    TORCH=0
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

pip_install() {
    python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@"
}
if [ "${#PIP_PACKAGES[@]}" -gt 0 ] && ! python3 -c "import zmq, numpy, pytest, safetensors" 2>/dev/null; then
    pip_install "${PIP_PACKAGES[@]}"
fi
# The CPU wheel (~190 MB): a local wheel directory or PyPI mirror that carries it, else
# PyTorch's CPU index, else PyPI's default build (large: it pulls the CUDA libraries).
if [ "$TORCH" = 1 ] && ! python3 -c "import torch" 2>/dev/null; then
    pip_install "torch==2.13.0+cpu" \
        || pip_install torch --index-url https://download.pytorch.org/whl/cpu \
        || pip_install torch
fi
