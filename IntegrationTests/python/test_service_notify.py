"""moe-routerd under a fake systemd: READY, STATUS, WATCHDOG, STOPPING; process title; journal logs."""
import os
import pathlib
import signal
import subprocess
import time

import pytest
import zmq

import daemon_helpers as h
import moe_wire as w
from service_helpers import NotifySocket


@pytest.fixture
def notify(monkeypatch):
    n = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", n.path)
    yield n
    n.close()


def test_ready_status_watchdog_stopping(start_daemon, notify, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 200 ms
    d = start_daemon("--preset", "mixtral-8x7b", "--preset", "deepseek-v3")
    _, ready = notify.wait_for("READY", "1")
    # READY only after the layers are built and the socket is bound.
    assert d.sock_path.exists()
    assert "2 layers" in ready["STATUS"]
    ctx = zmq.Context()
    s = h.dealer(ctx, d.endpoint)
    layers, _ = w.layers(s)
    for _ in range(20):
        assert h.inline_route(s, layers["mixtral-8x7b"], 4).status == 0
    # Periodic STATUS lines with layers, clients and req/s; watchdog pings keep coming.
    i, _ = notify.wait_for("STATUS", after=1)
    notify.poll(2.5)
    statuses = [m["STATUS"] for m in notify.messages if "STATUS" in m and "READY" not in m]
    assert any("2 layers" in st and "1 clients" in st and "req/s" in st for st in statuses), statuses
    pings = [m["_t"] for m in notify.messages if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 5, notify.messages
    s.close(0)
    ctx.term()
    d.proc.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING", "1")
    assert d.proc.wait(15) == 0


def test_no_watchdog_without_watchdog_usec(start_daemon, notify, monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    start_daemon("--preset", "mixtral-8x7b")
    notify.wait_for("READY", "1")
    notify.poll(1.0)
    assert not any("WATCHDOG" in m for m in notify.messages)


def test_watchdog_for_another_pid_is_ignored(start_daemon, notify, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    start_daemon("--preset", "mixtral-8x7b")
    notify.wait_for("READY", "1")
    notify.poll(1.0)
    assert not any("WATCHDOG" in m for m in notify.messages)


def test_process_title_shows_live_status(start_daemon):
    d = start_daemon("--preset", "mixtral-8x7b", "--preset", "qwen3-moe")
    ctx = zmq.Context()
    s = h.dealer(ctx, d.endpoint)
    layers, _ = w.layers(s)
    assert h.inline_route(s, layers["mixtral-8x7b"], 2).status == 0

    def title():
        return pathlib.Path(f"/proc/{d.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()

    assert h.wait_until(lambda: "1 clients" in title(), timeout=6), title()
    t = title()
    assert t.startswith("moe-routerd: 2 layers, 1 clients,") and "req/s" in t, t
    ps = subprocess.run(["ps", "-o", "args=", "-p", str(d.pid)], capture_output=True, text=True).stdout
    assert "2 layers" in ps
    s.close(0)
    ctx.term()


def test_journal_priority_prefixes(start_daemon):
    d = start_daemon("--preset", "mixtral-8x7b", "--log-format", "journal")
    ctx = zmq.Context()
    s = h.dealer(ctx, d.endpoint)
    layers, _ = w.layers(s)
    for _ in range(50):
        assert h.inline_route(s, layers["mixtral-8x7b"], 2).status == 0
    s.close(0)
    ctx.term()
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(15)
    lines = d.read_log().splitlines()
    assert lines and all(l[:3] in ("<2>", "<3>", "<4>", "<5>", "<6>", "<7>") for l in lines), lines
    assert any(l.startswith("<6>layer mixtral-8x7b") for l in lines)
    # No per-request lines at the default level: a few lines for 50 requests.
    assert len(lines) < 15, lines


def test_journal_chosen_from_journal_stream(routerd_binary, tmp_path):
    """JOURNAL_STREAM naming stderr's device:inode switches the format on by itself."""
    log = open(tmp_path / "log", "w+")
    st = os.fstat(log.fileno())
    env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    sock = tmp_path / "r.sock"
    p = subprocess.Popen([str(routerd_binary), "--preset", "mixtral-8x7b", "--endpoint", f"ipc://{sock}"],
                         stdout=log, stderr=log, env=env)
    assert h.wait_until(lambda: sock.exists(), timeout=20)
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0
    text = (tmp_path / "log").read_text()
    assert text.startswith("<6>"), text
