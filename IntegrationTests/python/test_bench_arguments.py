"""The benchmark tools refuse arguments that would crash, hang or measure nothing, naming the
flag (they exit with the usage status before measuring anything)."""
import subprocess

import pytest

from conftest import find_binary

CASES = [
    ("moe-router-kernel-bench", ["--batches", "0"], "--batches"),
    ("moe-router-kernel-bench", ["--batches", "64,abc"], "--batches"),
    ("moe-router-kernel-bench", ["--min-time", "0"], "--min-time"),
    ("moe-router-kernel-bench", ["--rounds", "0"], "--rounds"),
    ("moe-router-kernel-bench", ["--kernel", "quantum"], "quantum"),
    ("moe-router-kernel-bench", ["--presets", "nope"], "nope"),
    ("moe-router-kernel-bench", ["--allowance", "--presets", "deepseek-v3"], "--allowance"),
    ("moe-router-latency-bench", ["--iterations", "0"], "--iterations"),
    ("moe-router-latency-bench", ["--blocks", "0"], "--blocks"),
    ("moe-router-latency-bench", ["--placements", "same-cpu,sideways"], "--placements"),
    ("moe-router-latency-bench", ["--batches", "64,0"], "--batches"),
    ("moe-router-latency-bench", ["--idle-seconds", "-1"], "--idle-seconds"),
]


@pytest.mark.parametrize("tool,args,needle", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_bad_arguments_are_refused_clearly(tool, args, needle):
    exe = find_binary(tool, "MOE_" + tool.upper().replace("-", "_"))
    p = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 64, (p.returncode, p.stdout[-500:], p.stderr[-500:])
    assert needle in p.stderr
