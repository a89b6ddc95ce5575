#!/usr/bin/env python3
"""The soak (not in CI; docs/RELIABILITY.md): a release moe-routerd under moe-router-bench's
open-loop load at 80 % of the knee it measures first, for SECONDS (default 600), while
- mixed-size clients (1, 64 and 4096 tokens; inline and shared memory) route in closed loops and
  count every answer that never came,
- a client holding registrations and a request in flight is SIGKILLed every 10 s,
- the daemon is told to reload (SIGHUP) every 30 s.
Prints lost answers, reloads, kills, and the daemon's RSS and fds over the soak; exits 1 if an
answer was lost, an error other than BUSY came back, or RSS or fds grew more than 5 %.

    scripts/soak.py [--seconds 600]        (builds release binaries first)
"""
import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "IntegrationTests/python"))
sys.path.insert(0, str(ROOT / "python"))
import numpy as np  # noqa: E402
from moe_router import BusyError, Client, ClientTimeoutError, MoERouterError  # noqa: E402

VICTIM = """
import sys, time
sys.path.insert(0, {python!r})
import numpy as np
from moe_router import Client
c = Client(sys.argv[1], timeout_ms=30000)
s = c.session("deepseek-v3", max_tokens=100000)
s.input[:] = np.random.default_rng(0).standard_normal(s.input.shape).astype(np.float32)
print("ready", flush=True)
while True:
    s.route(100000)
"""


def sample(pid):
    rss = int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=600)
    args = ap.parse_args()
    subprocess.run(["swift", "build", "-c", "release", "--product", "moe-routerd"], cwd=ROOT, check=True)
    subprocess.run(["swift", "build", "-c", "release", "--product", "moe-router-bench"], cwd=ROOT, check=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="moe-soak-"))
    config = tmp / "soak.yaml"
    config.write_text("workers: 2\nlayers:\n  - preset: deepseek-v3\n  - preset: kimi-k2\n  - preset: mixtral-8x7b\n")
    endpoint = f"ipc://{tmp}/routerd.sock"
    log = open(tmp / "daemon.log", "w")
    daemon = subprocess.Popen([str(ROOT / ".build/release/moe-routerd"), "--config", str(config), "--endpoint", endpoint],
                              stdout=log, stderr=subprocess.STDOUT)
    while not (tmp / "routerd.sock").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    bench = subprocess.Popen([str(ROOT / ".build/release/moe-router-bench"), "--endpoint", endpoint, "--open-loop",
                              "--open-clients", "4", "--open-batch", "64", "--soak-seconds", str(args.seconds),
                              "--daemon-pid", str(daemon.pid), "--no-baselines", "--quiet", "--clients", "1",
                              "--batches", "1", "--seconds", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The soak starts after the bench's sweep: wait for its sampling to begin (RSS sampled by us too).
    stop = threading.Event()
    counts = dict(answers=0, lost=0, busy=0, errors=0, kills=0, reloads=0)
    lock = threading.Lock()

    def mixed(tokens, shm):
        rng = np.random.default_rng(tokens)
        with Client(endpoint, timeout_ms=20000) as c:
            x = rng.standard_normal((tokens, 256)).astype(np.float32)
            session = c.session("deepseek-v3", max_tokens=tokens) if shm else None
            if session is not None:
                session.input[:] = x
            while not stop.is_set():
                try:
                    session.route(tokens) if session is not None else c.route("deepseek-v3", x)
                    key = "answers"
                except ClientTimeoutError:
                    key = "lost"
                except BusyError:
                    key = "busy"
                except MoERouterError as e:
                    key = "errors"
                    print("error:", e, file=sys.stderr)
                with lock:
                    counts[key] += 1
                time.sleep(0.002)

    threads = [threading.Thread(target=mixed, args=a, daemon=True) for a in [(1, False), (64, True), (4096, True), (4096, False)]]
    for t in threads:
        t.start()
    samples = []
    started = time.monotonic()
    victim = None
    next_kill, next_reload = started + 10, started + 30
    try:
        while bench.poll() is None:
            now = time.monotonic()
            samples.append((now - started, *sample(daemon.pid)))
            if victim is None:
                victim = subprocess.Popen([sys.executable, "-c", VICTIM.format(python=str(ROOT / "python")), endpoint],
                                          stdout=subprocess.PIPE, text=True)
                victim.stdout.readline()
            if now >= next_kill:
                victim.kill()
                victim.wait()
                victim = None
                counts["kills"] += 1
                next_kill += 10
            if now >= next_reload:
                daemon.send_signal(signal.SIGHUP)
                counts["reloads"] += 1
                next_reload += 30
            time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if victim is not None:
            victim.kill()
        out = bench.stdout.read()
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(60)
    print(out)
    # The soak proper: the last args.seconds of samples (the sweep came first).
    # From a minute in (heap and arenas warmed up), when the soak is that long.
    warm = min(60, args.seconds / 4)
    soak = [s for s in samples if s[0] >= samples[-1][0] - args.seconds + warm]
    (t0, rss0, fd0), (t1, rss1, fd1) = soak[0], soak[-1]
    rss_max, fd_max = max(s[1] for s in soak), max(s[2] for s in soak)
    print(f"soak {t1 - t0:.0f} s: RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB (max {rss_max / 1024:.1f}), "
          f"fds {fd0} -> {fd1} (max {fd_max}); mixed clients: {counts['answers']} answers, {counts['lost']} lost, "
          f"{counts['busy']} BUSY, {counts['errors']} other errors; {counts['kills']} clients killed, "
          f"{counts['reloads']} reloads; daemon exit {rc}; bench exit {bench.returncode}")
    ok = (counts["lost"] == 0 and counts["errors"] == 0 and rss1 <= rss0 * 1.05 and fd1 <= fd0 * 1.05 and rc == 0
          and bench.returncode == 0)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
