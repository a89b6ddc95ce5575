"""moe-router-bench against a real daemon: brief runs whose JSON must be well-formed and
error-free, an open-loop sweep with a knee, a soak with RSS/fd samples, and an SVG picture."""
import json
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import find_binary


@pytest.fixture(scope="module")
def bench():
    return find_binary("moe-router-bench", "MOE_ROUTER_BENCH")


def run_bench(bench, *args, timeout=120):
    p = subprocess.run([str(bench), *args, "--json", "--quiet"], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr + p.stdout
    return json.loads(p.stdout)


def test_closed_loop_is_well_formed_and_error_free(bench, start_daemon, tmp_path):
    d = start_daemon("--preset", "deepseek-v3", "--preset", "kimi-k2")
    svg = tmp_path / "bench.svg"
    out = run_bench(bench, "--endpoint", d.endpoint, "--layer", "kimi-k2", "--clients", "1,2",
                    "--batches", "1,64", "--transport", "both", "--seconds", "0.4", "--svg", str(svg))
    assert out["total_errors"] == 0 and out["layer"] == "kimi-k2"
    rows = out["closed_loop"]
    assert {(r["clients"], r["batch"], r["buffers"], r["transport"]) for r in rows} == {
        (c, b, s, t) for c in (1, 2) for b in ("1", "64") for s in ("inline", "shm") for t in ("zmq", "channel")}
    # every channel row was served by the channel, and each configuration compares both paths
    assert all(r["served_over_zmq"] == 0 for r in rows)
    pairs = out["channel_vs_zmq"]
    assert {(p["clients"], p["batch"], p["buffers"]) for p in pairs} == {
        (c, b, s) for c in (1, 2) for b in ("1", "64") for s in ("inline", "shm")}
    assert all(p["throughput_channel_over_zmq"] > 0 and p["p50_channel_over_zmq"] > 0 for p in pairs)
    for r in rows:
        lat = r["latency_us"]
        assert r["requests"] > 0 and r["errors"] == {}
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
        assert r["tokens"] == r["requests"] * int(r["batch"])
        assert r["echo"]["requests"] > 0 and r["kernel_us"] > 0
        assert r["daemon_over_echo_p50"] > 0 and r["throughput_over_echo"] > 0
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg") and len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) >= 2
    assert d.alive()


def test_mix_open_loop_knee_and_soak(bench, start_daemon):
    d = start_daemon("--preset", "deepseek-v3")
    out = run_bench(bench, "--endpoint", d.endpoint, "--clients", "2", "--mix", "1:0.8,64:0.2",
                    "--transport", "shm", "--seconds", "1", "--no-baselines", "--open-loop",
                    "--open-clients", "2", "--rate-start", "200", "--rate-factor", "4", "--rate-max", "3200",
                    "--soak-seconds", "3", "--daemon-pid", str(d.pid), timeout=180)
    assert out["closed_loop"][0]["batch"] == "1:0.8,64:0.2" and out["closed_loop"][0]["requests"] > 0
    # --transport shm: the option's old meaning (shm buffers over ZeroMQ)
    assert [(r["buffers"], r["transport"]) for r in out["closed_loop"]] == [("shm", "zmq")]
    steps = out["open_loop"]
    assert steps and steps[0]["offered_per_s"] == 200
    # 200 req/s is far below this daemon's knee (1 s steps: one stall of this shared VM must not
    # push a whole step past its p90 bound)
    assert "knee_per_s" in out, steps
    soak = out["soak"]
    assert soak["errors"] == {} and len(soak["samples"]) >= 2
    assert soak["offered_per_s"] == pytest.approx(0.8 * out["knee_per_s"]) and soak["kept_up"]
    assert all(s["rss_kib"] > 0 and s["fds"] > 0 for s in soak["samples"])


def test_bad_arguments_and_unknown_layer_fail_clearly(bench, start_daemon):
    d = start_daemon("--preset", "deepseek-v3")
    p = subprocess.run([str(bench), "--endpoint", d.endpoint, "--layer", "nope", "--quiet"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "nope" in (p.stderr + p.stdout)
    p = subprocess.run([str(bench), "--transport", "carrier-pigeon"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "transport" in p.stderr
    p = subprocess.run([str(bench), "--endpoint", d.endpoint, "--blocks", "0"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "--blocks" in p.stderr
    # each would crash (a zero rate), spin forever (a factor of 1) or measure nothing
    for args, flag in [(["--open-loop", "--rate-start", "0"], "--rate-start"),
                       (["--open-loop", "--rate-factor", "1"], "--rate-factor"),
                       (["--open-loop", "--rate-start", "900", "--rate-max", "100"], "--rate-max"),
                       (["--open-loop", "--open-clients", "0"], "--open-clients"),
                       (["--open-loop", "--open-batch", "0"], "--open-batch"),
                       (["--open-loop", "--open-transport", "pigeon"], "--open-transport"),
                       (["--open-loop", "--open-path", "pigeon"], "--open-path"),
                       (["--buffers", "pigeon"], "--buffers"),
                       (["--seconds", "0"], "--seconds"), (["--requests", "0"], "--requests")]:
        p = subprocess.run([str(bench), "--endpoint", d.endpoint, *args], capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and flag in p.stderr, (args, p.stderr)


def test_blocks_alternate_with_the_echo_and_add_up(bench, start_daemon):
    """--blocks N: N daemon blocks alternating with N echo blocks, reported as one row whose
    request count is the sum over the blocks (so it keeps growing with the total time)."""
    d = start_daemon("--preset", "deepseek-v3")
    out = run_bench(bench, "--endpoint", d.endpoint, "--clients", "2", "--batches", "64", "--transport", "shm",
                    "--seconds", "0.9", "--blocks", "3")
    (row,) = out["closed_loop"]
    assert row["errors"] == {} and row["requests"] > 0 and row["echo"]["requests"] > 0
    assert 0.7 < row["elapsed_s"] < 1.5, row["elapsed_s"]
    assert abs(row["requests_per_s"] * row["elapsed_s"] - row["requests"]) <= 1


def test_errors_are_counted_by_status_in_every_section_and_set_the_exit_status(bench, start_daemon):
    """A daemon with a queue of one and one worker answers most of eight clients' 4096-token
    requests with BUSY: the closed loop, the open-loop steps and the totals must all count
    them by status, the table must list them, and the exit status must be 3."""
    d = start_daemon("--preset", "deepseek-v3", "--queue-depth", "1", "--workers", "1")
    args = ["--endpoint", d.endpoint, "--clients", "8", "--batches", "4096", "--transport", "shm",
            "--seconds", "0.5", "--no-baselines", "--open-loop", "--open-clients", "8", "--open-batch", "4096",
            "--rate-start", "2000", "--rate-factor", "2", "--rate-max", "2000", "--quiet"]
    # The worker queue is the ZeroMQ path's: a channel's own thread runs its requests, so the
    # C client inside the bench stays on ZeroMQ here.
    zmq_only = dict(os.environ, MOE_ROUTER_CHANNEL="0")
    p = subprocess.run([str(bench), *args, "--json"], capture_output=True, text=True, timeout=120, env=zmq_only)
    assert p.returncode == 3, p.stderr
    out = json.loads(p.stdout)
    (closed,) = out["closed_loop"]
    assert closed["errors"].get("MOE_ERR_BUSY", 0) > 0 and set(closed["errors"]) == {"MOE_ERR_BUSY"}
    (step,) = out["open_loop"]
    assert step["errors"].get("MOE_ERR_BUSY", 0) > 0
    assert out["total_errors"] == sum(closed["errors"].values()) + sum(step["errors"].values())
    t = subprocess.run([str(bench), *args], capture_output=True, text=True, timeout=120, env=zmq_only)
    assert t.returncode == 3
    line = next(l for l in t.stdout.splitlines() if l.startswith("errors by status"))
    assert "MOE_ERR_BUSY=" in line
    assert d.alive()


def test_pipelined_echo_baseline(bench, start_daemon):
    """--pipelined-echo W: the echo also runs with W requests in flight per client; the row
    carries its rate and the daemon's throughput against it (pipelining only raises the rate)."""
    d = start_daemon("--preset", "deepseek-v3")
    out = run_bench(bench, "--endpoint", d.endpoint, "--clients", "2", "--batches", "64", "--transport", "shm",
                    "--seconds", "0.6", "--blocks", "2", "--pipelined-echo", "8")
    (row,) = out["closed_loop"]
    assert row["errors"] == {} and row["pipelined_echo_window"] == 8
    pipe = row["pipelined_echo"]
    assert pipe["requests"] > 0 and pipe["errors"] == {}
    assert pipe["requests_per_s"] > row["echo"]["requests_per_s"]
    assert row["throughput_over_pipelined_echo"] == pytest.approx(row["requests_per_s"] / pipe["requests_per_s"])
    p = subprocess.run([str(bench), "--endpoint", d.endpoint, "--pipelined-echo", "-1"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "--pipelined-echo" in p.stderr


def test_requests_caps_closed_rows_and_open_loop_steps(bench, start_daemon):
    d = start_daemon("--preset", "deepseek-v3")
    out = run_bench(bench, "--endpoint", d.endpoint, "--clients", "2", "--batches", "1", "--transport", "shm",
                    "--seconds", "5", "--requests", "100", "--no-baselines", "--open-loop", "--open-clients", "2",
                    "--rate-start", "1000", "--rate-factor", "2", "--rate-max", "2000")
    assert [r["requests"] for r in out["closed_loop"]] == [100]
    steps = out["open_loop"]  # 1000 and 2000 req/s (a step past its SLO is retried once: up to 4 rows)
    assert steps and all(s["requests"] == 100 for s in steps), steps
    assert {s["offered_per_s"] for s in steps} <= {1000, 2000}
    assert all(s["elapsed_s"] < 1 for s in steps)  # stopped at the cap, not after 5 s
