"""The AVX-512 exp and sigmoid reproduce the contract's scalar functions (moe_token.h) bit for
bit: tests/c/verify_vector_math.c over a sample of every 257th fp32 bit pattern (its `full`
mode checks all 4.3e9 finite values, about 100 s)."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "Sources" / "CMoEKernels"


def build(tmp_path, source_dir=KERNELS):
    out = tmp_path / "verify_vector_math"
    subprocess.run(["clang", "-O2", "-ffp-contract=off", f"-I{source_dir}/include", f"-I{source_dir}",
                    str(ROOT / "tests" / "c" / "verify_vector_math.c"), "-o", str(out), "-lm"],
                   check=True, capture_output=True)
    return out


def run(exe):
    p = subprocess.run([str(exe), "quick"], capture_output=True, text=True, timeout=300)
    m = re.search(r"values (\d+): exp differ (\d+), sigmoid differ (\d+), sigmoid_small differ (\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    return p.returncode, [int(g) for g in m.groups()]


def test_vector_exp_and_sigmoid_are_the_scalar_contract(tmp_path):
    rc, (n, e, s, ss) = run(build(tmp_path))
    assert rc == 0 and (e, s, ss) == (0, 0, 0)
    assert n > 16_000_000


def test_the_check_sees_a_fused_reduction_that_rounds_differently(tmp_path):
    # n * LN2_LO is not exact: folding it into an FMA changes r, and the check must notice
    src = tmp_path / "k"
    subprocess.run(["cp", "-r", str(KERNELS), str(src)], check=True)
    h = src / "avx512_internal.h"
    text = h.read_text()
    old = "    __m512 r = _mm512_sub_ps(_mm512_fnmadd_ps(n, _mm512_set1_ps(MRK_LN2_HI), x),\n                             _mm512_mul_ps(n, _mm512_set1_ps(MRK_LN2_LO)));"
    assert old in text
    h.write_text(text.replace(old, "    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(MRK_LN2_LO),\n"
                                   "                                _mm512_fnmadd_ps(n, _mm512_set1_ps(MRK_LN2_HI), x));"))
    rc, (n, e, s, ss) = run(build(tmp_path, src))
    assert rc == 1 and e > 0
