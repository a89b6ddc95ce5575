"""moe-router-kernel-bench --allowance: issue 2's relative target (every preset within
2 x deepseek-v3's ns/token x E/256) measured in back-to-back pairs, so both sides of a ratio see
the same phase of a shared machine."""
import re
import subprocess

from conftest import find_binary

EXPERTS = {"deepseek-v2-lite": 64, "mixtral-8x7b": 8, "kimi-k2": 384}
ROW = re.compile(r"^(\S+)\s+(fp32|bf16|fp16)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$")


def test_shares_are_computed_per_pair_against_deepseek_v3():
    bench = find_binary("moe-router-kernel-bench", "MOE_ROUTER_KERNEL_BENCH")
    p = subprocess.run([str(bench), "--allowance", "--presets", "deepseek-v3,deepseek-v2-lite,mixtral-8x7b,kimi-k2",
                        "--dtypes", "fp32,bf16", "--batches", "16,64", "--rounds", "3", "--min-time", "0.03"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = [ROW.match(l) for l in p.stdout.splitlines()[2:] if l.strip()]
    assert all(rows) and len(rows) == 3 * 2 * 2, p.stdout  # deepseek-v3 itself is the reference, not a row
    seen = set()
    for m in rows:
        name, dtype, tokens = m.group(1), m.group(2), int(m.group(3))
        v3, preset, allowance, share_pairs, share_min = (float(m.group(i)) for i in range(4, 9))
        seen.add((name, dtype, tokens))
        assert v3 > 0 and preset > 0
        # the allowance column is 2 x v3 x E/256 of the printed median (one decimal each)
        assert abs(allowance - 2 * v3 * EXPERTS[name] / 256) <= 0.05 + 1e-3 * allowance, m.group(0)
        # a share is the preset's time over its allowance: positive, and of the order of the medians' ratio
        assert share_pairs > 0 and share_min > 0
        assert 0.25 < share_pairs / (preset / allowance) < 4, m.group(0)
    assert seen == {(n, d, t) for n in EXPERTS for d in ("fp32", "bf16") for t in (16, 64)}
