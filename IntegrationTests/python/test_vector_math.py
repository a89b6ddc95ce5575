"""The AVX-512 exp and sigmoid reproduce the contract's scalar functions (moe_token.h) bit for
bit: IntegrationTests/c/verify_vector_math.c over a sample of every 257th fp32 bit pattern (its `full`
mode checks all 4.3e9 finite values, about 100 s)."""
import re
import subprocess

from conftest import KERNELS, build_kernel_check, kernels_with


def run(tmp_path, source_dir=KERNELS):
    exe = build_kernel_check(tmp_path, "verify_vector_math", source_dir)
    p = subprocess.run([str(exe), "quick"], capture_output=True, text=True, timeout=300)
    m = re.search(r"values (\d+): exp differ (\d+), sigmoid differ (\d+), sigmoid_small differ (\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    return p.returncode, [int(g) for g in m.groups()]


def test_vector_exp_and_sigmoid_are_the_scalar_contract(tmp_path):
    rc, (n, e, s, ss) = run(tmp_path)
    assert rc == 0 and (e, s, ss) == (0, 0, 0)
    assert n > 16_000_000


def test_the_check_sees_a_fused_reduction_that_rounds_differently(tmp_path):
    # n * LN2_LO is not exact: folding it into an FMA changes r, and the check must notice
    src = kernels_with(
        tmp_path,
        "    __m512 r = _mm512_sub_ps(_mm512_fnmadd_ps(n, _mm512_set1_ps(MRK_LN2_HI), x),\n"
        "                             _mm512_mul_ps(n, _mm512_set1_ps(MRK_LN2_LO)));",
        "    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(MRK_LN2_LO),\n"
        "                                _mm512_fnmadd_ps(n, _mm512_set1_ps(MRK_LN2_HI), x));")
    rc, (n, e, s, ss) = run(tmp_path, src)
    assert rc == 1 and e > 0
