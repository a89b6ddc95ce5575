"""moe-router-latency-bench end to end, briefly: every section it prints for issue 18 (1-token
routes over ZeroMQ and a channel beside the echo and futex baselines, 64-token routes against
the in-process kernel, the idle cost of 8 open channels) comes out measured, with either
channel threading of the daemon it starts. The figures themselves are benchmarks
(docs/PERFORMANCE.md), not asserted here."""
import re
import subprocess

import pytest

from conftest import find_binary


@pytest.mark.parametrize("threads", ["0", "1"])
def test_a_short_run_measures_every_section(threads):
    exe = find_binary("moe-router-latency-bench", "MOE_ROUTER_LATENCY_BENCH")
    p = subprocess.run([str(exe), "--iterations", "40", "--blocks", "1", "--placements", "split", "--batches", "64",
                        "--idle-seconds", "1", f"--daemon-arg=--channel-threads", f"--daemon-arg={threads}",
                        "--daemon", str(find_binary("moe-routerd", "MOE_ROUTERD"))],
                       capture_output=True, text=True, timeout=240)
    out = p.stdout
    assert p.returncode == 0, (out[-2000:], p.stderr[-2000:])
    number = r"([0-9.]+)"
    for pattern in [rf"\[split\]   route 1 token over zmq    : p50 {number} us",
                    rf"\[split\]   route 1 token over channel: p50 {number} us",
                    rf"\[split\]   futex ping-pong \(2 processes\):  p50 {number} us",
                    rf"channel route 1 token back to back, worst placement: p50 {number} us",
                    rf"route 64 tokens via shm over channel: p50 {number} us",
                    rf"64 tokens, shm route over the channel: kernel \+ -?{number} us p50",
                    rf"idle, 8 channels open for {number} s: daemon {number} % of a core, clients {number} %"]:
        m = re.search(pattern, out)
        assert m, (pattern, out)
        assert all(float(g) >= 0 for g in m.groups())
    assert "NOT served" not in out and "not measured" not in out
