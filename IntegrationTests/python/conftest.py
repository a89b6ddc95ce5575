import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def find_binary(name, env):
    """A built executable: $env, else the newer of the release and debug builds (so a stale
    release binary never shadows what `swift build` just made)."""
    if os.environ.get(env):
        return pathlib.Path(os.environ[env])
    built = [p for p in (ROOT / ".build" / c / name for c in ("release", "debug")) if p.exists()]
    if built:
        return max(built, key=lambda p: p.stat().st_mtime)
    pytest.fail(f"{name} is not built: run `swift build` first (or set {env})")


KERNELS = ROOT / "Sources" / "CMoEKernels"


def kernels_with(tmp_path, old, new):
    """A copy of the kernel sources with `old` replaced by `new` in avx512_internal.h: a wrong
    variant that a bit-exactness check must notice."""
    src = tmp_path / "kernels"
    shutil.copytree(KERNELS, src)
    h = src / "avx512_internal.h"
    text = h.read_text()
    assert old in text, old
    h.write_text(text.replace(old, new))
    return src


def build_kernel_check(tmp_path, check, source_dir=KERNELS, defines=(), with_kernels=False):
    """IntegrationTests/c/<check>.c built against the kernel sources in source_dir (their headers; their .c
    files too with with_kernels), as the kernels are built: clang -O2 -ffp-contract=off."""
    out = tmp_path / check
    sources = sorted(map(str, source_dir.glob("*.c"))) if with_kernels else []
    subprocess.run(["clang", "-O2", "-ffp-contract=off", *defines, f"-I{source_dir}/include", f"-I{source_dir}",
                    *sources, str(ROOT / "IntegrationTests" / "c" / f"{check}.c"), "-o", str(out), "-lm"],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def route_eval():
    return find_binary("moe-route-eval", "MOE_ROUTE_EVAL")


# --- moe-routerd (IntegrationTests/python/test_daemon_*.py) -------------------------------------------

import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402


class RouterDaemon:
    """A real moe-routerd process on a private ipc endpoint (nothing is built here)."""

    def __init__(self, binary, args, tmp):
        # Short path: a unix socket path must stay under 108 bytes.
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="moe-routerd-"))
        self.sock_path = self.dir / "routerd.sock"
        self.endpoint = f"ipc://{self.sock_path}"
        self.log = open(self.dir / "daemon.log", "w+")
        self.proc = subprocess.Popen([str(binary), *args, "--endpoint", self.endpoint, "--log-level", "info"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while not self.sock_path.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"moe-routerd did not start: {self.read_log()}")
            time.sleep(0.02)

    @property
    def pid(self):
        return self.proc.pid

    def read_log(self):
        self.log.flush()
        return (self.dir / "daemon.log").read_text()

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stable_fd_count(self, settle=0.3, timeout=5.0):
        """The fd count once it has stopped changing (libzmq closes connections asynchronously)."""
        deadline = time.time() + timeout
        last = self.fd_count()
        while time.time() < deadline:
            time.sleep(settle)
            now = self.fd_count()
            if now == last:
                return now
            last = now
        return last

    def fd_targets(self):
        out = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                out.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
            except OSError:
                pass
        return sorted(out)

    def maps(self):
        return pathlib.Path(f"/proc/{self.pid}/maps").read_text().splitlines()

    def shm_maps(self):
        return [m for m in self.maps() if "/dev/shm/" in m]

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode


@pytest.fixture(scope="session")
def routerd_binary():
    return find_binary("moe-routerd", "MOE_ROUTERD")


@pytest.fixture(scope="session")
def routerd_class():
    return RouterDaemon


@pytest.fixture
def start_daemon(routerd_binary, tmp_path):
    """start_daemon(*args) -> RouterDaemon; every daemon is stopped at the end of the test."""
    started = []

    def start(*args):
        d = RouterDaemon(routerd_binary, list(args), tmp_path)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
