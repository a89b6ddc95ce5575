"""tcp with ZeroMQ CURVE: the daemon's key pair, an allow-list of client keys, both clients and
moe-routerctl; a non-loopback tcp endpoint without CURVE is refused unless --tcp-allow-insecure."""
import os
import subprocess

import numpy as np
import pytest

from conftest import find_binary
from daemon_helpers import free_port, wait_until
from moe_router import Client, ClientTimeoutError, curve_keys

DS = "deepseek-v3"



@pytest.fixture
def keys(tmp_path):
    ctl = find_binary("moe-routerctl", "MOE_ROUTERCTL")
    for name in ("daemon", "alice", "mallory"):
        p = subprocess.run([str(ctl), "keygen", str(tmp_path / name)], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
    assert oct(os.stat(tmp_path / "daemon.key").st_mode & 0o777) == "0o600"
    p = subprocess.run([str(ctl), "keygen", str(tmp_path / "alice")], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "File exists" in p.stderr, "keygen never overwrites a key"
    (tmp_path / "allowed").write_text("# who may connect\n" + (tmp_path / "alice.pub").read_text())
    return tmp_path


def test_only_allowed_keys_get_in(start_daemon, keys):
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    d = start_daemon("--preset", DS, "--tcp", ep, "--tcp-curve-key", str(keys / "daemon.key"),
                     "--tcp-curve-allow", str(keys / "allowed"))
    with Client(ep, curve=curve_keys(keys / "daemon.pub", keys / "alice.key")) as c:
        assert c.server.layer_count == 1
        w, ids = c.route(DS, np.zeros((4, 256), np.float32))
        assert ids.shape == (4, 8)
    with pytest.raises(ClientTimeoutError):
        Client(ep, timeout_ms=1000, curve=curve_keys(keys / "daemon.pub", keys / "mallory.key"))
    assert wait_until(lambda: "its public key is not on the allow-list" in d.read_log())
    with pytest.raises(ClientTimeoutError):
        Client(ep, timeout_ms=1000)  # no CURVE at all: the handshake cannot even start
    ctl = find_binary("moe-routerctl", "MOE_ROUTERCTL")
    base = [str(ctl), "status", "--endpoint", ep, "--timeout-ms", "1000", "--curve-server-key", str(keys / "daemon.pub")]
    p = subprocess.run(base + ["--curve-key", str(keys / "alice.key")], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "protocol" in p.stdout, p.stderr
    p = subprocess.run(base + ["--curve-key", str(keys / "mallory.key")], capture_output=True, text=True, timeout=30)
    assert p.returncode == 69, p.stdout + p.stderr


def test_non_loopback_tcp_needs_curve_or_an_explicit_flag(routerd_binary, start_daemon, keys, tmp_path):
    port = free_port()
    args = [str(routerd_binary), "--preset", DS, "--endpoint", f"ipc://{tmp_path}/x.sock", "--tcp", f"tcp://0.0.0.0:{port}"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "tcp = 'tcp://0.0.0.0" in p.stderr and "--tcp-allow-insecure" in p.stderr, p.stderr
    d = start_daemon("--preset", DS, "--tcp", f"tcp://0.0.0.0:{port}", "--tcp-allow-insecure")
    assert "admits any peer without authentication" in d.read_log()
    with Client(f"tcp://127.0.0.1:{port}") as c:
        assert c.server.layer_count == 1


def test_bad_key_files_stop_the_start(routerd_binary, keys, tmp_path):
    base = [str(routerd_binary), "--preset", DS, "--endpoint", f"ipc://{tmp_path}/x.sock", "--tcp", "tcp://127.0.0.1:1"]
    def start(*extra):
        return subprocess.run(base + list(extra), capture_output=True, text=True, timeout=30)
    os.chmod(keys / "daemon.key", 0o644)
    p = start("--tcp-curve-key", str(keys / "daemon.key"), "--tcp-curve-allow", str(keys / "allowed"))
    assert p.returncode == 2 and "readable by group or others" in p.stderr, p.stderr
    os.chmod(keys / "daemon.key", 0o600)
    (keys / "bad").write_text("not-a-key\n")
    p = start("--tcp-curve-key", str(keys / "daemon.key"), "--tcp-curve-allow", str(keys / "bad"))
    assert p.returncode == 2 and "line 1" in p.stderr and "Z85" in p.stderr, p.stderr
    p = start("--tcp-curve-key", str(keys / "daemon.key"))
    assert p.returncode == 2 and "tcp_curve_allow" in p.stderr, p.stderr
    (keys / "mixed.key").write_text((keys / "daemon.key").read_text().replace("public-key", "#") + "public-key = "
                                    + (keys / "alice.pub").read_text())
    os.chmod(keys / "mixed.key", 0o600)
    p = start("--tcp-curve-key", str(keys / "mixed.key"), "--tcp-curve-allow", str(keys / "allowed"))
    assert p.returncode == 2 and "is not the public key of secret-key" in p.stderr, p.stderr
