"""Every error a user of the Python client can cause surfaces as its own exception class, with
the status code of Include/moe_router.h and a message naming what was wrong; the client and
the daemon keep working afterwards."""
import dataclasses
import os
import signal
import socket
import uuid

import numpy as np
import pytest

import moe_router as mr
from moe_router import Client
from daemon_helpers import stop_process
from python_client_support import MAX_REGISTRATIONS, MAX_TOKENS, logits, start_router


@pytest.fixture(scope="module")
def daemon(routerd_binary, routerd_class, tmp_path_factory):
    d = start_router(routerd_binary, routerd_class, tmp_path_factory.mktemp("pyerrors"))
    yield d
    assert d.stop() == 0


@pytest.fixture
def client(daemon):
    with Client(daemon.endpoint) as c:
        yield c
        c.ping()  # every error left the connection usable


class HostSegment:
    """A shm object the test manages itself (for register_shm's errors)."""

    def __init__(self, size, mode=0o600):
        self.name = f"/moe-router-pyerr-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = "/dev/shm" + self.name
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.fchmod(fd, mode)
        os.ftruncate(fd, size)
        os.close(fd)

    def remove(self):
        os.unlink(self.path)


def raises(cls, fn, *args, **kw):
    with pytest.raises(cls) as e:
        fn(*args, **kw)
    err = e.value
    assert type(err) is cls and err.status == cls.status and err.message
    assert err.status_name in str(err)
    return err


# ---- layers ----------------------------------------------------------------------------------
def test_unknown_layer_name_and_id(client):
    x = np.zeros((1, 8), np.float32)
    err = raises(mr.UnknownLayerError, client.route, "no-such-layer", x)
    assert "no-such-layer" in err.message and "mixtral-8x7b" in err.message
    raises(mr.UnknownLayerError, client.route, 12345, x)
    raises(mr.UnknownLayerError, client.layer, "nope")
    assert isinstance(err, LookupError)


def test_unknown_layer_answered_by_the_daemon(client):
    ghost = dataclasses.replace(client.layer("mixtral-8x7b"), id=4000)
    raises(mr.UnknownLayerError, client.route, ghost, np.zeros((1, 8), np.float32))


# ---- sizes and dtypes --------------------------------------------------------------------------
def test_size_mismatch_inline(client):
    err = raises(mr.SizeMismatchError, client.route, "deepseek-v3", np.zeros((4, 255), np.float32))
    assert "num_experts=256" in err.message and "(4, 255)" in err.message
    assert isinstance(err, ValueError)


def test_size_mismatch_of_out_arrays(client):
    w, ids = np.empty((4, 7), np.float32), np.empty((4, 7), np.int32)
    raises(mr.SizeMismatchError, client.route, "deepseek-v3", np.zeros((4, 256), np.float32), out=(w, ids))


def test_size_mismatch_in_shared_memory(client):
    with client.shared_buffer(1 << 16) as buf:
        raises(mr.SizeMismatchError, client.route, "deepseek-v3", buf.array(np.float32, (4, 200)))
    with client.session("deepseek-v3", 4) as s:
        raises(mr.SizeMismatchError, s.route, logits=np.zeros((2, 128), np.float32))


@pytest.mark.parametrize("data,dtype", [
    (np.zeros((2, 8), np.float64), None),
    (np.zeros((2, 8), np.int32), None),
    (np.zeros((2, 8), np.uint16), None),          # bf16 bits must be declared
    (np.zeros((2, 8), np.float32), "fp8"),
    (np.zeros((2, 8), np.int32), "bf16"),
    (np.zeros((2, 8), np.float16), "fp32"),
    (np.zeros((2, 8), np.float32), 7),
], ids=["float64", "int32", "undeclared-uint16", "fp8", "int32-as-bf16", "fp16-as-fp32", "code-7"])
def test_bad_dtype(client, data, dtype):
    err = raises(mr.BadDTypeError, client.route, "mixtral-8x7b", data, dtype=dtype)
    assert isinstance(err, TypeError)


def test_bad_shape(client):
    raises(mr.ClientArgumentError, client.route, "mixtral-8x7b", np.zeros((2, 2, 8), np.float32))


def test_too_many_tokens(client):
    err = raises(mr.TooLargeError, client.route, "mixtral-8x7b", np.zeros((MAX_TOKENS + 1, 8), np.float32))
    assert str(MAX_TOKENS) in err.message


# ---- non-finite input under a reject layer -----------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_rejected_inline(client, bad):
    x = logits(10, 256, seed=1)
    x[6, 17] = bad
    x[8, 0] = bad
    err = raises(mr.NonfiniteInputError, client.route, "deepseek-v3-reject", x)
    assert err.token == 6 and err.count == 2
    # The same input under a clamp layer is routed and counted.
    assert client.route("deepseek-v3", x).nonfinite_count == 2


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_nonfinite_rejected_in_shm_writes_nothing(client, dtype):
    with client.session("qwen3-moe-reject", 8, dtype=dtype) as s:
        x = logits(8, 128, seed=2)
        x[3, 5] = np.nan
        s.input[:] = {"fp32": x, "fp16": x.astype(np.float16),
                      "bf16": __import__("routing_reference").to_bf16_bits(x)}[dtype]
        s.weights[:] = 42.0
        s.ids[:] = -7
        err = raises(mr.NonfiniteInputError, s.route, 8)
        assert err.token == 3 and err.count == 1
        assert (s.weights == 42.0).all() and (s.ids == -7).all(), "a rejected request wrote its outputs"


# ---- shared memory -----------------------------------------------------------------------------
def test_unknown_handle(client):
    raises(mr.UnknownHandleError, client.unregister_shm, 0xDEADBEEF)
    buf = client.shared_buffer(4096)
    client.unregister_shm(buf.handle)
    raises(mr.UnknownHandleError, client.unregister_shm, buf.handle)
    buf.close()  # closing a buffer unregistered by hand is fine


def test_handle_of_another_client_is_unknown(daemon, client):
    with Client(daemon.endpoint) as other:
        buf = other.shared_buffer(4096)
        raises(mr.UnknownHandleError, client.unregister_shm, buf.handle)


def test_registration_limit(daemon):
    with Client(daemon.endpoint) as c:
        bufs = [c.shared_buffer(4096) for _ in range(MAX_REGISTRATIONS)]
        raises(mr.RegistrationLimitError, c.shared_buffer, 4096)
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"moe-router-py-{os.getpid()}-")]
        bufs.pop().close()
        bufs.append(c.shared_buffer(4096))  # room again


def test_misaligned_buffer(client):
    with client.shared_buffer(1 << 16) as buf:
        x = buf.array(np.float32, (2, 8), offset=2)
        raises(mr.MisalignedError, client.route, "mixtral-8x7b", x)


def test_overlapping_outputs(client):
    with client.shared_buffer(1 << 16) as buf:
        w = buf.array(np.float32, (4, 2), offset=1024)
        ids = buf.array(np.int32, (4, 2), offset=1024 + 16)
        raises(mr.OverlapError, client.route, "mixtral-8x7b", np.zeros((4, 8), np.float32), out=(w, ids))
        inp = buf.array(np.float32, (4, 8), offset=0)
        ids2 = buf.array(np.int32, (4, 2), offset=64)
        w2 = buf.array(np.float32, (4, 2), offset=4096)
        raises(mr.OverlapError, client.route, "mixtral-8x7b", inp, out=(w2, ids2))


def test_register_errors(client):
    raises(mr.ShmNameError, client.register_shm, "no-slash", 4096)
    raises(mr.ShmNameError, client.register_shm, "/a/b", 4096)
    raises(mr.ShmOpenError, client.register_shm, f"/moe-router-pyerr-missing-{uuid.uuid4().hex}", 4096)
    raises(mr.ClientArgumentError, client.register_shm, "/" + "x" * 300, 4096)
    seg = HostSegment(4096)
    try:
        raises(mr.ShmSizeError, client.register_shm, seg.name, 8192)
        h = client.register_shm(seg.name, 4096)  # the host-managed path works
        assert client.unregister_shm(h) is False
    finally:
        seg.remove()
    open_seg = HostSegment(4096, mode=0o666)
    try:
        raises(mr.ShmPermissionsError, client.register_shm, open_seg.name, 4096)
    finally:
        open_seg.remove()


def test_truncated_segment(client):
    seg = HostSegment(1 << 16)
    try:
        h = client.register_shm(seg.name, 1 << 16)
        os.truncate(seg.path, 4096)
        # Route through the handle with crafted refs (the public API never points past a buffer),
        # as a version-1 request (its body is the version-1 one).
        body = mr._wire.route_body(client.layer("mixtral-8x7b").id, 0, 1,
                                   [(1, h, 0, 32), (1, h, 40000, 8), (1, h, 50000, 8)])
        reply = client._call(mr._wire.OP_ROUTE, body, version=1)
        assert reply.status in (mr.Status.SHM_TRUNCATED, mr.Status.OUT_OF_BOUNDS), reply.message
        assert type(mr.error_for(reply.status, reply.message)) in (mr.ShmTruncatedError, mr.OutOfBoundsError)
    finally:
        seg.remove()


def test_shared_memory_refused_over_tcp(start_daemon):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = start_daemon("--preset", "mixtral-8x7b", "--tcp", f"tcp://127.0.0.1:{port}")
    with Client(f"tcp://127.0.0.1:{port}") as c:
        assert not c.server.shm_allowed
        raises(mr.ShmRefusedError, c.shared_buffer, 4096)
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"moe-router-py-{os.getpid()}-")]
        w, ids = c.route("mixtral-8x7b", np.ones((2, 8), np.float32))  # inline works over tcp
        assert ids.shape == (2, 2)
    assert d.alive()


# ---- the client itself -------------------------------------------------------------------------
def test_timeout_then_recovery(start_daemon):
    d = start_daemon("--preset", "mixtral-8x7b")
    with Client(d.endpoint, timeout_ms=300) as c:
        stop_process(d.pid)
        try:
            err = raises(mr.ClientTimeoutError, c.ping)
            assert isinstance(err, TimeoutError)
            raises(mr.ClientTimeoutError, c.route, "mixtral-8x7b", np.ones((1, 8), np.float32))
        finally:
            os.kill(d.pid, signal.SIGCONT)
        # The late answers to the timed-out requests are recognised by id and dropped.
        w, ids = c.route("mixtral-8x7b", np.arange(8, dtype=np.float32))
        assert list(ids[0]) == [7, 6]
        assert c.layers()[0].name == "mixtral-8x7b"


def test_no_daemon_is_a_timeout(tmp_path):
    err = raises(mr.ClientTimeoutError, Client, f"ipc://{tmp_path}/nobody.sock", timeout_ms=200)
    assert "nobody.sock" in err.message


def test_bad_endpoint_is_an_io_error():
    raises(mr.ClientIOError, Client, "bogus://endpoint")


def test_closed_client_and_buffer(daemon):
    c = Client(daemon.endpoint)
    s = c.session("mixtral-8x7b", 2)
    s.close()
    raises(mr.ClientArgumentError, s.buffer.array, np.float32, 4)
    c.close()
    raises(mr.ClientArgumentError, c.ping)
    raises(mr.ClientArgumentError, c.shared_buffer, 4096)


def test_session_arguments(client):
    raises(mr.ClientArgumentError, client.session, "mixtral-8x7b", 0)
    raises(mr.ClientArgumentError, client.shared_buffer, 0)
    with client.session("mixtral-8x7b", 4) as s:
        raises(mr.ClientArgumentError, s.route, 5)
        raises(mr.ClientArgumentError, s.route, logits=np.zeros((5, 8), np.float32))
        raises(mr.ClientArgumentError, s.buffer.array, np.float32, (1 << 20,))
    raises(mr.ClientArgumentError, client.route, "mixtral-8x7b", np.zeros((1, 8), np.float32),
           out=(np.empty((1, 2), np.float64), np.empty((1, 2), np.int32)))
