"""Expert placement (SET_PLACEMENT), expert load counters (EXPERT_LOAD) and who may change them
(NOT_PERMITTED), through the Python client against a real moe-routerd.

Placement: answers carry physical ids (token t choosing logical e gets replicas[e][t mod len]),
the epoch the answer used, and a swap during a running request never mixes two placements in
one answer. Load: the counters equal a recount of the logical ids the daemon returned (padding
rows excluded); a window reset starts from zero. Control: a peer running as `nobody` may read
the counters but not change a placement or reset a window; with --control-uid it may."""
import json
import os
import threading
import time

import numpy as np
import pytest

import routing_reference as ref
from moe_router import BadPlacementError, Client, NotPermittedError, Status
from python_client_support import assert_bit_exact, logits, reference

E = 256  # deepseek-v3
NOBODY = 65534

CONFIG = """\
layers:
  - {preset: deepseek-v3, name: placed}
  - {preset: deepseek-v3, name: swap}
  - {preset: glm-4.5-air, name: load}
  - {preset: deepseek-v4-hash, name: hash-load}
  - {preset: deepseek-v3, name: nobody-target}
"""


def start(routerd_class, routerd_binary, tmp, *extra):
    (tmp / "layers.yaml").write_text(CONFIG)
    return routerd_class(routerd_binary, ["--config", str(tmp / "layers.yaml"), *extra], tmp)


@pytest.fixture(scope="module")
def daemon(routerd_binary, routerd_class, tmp_path_factory):
    d = start(routerd_class, routerd_binary, tmp_path_factory.mktemp("v2placement"))
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def client(daemon):
    with Client(daemon.endpoint, timeout_ms=30000) as c:
        yield c


def spread(num_experts, extra_from, replicas_of=lambda e: 1):
    """Placement: logical e -> [extra_from + e * r, ..., + r - 1] with r = replicas_of(e)."""
    out, at = [], extra_from
    for e in range(num_experts):
        r = replicas_of(e)
        out.append(list(range(at, at + r)))
        at += r
    return out


def logical_of(phys_ids, replicas):
    """Physical ids -> logical ids (-1 stays -1) through the placement's inverse."""
    inverse = {p: e for e, rs in enumerate(replicas) for p in rs}
    return np.vectorize(lambda p: inverse.get(int(p), -2) if p >= 0 else -1, otypes=[np.int32])(phys_ids)


# ---- SET_PLACEMENT ---------------------------------------------------------------------------
def test_set_route_epoch_clear(client, daemon):
    layer = client.layer("placed")
    assert layer.placement_epoch == 0 and layer.num_physical == 0
    x = logits(37, E, seed=1)
    want_w, want_ids, _ = reference(layer, x, "fp32")
    replicas = spread(E, 0, lambda e: 1 + (e % 3 == 0) + (e % 7 == 0))  # 1..3 replicas each
    physical = sum(len(r) for r in replicas)
    epoch = client.set_placement(layer, replicas)
    assert epoch >= 1
    listed = client.layer("placed")
    assert listed.placement_epoch == epoch and listed.num_physical == physical
    r = client.route(listed, x)
    assert r.placement_epoch == epoch
    np.testing.assert_array_equal(r.ids, ref.place(want_ids, replicas))
    np.testing.assert_array_equal(r.weights.view(np.uint32), want_w.view(np.uint32), "weights unchanged by placement")
    with Client(daemon.endpoint, protocol=1) as v1:  # the deployment's placement applies to everyone
        np.testing.assert_array_equal(v1.route("placed", x).ids, r.ids)
    # a wider physical space than the ids use, and a second placement: a new epoch
    epoch2 = client.set_placement(layer, [[p + 1] for p in range(E)][::-1], num_physical=E + 10)
    assert epoch2 > epoch and client.layer("placed").num_physical == E + 10
    r = client.route("placed", x)
    assert r.placement_epoch == epoch2
    np.testing.assert_array_equal(r.ids, ref.place(want_ids, [[p + 1] for p in range(E)][::-1]))
    # masked rows stay -1 under a placement
    mask = np.zeros(37, bool)
    mask[::4] = True
    r = client.route("placed", x, mask=mask)
    assert (r.ids[mask] == -1).all()
    np.testing.assert_array_equal(r.ids[~mask], ref.place(want_ids, [[p + 1] for p in range(E)][::-1])[~mask])
    # clear: logical ids again
    cleared = client.clear_placement("placed")
    assert cleared > epoch2 or cleared == 0
    listed = client.layer("placed")
    assert listed.num_physical == 0 and listed.placement_epoch in (0, cleared)
    r = client.route("placed", x)
    assert_bit_exact(r, want_w, want_ids, "logical again")
    # The answer's epoch after a clear: the header says 0 means logical ids; the placement
    # answer says answers carry the epoch it returns. Either is accepted (see the report).
    assert r.placement_epoch in (0, cleared)


def test_placement_applies_to_shared_memory_and_hash_layers(client):
    layer = client.layer("hash-load")
    replicas = spread(384, 0, lambda e: 2)
    epoch = client.set_placement(layer, replicas)
    try:
        x = logits(20, 384, seed=2)
        tid = np.arange(20) * 37
        want_w, want_ids, _ = ref.route(layer.spec(), None, x, token_ids=tid, table=ref.preset_table("deepseek-v4-hash"))
        with client.session(layer, 32) as s:
            r = s.route(logits=x, token_ids=tid)
            assert r.placement_epoch == epoch and r.hash_routed
            np.testing.assert_array_equal(r.ids, ref.place(want_ids, replicas))
    finally:
        client.clear_placement(layer)


def test_a_swap_during_a_route_never_mixes_placements(client, daemon):
    """One client routes large shared-memory batches while another flips the layer between two
    placements as fast as it can: every answer's rows all follow exactly one of them, the one
    the answer's epoch names."""
    layer = client.layer("swap")
    a = [[e] for e in range(E)]                       # physical ids < E
    b = [[E + 2 * e, E + 2 * e + 1] for e in range(E)]  # physical ids >= E, by token parity
    tokens = 60000
    x = logits(tokens, E, seed=3)
    _, logical, _ = reference(layer, x, "bf16")
    want = {"a": ref.place(logical, a), "b": ref.place(logical, b)}
    epochs = {client.set_placement(layer, a): "a"}
    stop = threading.Event()
    sets = []

    def flipper():
        with Client(daemon.endpoint, timeout_ms=30000) as other:
            which = "b"
            while not stop.is_set():
                e = other.set_placement("swap", a if which == "a" else b)
                epochs[e] = which
                sets.append(time.monotonic())
                which = "a" if which == "b" else "b"

    t = threading.Thread(target=flipper)
    t.start()
    spans, seen = [], set()
    try:
        with client.session(layer, tokens, "bf16") as s:
            s.input[:] = ref.to_bf16_bits(x)
            for _ in range(12):
                t0 = time.monotonic()
                r = s.route()
                spans.append((t0, time.monotonic()))
                under_a = (r.ids < E).all(axis=1)
                under_b = (r.ids >= E).all(axis=1)
                assert (under_a | under_b).all(), "a row mixes the two placements"
                assert under_a.all() or under_b.all(), "an answer mixes the two placements"
                which = "a" if under_a.all() else "b"
                np.testing.assert_array_equal(r.ids, want[which])
                deadline = time.monotonic() + 5  # the flipper records an epoch once its answer is in
                while r.placement_epoch not in epochs and time.monotonic() < deadline:
                    time.sleep(0.001)
                assert epochs.get(r.placement_epoch) == which, (r.placement_epoch, which)
                seen.add(which)
    finally:
        stop.set()
        t.join()
        client.clear_placement("swap")
    overlapped = sum(any(t0 < s < t1 for s in sets) for t0, t1 in spans)
    assert overlapped >= 1, "no placement change landed while a route ran"
    assert len(sets) >= 3


@pytest.mark.parametrize("bad,needle", [
    (lambda: [[e] for e in range(E - 1)], "256"),                       # too few logical experts
    (lambda: [[e] for e in range(E)] + [[E]], "256"),                    # too many
    (lambda: [[e] for e in range(E - 1)] + [[]], "255"),                 # unplaced expert 255
    (lambda: [[e] for e in range(E - 1)] + [[0]], "0"),                  # physical id 0 given twice
    (lambda: [[e] for e in range(E - 1)] + [[-1]], "-1"),                # out of range below
])
def test_bad_placements_leave_the_layer_as_it_was(client, bad, needle):
    layer = client.layer("placed")
    good = [[E - 1 - e] for e in range(E)]
    epoch = client.set_placement(layer, good)
    try:
        with pytest.raises(BadPlacementError) as err:
            client.set_placement(layer, bad())
        assert needle in err.value.message
        with pytest.raises(BadPlacementError):
            client.set_placement(layer, good, num_physical=E - 1)  # id 255 out of range
        with pytest.raises(BadPlacementError):
            client.set_placement(layer, good, num_physical=70000)  # more physical experts than allowed
        assert client.layer("placed").placement_epoch == epoch
        x = logits(5, E, seed=4)
        r = client.route(layer, x)
        assert r.placement_epoch == epoch
        np.testing.assert_array_equal(r.ids, ref.place(reference(layer, x, "fp32")[1], good))
    finally:
        client.clear_placement(layer)


# ---- EXPERT_LOAD -----------------------------------------------------------------------------
def test_load_counts_are_the_returned_logical_ids(client):
    layer = client.layer("load")
    before = client.expert_load(layer)
    assert before.totals.dtype == np.uint64 and before.totals.shape == (128,) and before.window.shape == (128,)
    assert before.num_experts == 128
    x = logits(500, 128, seed=5)
    mask = np.random.default_rng(5).random(500) < 0.25
    r1 = client.route(layer, x, mask=mask)
    r2 = client.route(layer, x[:77])
    with client.session(layer, 300, mask=True) as s:
        s.input[:300] = x[:300]
        s.mask[:300] = mask[:300]
        r3 = s.route(300)
        ids3 = r3.ids.copy()
    after = client.expert_load(layer)
    recount = ref.expert_load(np.concatenate([r1.ids, r2.ids, ids3]), 128)
    np.testing.assert_array_equal(after.totals - before.totals, recount)
    np.testing.assert_array_equal(after.window - before.window, recount)
    assert after.total_assignments - before.total_assignments == int(recount.sum())
    assert int(recount.sum()) == 8 * (int((~mask).sum()) + 77 + int((~mask[:300]).sum()))
    assert after.total_assignments == int(after.totals.sum()) and after.window_assignments == int(after.window.sum())
    assert after.since_start_ns > before.since_start_ns


def test_window_reset(client):
    layer = client.layer("load")
    client.route(layer, logits(10, 128, seed=6))
    read = client.expert_load(layer, reset_window=True)
    assert read.window_reset and read.window.sum() > 0
    fresh = client.expert_load(layer)
    assert not fresh.window_reset
    assert fresh.window.sum() == 0 and fresh.window_assignments == 0
    np.testing.assert_array_equal(fresh.totals, read.totals)
    assert fresh.window_ns < read.window_ns + 10**10
    r = client.route(layer, logits(9, 128, seed=7))
    later = client.expert_load(layer)
    np.testing.assert_array_equal(later.window, ref.expert_load(r.ids, 128))
    np.testing.assert_array_equal(later.totals - read.totals, ref.expert_load(r.ids, 128))


def test_load_counts_logical_experts_under_a_placement_and_hash_routing(client):
    layer = client.layer("load")
    replicas = spread(128, 1000, lambda e: 1 + e % 2)
    client.set_placement(layer, replicas)
    try:
        before = client.expert_load(layer)
        r = client.route(layer, logits(64, 128, seed=8))
        assert (r.ids >= 1000).all()
        after = client.expert_load(layer)
        np.testing.assert_array_equal(after.totals - before.totals, ref.expert_load(logical_of(r.ids, replicas), 128))
    finally:
        client.clear_placement(layer)
    hashed = client.layer("hash-load")
    before = client.expert_load(hashed)
    mask = np.zeros(40, bool)
    mask[5:9] = True
    r = client.route(hashed, logits(40, 384, seed=9), token_ids=np.arange(40) * 11, mask=mask)
    after = client.expert_load(hashed)
    np.testing.assert_array_equal(after.totals - before.totals, ref.expert_load(r.ids, 384))
    assert int((after.totals - before.totals).sum()) == 36 * 6


# ---- control operations as another uid ---------------------------------------------------------
def as_nobody(fn):
    """Runs fn() in a forked child that has dropped to nobody; returns what it returned (JSON)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no assertions, only the JSON answer
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            data = json.dumps(fn())
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            data = json.dumps({"exception": repr(e)})
            code = 1
        os.write(w, data.encode())
        os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks).decode())


def open_to_everyone(daemon):
    os.chmod(daemon.dir, 0o755)
    os.chmod(daemon.sock_path, 0o666)


def control_attempts(endpoint):
    def attempt(call):
        try:
            call()
            return 0
        except Exception as e:  # noqa: BLE001
            return [getattr(e, "status", None), getattr(e, "message", repr(e))]

    def run():
        with Client(endpoint) as c:
            out = dict(uid=os.getuid(), control_allowed=c.info.control_allowed)
            out["set"] = attempt(lambda: c.set_placement("nobody-target", [[E - 1 - e] for e in range(E)]))
            out["clear"] = attempt(lambda: c.clear_placement("nobody-target"))
            out["load"] = attempt(lambda: c.expert_load("nobody-target"))
            out["reset"] = attempt(lambda: c.expert_load("nobody-target", reset_window=True))
            out["route"] = attempt(lambda: c.route("nobody-target", np.zeros((2, E), np.float32)))
            out["epoch"] = c.layer("nobody-target").placement_epoch
            return out
    return run


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to nobody needs root")


@needs_root
def test_nobody_may_read_load_but_not_change_placement_or_window(client, daemon):
    open_to_everyone(daemon)
    layer = client.layer("nobody-target")
    epoch = client.set_placement(layer, [[e] for e in range(E)])
    client.route(layer, logits(4, E))
    window = client.expert_load(layer).window.copy()
    try:
        got = as_nobody(control_attempts(daemon.endpoint))
        assert "exception" not in got, got
        assert got["uid"] == NOBODY and got["control_allowed"] is False
        for op in ("set", "clear", "reset"):
            assert got[op][0] == Status.NOT_PERMITTED, (op, got[op])
            assert str(NOBODY) in got[op][1], got[op]
        assert got["load"] == 0 and got["route"] == 0, got
        assert got["epoch"] == epoch
        assert client.layer("nobody-target").placement_epoch == epoch, "the placement is unchanged"
        after = client.expert_load(layer)
        assert (after.window >= window).all() and after.window.sum() == window.sum() + 2 * 8, "no window reset"
    finally:
        client.clear_placement(layer)
    assert issubclass(NotPermittedError, PermissionError)


@needs_root
def test_control_uid_lets_nobody_change_placement(routerd_binary, routerd_class, tmp_path):
    d = start(routerd_class, routerd_binary, tmp_path, "--control-uid", str(NOBODY))
    try:
        open_to_everyone(d)
        got = as_nobody(control_attempts(d.endpoint))
        assert "exception" not in got, got
        assert got["control_allowed"] is True
        assert got["set"] == 0 and got["clear"] == 0 and got["reset"] == 0 and got["load"] == 0, got
    finally:
        assert d.stop() == 0
