"""The systemd units pass `systemd-analyze verify` with their binary path rewritten to a temporary prefix."""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNITS = ["moe-routerd.service", "moe-routerd@.service", "moe-routerd.socket"]

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


def install_units(prefix, binary):
    """What `make install` does to the units: /usr/local becomes the prefix."""
    (prefix / "bin").mkdir(parents=True)
    shutil.copy(binary, prefix / "bin" / "moe-routerd")
    units = prefix / "lib/systemd/system"
    units.mkdir(parents=True)
    for u in UNITS:
        (units / u).write_text((ROOT / "systemd" / u).read_text().replace("/usr/local", str(prefix)))
    return units


def verify(units, names):
    return subprocess.run(["systemd-analyze", "verify", *names], cwd=units, capture_output=True, text=True, timeout=60)


def test_units_verify(routerd_binary, tmp_path):
    units = install_units(tmp_path / "prefix", routerd_binary)
    for names in (["./moe-routerd.service", "./moe-routerd.socket"], ["./moe-routerd@0.service"]):
        r = verify(units, names)
        assert r.returncode == 0 and r.stderr.strip() == "", (names, r.stderr)


def test_verify_catches_a_missing_binary(tmp_path):
    """The check above is not vacuous: a unit naming an absent binary fails."""
    units = tmp_path / "units"
    units.mkdir()
    (units / "moe-routerd.service").write_text((ROOT / "systemd/moe-routerd.service").read_text()
                                               .replace("/usr/local", str(tmp_path / "absent")))
    assert verify(units, ["./moe-routerd.service"]).returncode != 0


def test_units_contract():
    svc = (ROOT / "systemd/moe-routerd.service").read_text()
    tmpl = (ROOT / "systemd/moe-routerd@.service").read_text()
    for unit in (svc, tmpl):
        for line in ["Type=notify", "WatchdogSec=", "Restart=on-failure", "RemoveIPC=no", "User=moe-router",
                     "ExecReload=/bin/kill -HUP $MAINPID", "/etc/moe-router/"]:
            assert line in unit, line
        active = [l for l in unit.splitlines() if not l.startswith("#")]
        assert not any(l.startswith(("DynamicUser=yes", "PrivateDevices=yes", "RemoveIPC=yes")) for l in active)
    assert "RuntimeDirectory=moe-router/%i" in tmpl and "--device %i" in tmpl
    sock = (ROOT / "systemd/moe-routerd.socket").read_text()
    assert "ListenStream=/run/moe-router/routerd.sock" in sock
