"""No heap allocation per token or per small request: the kernel bench counts allocations per
request with a preloaded counting shim (IntegrationTests/c/alloc_count.c), every preset and input dtype,
the matched path on one thread and on all cores, and the fallback cast."""
import subprocess
from pathlib import Path

import pytest

from conftest import find_binary

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    out = tmp_path_factory.mktemp("alloc") / "alloc_count.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", str(ROOT / "IntegrationTests/c/alloc_count.c"), "-o", str(out), "-ldl"],
                   check=True, capture_output=True)
    return out


def test_routing_allocates_nothing_per_token_or_small_request(shim):
    bench = find_binary("moe-router-kernel-bench", "MOE_ROUTER_KERNEL_BENCH")
    p = subprocess.run([str(bench), "--count-allocations", "--batches", "1,64,4096"], capture_output=True, text=True,
                       timeout=300, env={"LD_PRELOAD": str(shim), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    rows = [l.split() for l in p.stdout.splitlines()[2:] if l.strip()]
    assert len(rows) == 14 * 3 * 3, p.stdout  # every preset (deepseek-v4-hash with token ids) x 3 dtypes x 3 batches
    for preset, dtype, tokens, one, cores, fallback in rows:
        where = f"{preset} {dtype} {tokens} tokens"
        assert float(one) == 0 and float(fallback) == 0, where
        if int(tokens) <= 64:
            assert float(cores) == 0, where
        else:  # split across threads: a few allocations per request (the dispatch), none per token
            assert float(cores) <= 8, where


def test_count_allocations_without_the_shim_says_what_to_do():
    bench = find_binary("moe-router-kernel-bench", "MOE_ROUTER_KERNEL_BENCH")
    p = subprocess.run([str(bench), "--count-allocations"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "LD_PRELOAD" in p.stderr
