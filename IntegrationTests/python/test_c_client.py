"""The C client library against a real daemon, in situations the examples do not reach."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DS = "deepseek-v3"


def _build_asan(tmp_path, source):
    exe = tmp_path / Path(source).stem
    subprocess.run(["cc", "-std=c11", "-g", "-O1", "-fsanitize=address", "-fno-omit-frame-pointer",
                    "-I", str(ROOT / "Include"), str(ROOT / source),
                    str(ROOT / "clients/c/moe_router_client.c"), str(ROOT / "Sources/CMoERouterWire/moe_router_status.c"),
                    "-lzmq", "-o", str(exe)], check=True, capture_output=True)
    return exe


def test_timed_out_inline_route_does_not_leave_libzmq_reading_the_callers_buffer(start_daemon, tmp_path):
    """The library sends large inline inputs zero-copy; a call that times out while the daemon is
    stopped must not return before libzmq has let go of the buffer (the caller frees it at once;
    under AddressSanitizer a later read from it aborts the program). The client works afterwards."""
    exe = _build_asan(tmp_path, "IntegrationTests/c/inline_timeout.c")
    d = start_daemon("--preset", DS)
    p = subprocess.run([str(exe), d.endpoint, str(d.proc.pid)], capture_output=True, text=True, timeout=60,
                       env={"ASAN_OPTIONS": "detect_leaks=0", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "released its input" in p.stdout
    assert d.alive()
