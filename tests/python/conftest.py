import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def find_binary(name, env):
    """A built executable: $env, else the release build, else the debug build."""
    if os.environ.get(env):
        return pathlib.Path(os.environ[env])
    for config in ("release", "debug"):
        p = ROOT / ".build" / config / name
        if p.exists():
            return p
    pytest.fail(f"{name} is not built: run `swift build` first (or set {env})")


@pytest.fixture(scope="session")
def route_eval():
    return find_binary("moe-route-eval", "MOE_ROUTE_EVAL")
