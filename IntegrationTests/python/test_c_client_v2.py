"""The C client's protocol-2 API (padding masks, token ids and hash-routed layers, expert placement,
expert load, limits) against a real daemon, hostile version-2 requests, and the same library
against a daemon that speaks version 1 only. The checks live in IntegrationTests/c/protocol_v2.c;
each test starts the daemon one mode needs."""
import os
import shutil
import struct
import threading

import pytest
import zmq

from c_programs import build, passed, run, world_runnable_copy

DS = "deepseek-v3"
HASH = "deepseek-v4-hash"


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    return build(tmp_path_factory.mktemp("v2"), "protocol_v2")


def test_padding_masks(start_daemon, exe):
    d = start_daemon("--preset", DS)
    assert "masks ok" in passed(run(exe, d.endpoint, "masks"))
    assert d.alive()


def test_hash_routed_layer_takes_its_experts_from_tid2eid(start_daemon, exe):
    d = start_daemon("--preset", HASH, "--preset", DS)
    out = passed(run(exe, d.endpoint, "hash"))
    assert "hash ok" in out
    assert d.alive()


def test_expert_placement_maps_ids_to_physical_replicas(start_daemon, exe):
    d = start_daemon("--preset", DS)
    assert "placement ok" in passed(run(exe, d.endpoint, "placement"))
    assert d.alive()


def test_expert_load_counts_the_routed_ids(start_daemon, exe):
    d = start_daemon("--preset", DS)
    assert "load ok" in passed(run(exe, d.endpoint, "load"))


def test_limits_report_the_daemons_settings(start_daemon, exe):
    d = start_daemon("--preset", DS, "--max-registrations-per-uid", "5", "--max-mapped-bytes-per-uid", str(64 << 20),
                     "--max-queued-reply-bytes", str(2 << 20))
    assert "limits ok" in passed(run(exe, d.endpoint, "limits", 5))


def test_hostile_version_2_requests_get_typed_statuses(start_daemon, exe):
    d = start_daemon("--preset", DS, "--preset", HASH)
    out = passed(run(exe, d.endpoint, "hostile"))
    assert "hostile ok" in out
    assert d.alive()
    # the daemon serves on, to a new client as well
    assert "masks ok" in passed(run(exe, d.endpoint, "masks"))


def _ping(endpoint):
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    try:
        s.send(struct.pack("<IHHQIIQ", 0x52454F4D, 1, 7, 1, 0, 0, 0))
        assert s.poll(10000), "no answer to PING"
        s.recv_multipart()
    finally:
        s.close()
        ctx.term()


def _as_nobody():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another uid")
@pytest.mark.parametrize("trusted", [False, True])
def test_control_ops_need_a_trusted_uid(start_daemon, exe, trusted):
    """SET_PLACEMENT and resetting a load window from a uid that is not the daemon's, not root and
    not a --control-uid: MOE_ERR_NOT_PERMITTED (and moe_limits says control_allowed 0)."""
    d = start_daemon("--preset", DS, *(["--control-uid", "65534"] if trusted else []))
    _ping(d.endpoint)  # start-up is over: the daemon has set the socket's mode, ours stays
    os.chmod(d.dir, 0o755)
    os.chmod(d.sock_path, 0o666)
    copy = world_runnable_copy(exe)
    try:
        out = passed(run(copy, d.endpoint, "denied", "allowed" if trusted else "denied", preexec_fn=_as_nobody))
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)
    assert f"control {'allowed' if trusted else 'denied'} ok" in out


class VersionOneDaemon:
    """A daemon that speaks protocol version 1 only, as moe-routerd did at commit 2eea8fe: it answers
    version-1 requests (one layer, E 8, k 2; ROUTE outputs weights t + 0.5 and ids j) and refuses
    any other header version with MOE_ERR_BAD_VERSION, recording every version it saw."""

    E, K = 8, 2

    def __init__(self, tmp_path):
        self.endpoint = f"ipc://{tmp_path}/v1.sock"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind(self.endpoint)
        self.versions = []
        self.hellos = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        self.ctx.term()

    def answer(self, peer, version, op, rid, status, body=b"", frames=(), message=b"ok"):
        head = struct.pack("<IHHQIIHHI", 0x52454F4D, version, op, rid, status, len(body), len(message), 0, 0)
        self.sock.send_multipart([peer, head + body + message, *frames])

    def serve(self):
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            peer, *frames = self.sock.recv_multipart()
            magic, version, op, rid, body_size, _, _ = struct.unpack_from("<IHHQIIQ", frames[0])
            body = frames[0][32:]
            self.versions.append(version)
            if version != 1:
                self.answer(peer, 1, op, rid, 3, message=b"version = %d; this daemon speaks protocol 1" % version)
            elif op == 1:  # HELLO
                lo, hi = struct.unpack_from("<HH", body)
                self.hellos.append((lo, hi))
                resp = struct.pack("<HHI32s32sQQIIIIIIII", 1, 1, 1, b"0.1.0", b"fake-v1", 64 << 20, 1 << 20, 64, 5000,
                                   1, 64, 1, 1024, 32, 0)
                self.answer(peer, 1, op, rid, 0, resp)
            elif op == 2:  # LIST_LAYERS
                info = struct.pack("<IBBBBIIIIBBHfII64s", 0, 0, 0, 0, 0, self.E, self.K, 1, 1, 1, 0, 0, 1.0, 0, 0,
                                   b"fake")
                self.answer(peer, 1, op, rid, 0, struct.pack("<II", 1, 0) + info, [b""])
            elif op == 3:  # REGISTER_SHM
                size = struct.unpack_from("<Q", body, 256)[0]
                self.answer(peer, 1, op, rid, 0, struct.pack("<QQ", 77, size))
            elif op == 4:  # UNREGISTER_SHM
                self.answer(peer, 1, op, rid, 0, struct.pack("<II", 0, 0))
            elif op == 5:  # ROUTE, all inline
                if len(body) != 112:
                    self.answer(peer, 1, op, rid, 1, struct.pack("<QQQIIQ", 0, 0, 0, 0, 0, 0), message=b"malformed")
                    continue
                tokens = struct.unpack_from("<Q", body, 8)[0]
                w = struct.pack(f"<{tokens * self.K}f", *[t + 0.5 for t in range(tokens) for _ in range(self.K)])
                ids = struct.pack(f"<{tokens * self.K}i", *[j for _ in range(tokens) for j in range(self.K)])
                self.answer(peer, 1, op, rid, 0, struct.pack("<QQQIIQ", tokens, 0, 2**64 - 1, 0, self.K, 1), [w, ids])
            elif op == 6:  # STATS
                self.answer(peer, 1, op, rid, 0, struct.pack("<16Q32s", *range(16), b"fake-v1"))
            elif op == 7:  # PING
                self.answer(peer, 1, op, rid, 0)
            else:
                self.answer(peer, 1, op, rid, 4, message=b"op = %d is not an operation" % op)


def test_against_a_version_1_daemon(tmp_path, exe):
    """The current library negotiates version 1 with an old daemon, sends it only version-1
    requests, and answers the version-2 calls MOE_ERR_BAD_VERSION with a message saying why."""
    daemon = VersionOneDaemon(tmp_path)
    try:
        out = passed(run(exe, daemon.endpoint, "v1daemon"))
    finally:
        daemon.close()
    assert "v1 daemon ok" in out
    assert "needs protocol version 2; the daemon speaks version 1 only" in out
    assert daemon.hellos and all(h == (1, 2) for h in daemon.hellos)
    assert set(daemon.versions) == {1}


HELLO_V2 = dict(protocol_version=2, ext=True)


class MisbehavingDaemon(VersionOneDaemon):
    """A version-2 daemon whose answers break the protocol in one way each, in the order
    protocol_v2's `malformed` mode asks: a HELLO claiming version 2 without its extension, one
    choosing version 3, a good HELLO, then one malformed answer per call, then a good PING."""

    def __init__(self, tmp_path):
        self.script = []
        super().__init__(tmp_path)

    def hello_body(self, version, ext):
        resp = struct.pack("<HHI32s32sQQIIIIIIII", version, 1, 1, b"0.2.0", b"fake-v2", 64 << 20, 1 << 20, 64, 5000,
                           1, 64, 1, 1024, 32, 0)
        return resp + (struct.pack("<QQIIIIQQII", 1 << 30, 1 << 40, 1024, 1000, 3000, 15, 1 << 26, 1 << 30, 65536, 1)
                       if ext else b"")

    def serve(self):
        hellos = [self.hello_body(2, False), self.hello_body(3, True), self.hello_body(2, True)]
        route_v2 = struct.pack("<QQQIIQQQQII", 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0)
        info_v1 = struct.pack("<IBBBBIIIIBBHfII64s", 0, 0, 0, 0, 0, self.E, self.K, 1, 1, 1, 0, 0, 1.0, 0, 0, b"fake")
        answers = {  # op -> [(header version, body, extra frames), ...] in the order they are asked for
            6: [(2, struct.pack("<16Q32s", *range(16), b"fake"), [])],                      # STATS v2 with a v1 body
            5: [(2, route_v2[:40], [b"\0" * 8, b"\0" * 8]),                                 # ROUTE v2 with a v1 body
                (1, route_v2, [b"\0" * 8, b"\0" * 8]),                                      # answered in version 1
                (2, route_v2, [b"\0" * 8, b"\0" * 8, b"x"]),                                # an extra frame
                (2, route_v2, [b"\0" * 8, b"\0" * 4])],                                     # ids frame short
            9: [(2, struct.pack("<IIQQQQ", self.E, 0, 1, 1, 0, 0), [b"\0" * (self.E * 16 - 8)])],  # counters short
            2: [(2, struct.pack("<II", 1, 0) + info_v1, [b""])],                            # v1 layer entries
            8: [(2, b"\0" * 8, [])],                                                        # placement body short
            7: [(2, b"", [b"extra"]), (2, b"", [])],                                        # PING: extra frame, then good
        }
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            peer, *frames = self.sock.recv_multipart()
            _, version, op, rid, _, _, _ = struct.unpack_from("<IHHQIIQ", frames[0])
            self.versions.append(version)
            if op == 1:
                self.answer(peer, 1, op, rid, 0, hellos.pop(0) if len(hellos) > 1 else hellos[0])
                continue
            v, body, extra = answers[op].pop(0)
            self.answer(peer, v, op, rid, 0, body, extra)


def test_malformed_answers_are_client_protocol_errors(tmp_path, exe):
    """Every answer is checked against the negotiated version's sizes: body, frame count, output
    frames, the echoed version, the HELLO extension."""
    daemon = MisbehavingDaemon(tmp_path)
    try:
        out = passed(run(exe, daemon.endpoint, "malformed"))
    finally:
        daemon.close()
    assert "malformed ok" in out
