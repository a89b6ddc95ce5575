"""The kernels divide many values by one sum through its reciprocal (div_by_recip in
Sources/CMoEKernels/avx512_internal.h). The result must be the IEEE quotient in every bit, or
the fast paths would stop matching the exact path and the other backends: IntegrationTests/c/verify_div_recip.c
compares the two over structured and random divisors (every significand pair it samples, and
the whole dividend range including the tiny dividends that take a real division)."""
import subprocess

from conftest import KERNELS, build_kernel_check, kernels_with


def run(tmp_path, source_dir=KERNELS):
    exe = build_kernel_check(tmp_path, "verify_div_recip", source_dir, ("-DMRK_VERIFY_DIV_RECIP",), with_kernels=True)
    p = subprocess.run([str(exe), "quick"], capture_output=True, text=True, timeout=300)
    last = p.stdout.strip().splitlines()[-1].replace(",", "").split()
    return p.returncode, int(last[2]), int(last[4]), p.stdout  # "total compared N, differing M"


def test_division_by_the_reciprocal_is_the_ieee_quotient(tmp_path):
    rc, compared, differing, out = run(tmp_path)
    assert rc == 0 and differing == 0, out
    assert compared > 20_000_000, out


def test_the_check_sees_a_missing_correction_step(tmp_path):
    # the same kernels with the Markstein correction removed (q = RN(a / b) guessed as RN(a * y))
    src = kernels_with(tmp_path, "    return tiny ? _mm512_mask_div_ps(q2, tiny, a, b) : q2;",
                       "    (void)q2;\n    return tiny ? _mm512_mask_div_ps(q, tiny, a, b) : q;")
    rc, compared, differing, out = run(tmp_path, src)
    assert rc == 1 and differing > compared // 10, out
