"""The AVX-512 exp, sigmoid and sqrtsoftplus reproduce the contract's scalar functions (moe_token.h)
bit for bit, and the sqrtsoftplus fast path's approximation stays within its bound:
IntegrationTests/c/verify_vector_math.c over a sample of every 257th fp32 bit pattern (its `full` mode
checks all 4.3e9 finite values, about 250 s)."""
import re
import subprocess

from conftest import KERNELS, build_kernel_check, kernels_with


def run(tmp_path, source_dir=KERNELS):
    exe = build_kernel_check(tmp_path, "verify_vector_math", source_dir)
    p = subprocess.run([str(exe), "quick"], capture_output=True, text=True, timeout=300)
    m = re.search(r"values (\d+): exp differ (\d+), sigmoid differ (\d+), sigmoid_small differ (\d+), "
                  r"sqrtsoftplus differ (\d+)", p.stdout)
    a = re.search(r"sqrtsoftplus approximation: max error (\S+) at x = \S+, bound (\S+)", p.stdout)
    assert m and a, p.stdout + p.stderr
    return p.returncode, [int(g) for g in m.groups()], (float(a.group(1)), float(a.group(2)))


def test_vector_exp_sigmoid_and_sqrtsoftplus_are_the_scalar_contract(tmp_path):
    rc, (n, e, s, ss, sp), (err, bound) = run(tmp_path)
    assert rc == 0 and (e, s, ss, sp) == (0, 0, 0, 0)
    assert n > 16_000_000
    # the cutoff below x = -20.5 (e^-10.25) is the largest error; the full run finds 3.5357e-5
    assert 3.5e-5 < err < bound <= 4e-5


def test_the_check_sees_a_fused_reduction_that_rounds_differently(tmp_path):
    # n * LN2_LO is not exact: folding it into an FMA changes r, and the check must notice
    src = kernels_with(
        tmp_path,
        "    __m512 r = _mm512_sub_ps(_mm512_fnmadd_ps(n, _mm512_set1_ps(MRK_LN2_HI), x),\n"
        "                             _mm512_mul_ps(n, _mm512_set1_ps(MRK_LN2_LO)));",
        "    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(MRK_LN2_LO),\n"
        "                                _mm512_fnmadd_ps(n, _mm512_set1_ps(MRK_LN2_HI), x));")
    rc, (n, e, s, ss, sp), _ = run(tmp_path, src)
    assert rc == 1 and e > 0 and sp > 0


def test_the_check_sees_a_sqrtsoftplus_whose_log_is_fused(tmp_path):
    # a step of the log's polynomial as one FMA rounds differently
    src = kernels_with(
        tmp_path,
        "    y = _mm512_add_ps(_mm512_mul_ps(y, f), _mm512_set1_ps(3.3333331174e-1f));",
        "    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(3.3333331174e-1f));")
    rc, (n, e, s, ss, sp), _ = run(tmp_path, src)
    assert rc == 1 and (e, s, ss) == (0, 0, 0) and sp > 0


def test_the_check_sees_an_approximation_beyond_its_bound(tmp_path):
    # a table reaching only down to -16.5: values below it are off by up to e^-8.25 = 2.6e-4
    src = kernels_with(tmp_path, "_mm512_max_ps(x, _mm512_set1_ps(-20.5f))", "_mm512_max_ps(x, _mm512_set1_ps(-16.5f))")
    rc, (n, e, s, ss, sp), (err, bound) = run(tmp_path, src)
    assert rc == 1 and sp == 0 and err > bound
