"""The C client's shared-memory channel (issue 18) against a real daemon: the same answers as
ZeroMQ bit for bit, the opt-outs, the fallback where no channel is offered, the registration it
gives back, a client killed mid-stream (the daemon keeps serving and holds nothing of it), and a
daemon killed or stopped while a client waits (an error within the timeout, then the same client
is served by the next daemon). The C programs are IntegrationTests/c/channel_*.c, built under
AddressSanitizer."""
import os
import signal
import subprocess
import time

import pytest
import zmq

import moe_wire as w
from c_programs import build, passed, run
from daemon_helpers import dealer, free_port, stop_process, wait_until

DS = "deepseek-v3"
HASH = "deepseek-v4-hash"


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    return build(tmp_path_factory.mktemp("channels"), "channel_parity")


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    return build(tmp_path_factory.mktemp("channels"), "channel_stream")


def run_with(exe, *args, env=None, timeout=120):
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={"ASAN_OPTIONS": "detect_leaks=0", "PATH": "/usr/bin:/bin", **(env or {})})


def test_channel_and_zeromq_give_the_same_answers(start_daemon, parity):
    """deepseek-v3 (fp32, bf16, 1...1000 tokens, masks), deepseek-v4-hash with token ids, shm
    buffers and every error: same status, info and outputs; moe_last_route_path says which."""
    d = start_daemon("--preset", DS, "--preset", HASH)
    out = passed(run(parity, d.endpoint, "parity"))
    assert "parity ok" in out, out
    for needle in ("MOE_ERR_UNKNOWN_LAYER", "MOE_ERR_SIZE_MISMATCH", "MOE_ERR_TOKEN_ID", "MOE_ERR_BAD_MASK",
                   "MOE_ERR_OUT_OF_BOUNDS", "MOE_ERR_UNKNOWN_HANDLE"):
        assert f": {needle} |" in out, needle
    assert d.alive()


def test_environment_opt_out_and_moe_set_channel(start_daemon, parity):
    d = start_daemon("--preset", DS)
    assert "envoff ok" in passed(run_with(parity, d.endpoint, "envoff", env={"MOE_ROUTER_CHANNEL": "0"}))


def test_tcp_gets_no_channel(start_daemon, parity):
    port = free_port()
    d = start_daemon("--preset", DS, "--tcp", f"tcp://127.0.0.1:{port}")
    assert "zmqonly ok" in passed(run(parity, f"tcp://127.0.0.1:{port}", "zmqonly"))
    assert d.alive()


def test_the_channel_gives_its_registration_back(start_daemon, parity):
    d = start_daemon("--preset", DS, "--max-registrations", "3")
    assert "yield ok" in passed(run(parity, d.endpoint, "yield"))


# --- kills -------------------------------------------------------------------------------------


def mapping_counts(d):
    """File-backed and anonymous mappings of the daemon (test_daemon_hostile.py's measure: glibc may
    add a malloc arena or keep a thread stack cached, so anonymous ones may grow a little)."""
    maps = d.maps()
    anon = sum(1 for m in maps if len(m.split()) < 6 or m.split()[5].startswith("["))
    return dict(file_maps=len(maps) - anon, anon_maps=anon)


def threads(d):
    return len(os.listdir(f"/proc/{d.pid}/task"))


def holds_nothing(d, watcher, base):
    """No registration, no shm mapping, the fds, mappings and threads of the baseline."""
    if w.stats(watcher)["registrations"] != 0 or d.shm_maps():
        return False
    m = mapping_counts(d)
    return (d.fd_count() == base["fds"] and m["file_maps"] == base["file_maps"] and
            m["anon_maps"] <= base["anon_maps"] + 8 and threads(d) == base["threads"])


def driven(exe, endpoint, timeout_ms):
    return subprocess.Popen([str(exe), endpoint, "driven", str(timeout_ms)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"ASAN_OPTIONS": "detect_leaks=0", "PATH": "/usr/bin:/bin"})


def ask(p, command="route", send_only=False):
    p.stdin.write(command + "\n")
    p.stdin.flush()
    return None if send_only else answer(p)


def answer(p):
    """'route STATUS path P ms T same S' -> dict (and the error line after a failure)."""
    line = p.stdout.readline().split()
    assert line and line[0] == "route", (line, p.stderr.read() if p.poll() is not None else "")
    got = dict(status=line[1], path=int(line[3]), ms=float(line[5]), same=int(line[7]))
    if got["status"] != "MOE_OK":
        got["error"] = p.stdout.readline().strip()
    return got


def test_client_killed_mid_stream_leaves_the_daemon_clean(start_daemon, stream):
    # A pool of 2 channel threads (the default on 2 cores, named so on any machine): two clients
    # at once warm up what channels start in the daemon (both pool threads, the shm paths) and
    # leave in order; then the baseline. (A pool thread stays when its channels close.)
    d = start_daemon("--preset", DS, "--channel-threads", "2")
    ctx = zmq.Context()
    watcher = dealer(ctx, d.endpoint)
    warm = [driven(stream, d.endpoint, 5000) for _ in range(2)]
    for p in warm:
        assert answer_ok(ask(p))
    for p in warm:
        ask(p, "quit", send_only=True)
        assert p.wait(30) == 0
    assert wait_until(lambda: w.stats(watcher)["registrations"] == 0 and not d.shm_maps(), timeout=5)
    time.sleep(0.3)
    base = dict(fds=d.stable_fd_count(), threads=threads(d), **mapping_counts(d))
    for delay in (0.0, 0.013, 0.1):
        child = subprocess.Popen([str(stream), d.endpoint, "stream"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env={"ASAN_OPTIONS": "detect_leaks=0", "PATH": "/usr/bin:/bin"})
        assert child.stdout.readline().strip() == "streaming", child.stderr.read()
        assert w.stats(watcher)["registrations"] == 2  # the channel and the client's segment
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)  # with a request on the channel or about to be
        child.wait()
        assert wait_until(lambda: holds_nothing(d, watcher, base), timeout=8), \
            (w.stats(watcher)["registrations"], d.shm_maps(), d.fd_count(), threads(d), mapping_counts(d), base)
    # and it serves others, on a channel
    p = driven(stream, d.endpoint, 5000)
    for _ in range(3):
        assert answer_ok(ask(p))
    ask(p, "quit", send_only=True)
    assert p.wait(30) == 0
    watcher.close()
    ctx.term()
    assert d.stop() == 0


def answer_ok(got):
    assert got["status"] == "MOE_OK" and got["path"] == 1 and got["same"] == 1, got
    return True


def answers_ping(endpoint, timeout_ms=500):
    ctx = zmq.Context()
    s = dealer(ctx, endpoint)
    try:
        s.send_multipart([w.frame0(w.OP["PING"])])
        return bool(s.poll(timeout_ms)) and w.Reply(s.recv_multipart()).status == 0
    finally:
        s.close()
        ctx.term()


class SameEndpointDaemons:
    """Daemons started one after another on one ipc endpoint (a restart)."""

    def __init__(self, binary, endpoint, log_dir):
        self.binary, self.endpoint, self.log_dir = binary, endpoint, log_dir
        self.procs = []

    def start(self):
        log = open(self.log_dir / f"daemon{len(self.procs)}.log", "w")
        p = subprocess.Popen([str(self.binary), "--preset", DS, "--endpoint", self.endpoint], stdout=log,
                             stderr=subprocess.STDOUT)
        self.procs.append(p)
        assert wait_until(lambda: answers_ping(self.endpoint), timeout=20)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
                p.wait(15)


def test_daemon_killed_or_stopped_while_a_client_waits(routerd_binary, routerd_class, stream, tmp_path):
    timeout_ms = 3000
    first = routerd_class(routerd_binary, ["--preset", DS], tmp_path)
    later = SameEndpointDaemons(routerd_binary, first.endpoint, tmp_path)
    p = driven(stream, first.endpoint, timeout_ms)
    try:
        assert answer_ok(ask(p))
        # killed while the client waits for its answer: an error well within the timeout
        stop_process(first.pid)
        ask(p, send_only=True)
        time.sleep(0.5)
        first.proc.kill()
        first.proc.wait(10)
        got = answer(p)
        assert got["status"] in ("MOE_ERR_CLIENT_IO", "MOE_ERR_CLIENT_TIMEOUT") and got["path"] == 1, got
        assert got["ms"] < timeout_ms + 500, got
        # a new daemon on the same endpoint serves the same client on its next call
        second = later.start()
        assert answer_ok(ask(p))
        # killed while the client is idle: the next call goes to the new daemon at once
        second.kill()
        second.wait(10)
        later.start()
        got = ask(p)
        assert answer_ok(got) and got["ms"] < timeout_ms, got
        # a clean shutdown closes the channel; the next daemon serves again
        later.procs[-1].terminate()
        assert later.procs[-1].wait(15) == 0
        stopped = later.start()
        assert answer_ok(ask(p))
        # stopped: the call times out; resumed, the same channel serves again
        stop_process(stopped.pid)
        got = ask(p)
        assert got["status"] == "MOE_ERR_CLIENT_TIMEOUT" and timeout_ms - 50 <= got["ms"] < timeout_ms + 1000, got
        os.kill(stopped.pid, signal.SIGCONT)
        for _ in range(3):
            assert answer_ok(ask(p))
        ask(p, "quit", send_only=True)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
        later.stop_all()
        first.stop()
