"""The kernels divide many values by one sum through its reciprocal (div_by_recip in
Sources/CMoEKernels/avx512_internal.h). The result must be the IEEE quotient in every bit, or
the fast paths would stop matching the exact path and the other backends: tests/c/verify_div_recip.c
compares the two over structured and random divisors (every significand pair it samples, and
the whole dividend range including the tiny dividends that take a real division)."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "Sources" / "CMoEKernels"


def build(tmp_path, *defines, source_dir=KERNELS):
    out = tmp_path / "verify_div_recip"
    subprocess.run(["clang", "-O2", "-ffp-contract=off", "-DMRK_VERIFY_DIV_RECIP", *defines,
                    f"-I{source_dir}/include", f"-I{source_dir}", *sorted(map(str, source_dir.glob("*.c"))),
                    str(ROOT / "tests" / "c" / "verify_div_recip.c"), "-o", str(out), "-lm"],
                   check=True, capture_output=True)
    return out


def counts(stdout):
    last = stdout.strip().splitlines()[-1].replace(",", "").split()
    return int(last[2]), int(last[4])  # "total compared N, differing M"


def test_division_by_the_reciprocal_is_the_ieee_quotient(tmp_path):
    p = subprocess.run([str(build(tmp_path)), "quick"], capture_output=True, text=True, timeout=300)
    compared, differing = counts(p.stdout)
    assert p.returncode == 0 and differing == 0, p.stdout
    assert compared > 20_000_000, p.stdout


def test_the_check_sees_a_missing_correction_step(tmp_path):
    # the same kernels with the Markstein correction removed (q = RN(a / b) guessed as RN(a * y))
    src = tmp_path / "k"
    subprocess.run(["cp", "-r", str(KERNELS), str(src)], check=True)
    h = src / "avx512_internal.h"
    text = h.read_text()
    assert "    return tiny ? _mm512_mask_div_ps(q2, tiny, a, b) : q2;" in text
    h.write_text(text.replace("    return tiny ? _mm512_mask_div_ps(q2, tiny, a, b) : q2;",
                              "    (void)q2;\n    return tiny ? _mm512_mask_div_ps(q, tiny, a, b) : q;"))
    p = subprocess.run([str(build(tmp_path, source_dir=src)), "quick"], capture_output=True, text=True, timeout=300)
    compared, differing = counts(p.stdout)
    assert p.returncode == 1 and differing > compared // 10, p.stdout
