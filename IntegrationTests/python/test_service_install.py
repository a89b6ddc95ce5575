"""`make install PREFIX=...` / `make uninstall PREFIX=...` into a temporary prefix.

Builds the release binaries (slow when cold): MOE_SWIFT_SCRATCH picks SwiftPM's scratch path
(default .build)."""
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

EXPECTED = [
    "bin/moe-routerd", "bin/moe-routerctl", "bin/moe-router-bench",
    "lib/libmoerouter.so.1", "lib/libmoerouter.so", "include/moe_router.h", "include/moe_router_wire.h",
    "include/moe_router_client.h", "lib/pkgconfig/moe-router.pc",
    "lib/systemd/system/moe-routerd.service", "lib/systemd/system/moe-routerd@.service",
    "lib/systemd/system/moe-routerd.socket", "lib/sysusers.d/moe-router.conf",
    "share/moe-router/routerd.yaml.example", "share/doc/moe-router/README.md", "share/doc/moe-router/PROTOCOL.md",
]


def make(*args):
    scratch = os.environ.get("MOE_SWIFT_SCRATCH", ".build")
    r = subprocess.run(["make", "-C", str(ROOT), f"SWIFT_SCRATCH={scratch}", *args],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_install_and_uninstall(tmp_path):
    prefix = tmp_path / "prefix"
    make("install", f"PREFIX={prefix}")
    for f in EXPECTED:
        assert (prefix / f).exists(), f
    assert os.access(prefix / "bin/moe-routerd", os.X_OK)
    assert subprocess.run([prefix / "bin/moe-routerd", "--help"], capture_output=True).returncode == 0
    assert subprocess.run([prefix / "bin/moe-routerctl", "--help"], capture_output=True).returncode == 0

    # pkg-config from the prefix, and a C program built against the installed library only.
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib/pkgconfig"))
    cflags = subprocess.run(["pkg-config", "--cflags", "moe-router"], env=env, capture_output=True, text=True, check=True).stdout.split()
    libs = subprocess.run(["pkg-config", "--libs", "moe-router"], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert f"-I{prefix}/include" in cflags and f"-L{prefix}/lib" in libs and "-lmoerouter" in libs
    exe = tmp_path / "route_c"
    subprocess.run(["cc", "-std=c11", *cflags, "-o", str(exe), str(ROOT / "examples/c/route.c"), *libs,
                    f"-Wl,-rpath,{prefix}/lib"], check=True, capture_output=True)
    ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    assert f"{prefix}/lib/libmoerouter.so.1" in ldd, ldd

    # The installed units name the installed binary and verify.
    unit = (prefix / "lib/systemd/system/moe-routerd.service").read_text()
    assert f"ExecStart={prefix}/bin/moe-routerd" in unit
    if shutil.which("systemd-analyze"):
        units = prefix / "lib/systemd/system"
        for names in (["./moe-routerd.service", "./moe-routerd.socket"], ["./moe-routerd@0.service"]):
            r = subprocess.run(["systemd-analyze", "verify", *names], cwd=units, capture_output=True, text=True)
            assert r.returncode == 0 and not r.stderr.strip(), r.stderr

    make("uninstall", f"PREFIX={prefix}")
    left = [str(p.relative_to(prefix)) for p in prefix.rglob("*") if not p.is_dir()]
    assert left == [], left
