"""scripts/kernel-ab.sh: two kernel builds (or two input dtypes) timed in one process."""
import re
import subprocess

from conftest import ROOT

LINE = re.compile(r"^deepseek-v3\s+(\S+)\s+16 tokens\s+A min\s+([\d.]+) mean\s+([\d.]+)\s+B min\s+([\d.]+) "
                  r"mean\s+([\d.]+) ns/token\s+B/A min ([\d.]+) mean ([\d.]+)$")


def test_compares_the_working_tree_with_itself_and_two_dtypes():
    out = subprocess.run([str(ROOT / "scripts" / "kernel-ab.sh"), "-", "-", "deepseek-v3", "fp32,fp32/bf16", "16", "3"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [LINE.match(l) for l in out.splitlines() if l.startswith("deepseek-v3")]
    assert len(rows) == 2 and all(rows), out
    assert [r.group(1) for r in rows] == ["fp32", "fp32/bf16"]
    for r in rows:
        a_min, a_mean, b_min, b_mean, ratio = (float(r.group(i)) for i in (2, 3, 4, 5, 6))
        assert 0 < a_min <= a_mean and 0 < b_min <= b_mean
        assert abs(ratio - b_min / a_min) < 0.01


def test_refuses_an_unknown_dtype():
    r = subprocess.run([str(ROOT / "scripts" / "kernel-ab.sh"), "-", "-", "deepseek-v3", "fp64", "16", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "bad arguments" in r.stderr


def test_threads_mode_compares_one_and_two_threads():
    out = subprocess.run([str(ROOT / "scripts" / "kernel-ab.sh"), "-", "threads", "deepseek-v3", "bf16", "64", "3"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    m = re.search(r"^deepseek-v3\s+bf16\s+64 tokens\s+1 thread min\s+([\d.]+) mean\s+([\d.]+)\s+2 threads min\s+([\d.]+) "
                  r"mean\s+([\d.]+) ns/token\s+speedup min/min ([\d.]+)x mean/mean ([\d.]+)x$", out, re.M)
    assert m, out
    one, two, speedup = float(m.group(1)), float(m.group(3)), float(m.group(5))
    assert one > 0 and two > 0 and abs(speedup - one / two) < 0.01


def test_accepts_the_softmax_presets_by_name_and_refuses_unknown_names():
    # deepseek-v2 (grouped softmax), deepseek-v2-lite (softmax, no renormalisation) by name;
    # a name the tool does not know is refused, not read as a METHOD:E:... spec
    out = subprocess.run([str(ROOT / "scripts" / "kernel-ab.sh"), "-", "-", "deepseek-v2,deepseek-v2-lite",
                          "fp32", "32", "2"], capture_output=True, text=True, timeout=300, check=True).stdout
    names = [l.split()[0] for l in out.splitlines() if "tokens" in l]
    assert names == ["deepseek-v2", "deepseek-v2-lite"], out
    r = subprocess.run([str(ROOT / "scripts" / "kernel-ab.sh"), "-", "-", "deepseek-v9", "fp32", "16", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "bad layer deepseek-v9" in r.stderr
