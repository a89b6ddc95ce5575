"""The daemon still serves version-1 clients: the C client as released before protocol 2 (a frozen
copy in IntegrationTests/c/v1, commit 2eea8fe) against the current daemon, compared with the
current client (IntegrationTests/c/v1_compat.c, IntegrationTests/c/protocol_v2.c)."""
import struct
import subprocess

import pytest
import zmq

from c_programs import C_TESTS, FROZEN_V1, ROOT, build, passed, route_lines, run

DS = "deepseek-v3"
FROZEN_AT = "2eea8fe"
FROZEN_FILES = {"moe_router_client.c": "clients/c/moe_router_client.c",
                "moe_router_client.h": "Include/moe_router_client.h",
                "moe_router_wire.h": "Include/moe_router_wire.h",
                "moe_router_status.c": "Sources/CMoERouterWire/moe_router_status.c"}


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    d = tmp_path_factory.mktemp("v1compat")
    return build(d, "v1_compat", FROZEN_V1), build(d, "protocol_v2")


def test_the_frozen_copy_is_the_released_client():
    """Nothing in IntegrationTests/c/v1 may drift from what version-1 hosts linked."""
    assert "#define MOE_PROTOCOL_VERSION 1u" in (C_TESTS / "v1/moe_router_wire.h").read_text()
    for name, path in FROZEN_FILES.items():
        p = subprocess.run(["git", "-C", str(ROOT), "show", f"{FROZEN_AT}:{path}"], capture_output=True)
        if p.returncode != 0:
            pytest.skip(f"no git history here ({p.stderr.decode().strip()})")
        assert (C_TESTS / "v1" / name).read_bytes() == p.stdout, name


def test_version_1_client_is_served_as_before(start_daemon, programs):
    """HELLO in version 1 (its 120-byte body), LIST_LAYERS, inline and shm ROUTEs, STATS and typed
    errors through the old client; its routes equal the current client's bit for bit."""
    v1, v2 = programs
    d = start_daemon("--preset", DS)
    old = passed(run(v1, d.endpoint, "check"))
    assert "hello protocol_version=1 body=120" in old
    assert "v1 client ok" in old
    new = passed(run(v2, d.endpoint, "dump"))
    assert len(route_lines(old)) == 4
    assert route_lines(old) == route_lines(new)
    assert d.alive()


def test_hello_answer_to_a_version_1_request_is_exactly_version_1(start_daemon):
    """Byte level: a version-1 HELLO offering only version 1 gets a version-1 header and exactly a
    moe_hello_resp (120 bytes), protocol_version 1; offering 1...2 gets version 2 and the extension."""
    d = start_daemon("--preset", DS)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(d.endpoint)
    try:
        for max_version, body_size, version in [(1, 120, 1), (2, 120 + 56, 2)]:
            body = struct.pack("<HHI64s", 1, max_version, 0, b"pytest")
            s.send(struct.pack("<IHHQIIQ", 0x52454F4D, 1, 1, 7, len(body), 0, 0) + body)
            assert s.poll(5000)
            frames = s.recv_multipart()
            assert len(frames) == 1
            magic, hv, op, rid, status, bsize, mlen, _, _ = struct.unpack_from("<IHHQIIHHI", frames[0])
            assert (magic, hv, op, rid, status) == (0x52454F4D, 1, 1, 7, 0)
            assert bsize == body_size
            assert len(frames[0]) == 32 + bsize + mlen
            protocol_version, min_version = struct.unpack_from("<HH", frames[0], 32)
            assert (protocol_version, min_version) == (version, 1)
    finally:
        s.close()
        ctx.term()


def test_a_placement_maps_the_ids_of_version_1_clients_too(start_daemon, programs):
    """A placement set by a version-2 client applies to every client: the old client's ROUTEs then
    return the same physical ids as the new client's."""
    v1, v2 = programs
    d = start_daemon("--preset", DS)
    before = route_lines(passed(run(v1, d.endpoint, "dump")))
    assert "placement set" in passed(run(v2, d.endpoint, "place-only"))
    old = route_lines(passed(run(v1, d.endpoint, "dump")))
    new = route_lines(passed(run(v2, d.endpoint, "dump")))
    assert old == new
    assert old != before
