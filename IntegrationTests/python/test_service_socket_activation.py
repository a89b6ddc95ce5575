"""Socket activation: the daemon serves on the listening socket systemd passes (LISTEN_FDS, ZMQ_USE_FD)."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile

import zmq

import daemon_helpers as h
import moe_wire as w
from service_helpers import NotifySocket


def test_serves_on_passed_socket(routerd_binary):
    d = tempfile.mkdtemp(prefix="moe-sa-")
    path = os.path.join(d, "routerd.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    os.chmod(path, 0o660)
    ino = os.stat(path).st_ino
    notify = NotifySocket()
    n = listener.fileno()
    # Like systemd: the socket as fd 3, LISTEN_PID set to the daemon's own pid.
    script = f'exec 3<&{n} {n}<&-; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=routerd exec "$0" "$@"'
    log = open(os.path.join(d, "log"), "w+")
    p = subprocess.Popen(["bash", "-c", script, str(routerd_binary), "--preset", "mixtral-8x7b",
                          "--endpoint", f"ipc://{path}"], pass_fds=(n,), stdout=log, stderr=log,
                         env=dict(os.environ, NOTIFY_SOCKET=notify.path))
    try:
        notify.wait_for("READY", "1")
        assert os.stat(path).st_ino == ino, "the daemon replaced the passed socket"
        log_text = open(os.path.join(d, "log")).read()
        assert "socket activation" in log_text, log_text
        assert "LISTEN_FDS" not in open(f"/proc/{p.pid}/environ", "rb").read().decode(errors="replace")
        ctx = zmq.Context()
        s = h.dealer(ctx, f"ipc://{path}")
        layers, _ = w.layers(s)
        assert h.inline_route(s, layers["mixtral-8x7b"], 4).status == 0
        # Shared memory works through the passed socket too (peer credentials come from it).
        seg = h.Segment(1 << 12)
        try:
            r, _ = h.register(s, seg)
            assert r.status == 0, r
        finally:
            seg.close()
        s.close(0)
        ctx.term()
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
        # The socket file belongs to the .socket unit: it stays for the next activation.
        assert os.path.exists(path) and os.stat(path).st_ino == ino
    finally:
        if p.poll() is None:
            p.kill()
        listener.close()
        notify.close()
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def test_refuses_more_than_one_socket(routerd_binary, tmp_path):
    script = 'LISTEN_PID=$$ LISTEN_FDS=2 exec "$0" "$@"'
    p = subprocess.run(["sh", "-c", script, str(routerd_binary), "--preset", "mixtral-8x7b",
                        "--endpoint", f"ipc://{tmp_path}/s.sock"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "takes exactly one" in p.stderr, p.stderr
