"""Building and running the C test programs of IntegrationTests/c against a client library: the
current one (clients/c) or the frozen protocol-1 copy (IntegrationTests/c/v1)."""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
C_TESTS = ROOT / "IntegrationTests" / "c"
CURRENT = dict(include=ROOT / "Include",
               sources=[ROOT / "clients/c/moe_router_client.c", ROOT / "Sources/CMoERouterWire/moe_router_status.c"])
FROZEN_V1 = dict(include=C_TESTS / "v1",
                 sources=[C_TESTS / "v1/moe_router_client.c", C_TESTS / "v1/moe_router_status.c"])


def build(out_dir, program, client=CURRENT):
    """IntegrationTests/c/<program>.c with the client's sources, under AddressSanitizer. The client's
    include directory comes first, so the frozen client never sees the current headers."""
    exe = Path(out_dir) / f"{program}-{Path(client['include']).name}"
    p = subprocess.run(["cc", "-std=c11", "-g", "-O1", "-fsanitize=address", "-fno-omit-frame-pointer",
                        "-Wall", "-Wextra", "-Werror", "-I", str(client["include"]), "-I", str(C_TESTS),
                        str(C_TESTS / f"{program}.c"), *map(str, client["sources"]), "-lzmq", "-lm", "-o", str(exe)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return exe


def run(exe, *args, timeout=120, preexec_fn=None):
    """Runs a built program; returns the CompletedProcess (stdout, stderr as text)."""
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={"ASAN_OPTIONS": "detect_leaks=0", "PATH": "/usr/bin:/bin"}, preexec_fn=preexec_fn)


def passed(p):
    assert p.returncode == 0, f"rc {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def route_lines(stdout):
    return [line for line in stdout.splitlines() if line.startswith("route ")]


def world_runnable_copy(exe):
    """A copy of exe in a fresh 0755 directory (pytest's tmp_path is 0700: another uid could not
    reach it). The caller removes the directory."""
    d = Path(tempfile.mkdtemp(prefix="moe-c-"))
    os.chmod(d, 0o755)
    copy = d / exe.name
    shutil.copy2(exe, copy)
    os.chmod(copy, 0o755)
    return copy
