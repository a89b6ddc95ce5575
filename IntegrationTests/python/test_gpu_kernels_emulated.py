"""The GPU routing kernels (rocm/route_kernels.h) on the host emulation, bit for bit against the
CPU reference, through rocm/check/gpu_check.cpp: the same checker scripts/gpu-check.sh runs on
a real GPU. No GPU or nvcc here: the emulation runs each warp's lanes as fibers that meet at
every shuffle (rocm/host_emulation.cpp), so lane-order mistakes show as they would on a device.
"""
import importlib.util
import os
import re
import subprocess

import pytest

from conftest import ROOT

INCLUDES = [f"-I{ROOT / 'rocm'}", f"-I{ROOT / 'Sources/CMoEKernels'}", f"-I{ROOT / 'Sources/CMoEKernels/include'}"]
VERDICT = re.compile(r"^gpu_check: (\d+) cases bit-identical, (\d+) mismatching", re.M)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def build_library(out, rocm_dir=ROOT / "rocm", warp_size=32):
    """The host-emulation library as scripts/build-rocm.sh builds it, from `rocm_dir`."""
    r = run(["c++", "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-DMRH_HOST_EMULATION",
             f"-DMRH_EMULATED_WARP_SIZE={warp_size}", "-ffp-contract=off", "-Wall", "-Werror", "-Wno-unknown-pragmas",
             f"-I{rocm_dir}", *INCLUDES[1:], "-x", "c++", str(rocm_dir / "moe_router_hip.cpp"),
             str(rocm_dir / "host_emulation.cpp"), "-o", str(out)])
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_check")
    objs = []
    for src, flags in ((ROOT / "Sources/CMoEKernels/kernels.c", ["-ffp-contract=off"]),
                       (ROOT / "rocm/check/generic_only.c", [])):
        obj = d / (src.stem + ".o")
        r = run(["cc", "-O2", *flags, *INCLUDES, "-c", str(src), "-o", str(obj)])
        assert r.returncode == 0, r.stderr
        objs.append(str(obj))
    exe = d / "gpu_check"
    r = run(["c++", "-std=c++17", "-O2", "-Wall", "-Werror", "-ffp-contract=off", *INCLUDES,
             str(ROOT / "rocm/check/gpu_check.cpp"), *objs, "-o", str(exe), "-ldl", "-lm"])
    assert r.returncode == 0, r.stderr
    return exe


def check(checker, library, *args):
    r = run([str(checker), str(library), "check", *args], timeout=120)
    m = VERDICT.search(r.stdout)
    assert m, r.stdout + r.stderr
    return r.returncode, int(m.group(1)), int(m.group(2)), r.stdout


LAYERS = 37


@pytest.mark.parametrize("warp_size,tokens", [(32, "1,64,257"), (64, "1,67")])
def test_every_layer_dtype_and_family_is_bit_identical(checker, tmp_path, warp_size, tokens):
    # every preset and extra shape (E = 1, 8, 17, 60, 160, 384, 1000, 1024; k up to 32; G up to
    # 128) x fp32/bf16/fp16 (bf16 resident bias, fp32/fp16 fallback bias) x 9 input families
    # (ties, all-equal rows, groups that tie, huge, tiny, NaN/Inf); 257 and 67 tokens leave
    # spare teams in the last block. The added schemes too: deepseek-v4 (sqrtsoftplus), scoring
    # none, renorm_epsilon (team, small-softmax and thread-per-token kernels), hash-routed layers
    # (softmax, none and sqrtsoftplus scoring; k = 32; int32 and int64 token ids), and padding
    # masks on the odd-numbered families.
    lib = build_library(tmp_path / "lib.so", warp_size=warp_size)
    rc, passed, failed, out = check(checker, lib, "--layers", "all", "--tokens", tokens)
    assert (rc, failed) == (0, 0), out
    assert passed == LAYERS * 3 * len(tokens.split(",")) * 9
    for name in ("deepseek-v4", "deepseek-v4-hash", "hash-ssp-e1024-k32", "ssp-e512-g128-eps", "none-biased-e64-g8"):
        assert re.search(rf"^{name} .* bit-identical$", out, re.M), out


@pytest.mark.parametrize("old,new,layers", [
    # ties: the higher index wins instead of the lower
    ("(uint32_t)~index", "(uint32_t)index", "deepseek-v3,qwen3-moe,mixtral-8x7b"),
    # the softmax denominator's lanes folded in the wrong order (1, 2, 4, 8)
    ("for (int m = kTeamLanes / 2; m >= 1; m >>= 1)\n        lane_sum", "for (int m = 1; m < kTeamLanes; m <<= 1)\n        lane_sum",
     "deepseek-v3,qwen3-moe,mixtral-8x7b"),
    # a hash layer's non-finite scores not clamped
    ("w[j] = mrk_is_finite(s) ? s : 0.0f;", "w[j] = s;", "deepseek-v4-hash,hash-softmax-e60-k4"),
    # a hash layer's column scored from the neighbouring lane
    ("const float v = mrh_shfl(held, e % kTeamLanes, kTeamLanes);",
     "const float v = mrh_shfl(held, (e + 1) % kTeamLanes, kTeamLanes);", "deepseek-v4-hash"),
    # the epsilon dropped from the weights
    ("mrk_finish_weights(w, p.top_k, p.renormalize, p.eps, p.rsf);",
     "mrk_finish_weights(w, p.top_k, p.renormalize, 0.0f, p.rsf);", "sigmoid-eps-e256-k8,ssp-grouped-eps"),
    # masked tokens' outputs left unwritten by the team kernel
    ("    if (masked) return write_masked(p.top_k, lane, t, weights, ids);\n", "    if (masked) return;\n", "deepseek-v4"),
])
def test_a_wrong_kernel_is_caught(checker, tmp_path, old, new, layers):
    lib = mutant_library(tmp_path, "route_kernels.h", old, new)
    rc, passed, failed, out = check(checker, lib, "--layers", layers, "--tokens", "64",
                                    "--families", "gaussian,wide,exact-ties,non-finite")
    assert rc == 1 and failed > 0 and "MISMATCH" in out


def mutant_library(tmp_path, changed, old, new):
    """The host-emulation library with `old` replaced by `new` in rocm/`changed`."""
    rocm = tmp_path / "rocm"
    rocm.mkdir()
    for f in ("moe_router_hip.cpp", "moe_router_hip.h", "hip_compat.h", "host_emulation.cpp", "route_kernels.h"):
        text = (ROOT / "rocm" / f).read_text()
        if f == changed:
            assert old in text
            text = text.replace(old, new)
        (rocm / f).write_text(text)
    return build_library(tmp_path / "lib.so", rocm_dir=rocm)


MAPPED_VERDICT = re.compile(r"^gpu_check mapped: (\d+) cases bit-identical, (\d+) mismatching; "
                            r"(\d+) API checks passed, (\d+) failed", re.M)


def mapped(checker, library, *args):
    r = run([str(checker), str(library), "mapped", *args], timeout=120)
    m = MAPPED_VERDICT.search(r.stdout)
    return r.returncode, m and tuple(int(g) for g in m.groups()), r.stdout + r.stderr


@pytest.mark.parametrize("warp_size", [32, 64])
def test_zero_copy_routes_are_bit_identical_and_checked(checker, tmp_path, warp_size):
    # mrh_route_mapped on a registered MAP_SHARED segment against mrh_route_ex: every layer x dtype
    # x {1, 9} tokens x 4 families (masks on the odd ones, int32/int64 token ids), no stream copy
    # on either; hash layers with token ids rewritten out of range (and unmasked) between the host
    # check and the launch route those rows nowhere; then the refusals (unregistered, straddling
    # one registration's end or two registrations, outputs elsewhere, overlapping or repeated
    # registrations, unknown unregisters), the copy threshold (set and MRH_COPY_ABOVE_TOKENS) and
    # no registration left behind.
    lib = build_library(tmp_path / "lib.so", warp_size=warp_size)
    rc, verdict, out = mapped(checker, lib, "--layers", "all", "--tokens", "1,9",
                              "--families", "gaussian,exact-ties,group-ties,non-finite")
    assert rc == 0 and verdict == (LAYERS * 3 * 2 * 4, 0, 25, 0), out
    assert 'MRH_COPY_ABOVE_TOKENS="lots" is not a token count; ignored' in out


@pytest.mark.parametrize("changed,old,new,layers", [
    # the kernel trusts the host's check of the token ids (a client rewrote them since)
    ("route_kernels.h", "const bool masked = padding || id < 0 || id >= vocab;", "const bool masked = padding;",
     "deepseek-v4-hash"),
    # a buffer that only starts inside a registration is taken
    ("moe_router_hip.cpp", "off > it->second.bytes || n > it->second.bytes - off", "off > it->second.bytes",
     "mixtral-8x7b"),
    # the inline path copies to the device although the threshold says in place
    ("moe_router_hip.cpp", "const bool copy = tokens > s->copy_above;", "const bool copy = true;", "mixtral-8x7b"),
])
def test_a_wrong_zero_copy_path_is_caught(checker, tmp_path, changed, old, new, layers):
    lib = mutant_library(tmp_path, changed, old, new)
    rc, verdict, out = mapped(checker, lib, "--layers", layers, "--tokens", "9", "--families", "gaussian,exact-ties")
    assert rc != 0 and (verdict is None or verdict[1] + verdict[3] > 0), out


def test_build_cuda_says_when_nvcc_is_absent():
    r = run([str(ROOT / "scripts/build-cuda.sh")], env={**os.environ, "NVCC": "/nonexistent/nvcc"})
    assert r.returncode != 0
    assert "nvcc not found" in r.stderr and "libmoe_router_cuda.so not built" in r.stderr


def test_gpu_check_dry_run_on_the_emulation(tmp_path):
    # scripts/gpu-check.sh end to end where there is no nvcc: every step on small sizes
    env = {**os.environ, "OUT": str(tmp_path), "GPU_CHECK_EMULATE": "1"}
    r = run(["bash", str(ROOT / "scripts/gpu-check.sh")], env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = (tmp_path / "gpu-check.txt").read_text()
    assert re.search(r"^gpu_check: \d+ cases bit-identical, 0 mismatching", report, re.M), report
    rows = [l.split() for l in report.splitlines() if l.startswith(("deepseek-v3 ", "kimi-k2 "))]
    assert len(rows) == 4 and all(row[2] == "team16" and row[-1] == "same" for row in rows), report
    # every preset has its kernel timed, the hash layer's alone (it has no thread-per-token twin)
    hash_rows = [l.split() for l in report.splitlines() if l.startswith("deepseek-v4-hash ")]
    assert len(hash_rows) == 2 and all(row[2] == "hash-team16" and float(row[3]) > 0 for row in hash_rows), report
    if importlib.util.find_spec("torch"):
        # the PyTorch baseline covers every row, DeepSeek-V4's hash gate included
        table = [l.split() for l in report.splitlines() if re.match(r"^[a-z][\w.-]+ +\d+ ", l)]
        assert table and all(re.fullmatch(r"[\d.]+", row[10]) for row in table), report
    log = (tmp_path / "gpu-check.log").read_text()
    assert "DRY RUN" in log and "bit-exactness PASSED" in log
