"""The moe-routerd client: one ZeroMQ DEALER connection, one request in flight at a time."""
import itertools
import os
import threading
import time
import warnings
import weakref

import numpy as np
import zmq
import zmq.utils.z85

from . import _native
from . import _wire as w
from ._arrays import as_logits, as_mask, as_token_ids
from .errors import (BadVersionError, ClientArgumentError, ClientIOError, ClientProtocolError, ClientTimeoutError,
                     Status, UnknownHandleError, UnknownLayerError, error_for)
from .shm import SharedBuffer, Session
from .types import (DType, ExpertLoad, Layer, Method, Nonfinite, RouteResult, Scoring, ServerInfo, ServerLimits,
                    Stats)

DEFAULT_TIMEOUT_MS = 5000
_unpack_info = _native.INFO.unpack_from
_ndarray = np.ndarray


def default_endpoint():
    """The daemon's default endpoint, resolved like the C client's moe_default_endpoint():
    $MOE_ROUTER_ENDPOINT, else ipc://$RUNTIME_DIRECTORY/routerd.sock (first entry), else
    ipc://$XDG_RUNTIME_DIR/moe-router/routerd.sock, else ipc:///tmp/moe-router-$UID/routerd.sock."""
    env = os.environ
    if env.get("MOE_ROUTER_ENDPOINT"):
        return env["MOE_ROUTER_ENDPOINT"]
    if env.get("RUNTIME_DIRECTORY"):
        return f"ipc://{env['RUNTIME_DIRECTORY'].split(':', 1)[0]}/routerd.sock"
    if env.get("XDG_RUNTIME_DIR"):
        return f"ipc://{env['XDG_RUNTIME_DIR']}/moe-router/routerd.sock"
    return f"ipc:///tmp/moe-router-{os.getuid()}/routerd.sock"


class _Reply:
    __slots__ = ("status", "body", "message", "frames")

    def __init__(self, status, body, message, frames):
        self.status, self.body, self.message, self.frames = status, body, message, frames


class Client:
    """A connection to moe-routerd.

    ``Client(endpoint=None, timeout_ms=5000)`` connects (``endpoint`` None: default_endpoint())
    and performs HELLO; the answer is ``client.server``. ``timeout_ms`` bounds every call's wait
    for an answer (ClientTimeoutError) and is sent as the request's deadline.

    Thread-safety: a Client may be shared by threads; its calls are serialized by a lock (one
    request in flight per connection, as the protocol requires), so threads sharing one Client
    take turns. For parallel requests give each thread its own Client. Shared-memory buffers
    belong to the Client that registered them; concurrent routes on one Session race on its
    buffers, so give each thread its own Session.

    ``close()`` (or leaving a ``with`` block) unregisters every SharedBuffer/Session made through
    this Client and closes the socket.

    ``protocol``: None (default) negotiates the newest version both sides speak (2 with a current
    daemon; ``client.protocol`` says which); 1 speaks version 1 only, byte for byte as clients
    before version 2 did; 2 requires version 2 (BadVersionError from an older daemon). Version 2
    brings token ids and padding masks on ROUTE, expert placement, expert load counters, the
    HELLO limits in ``client.info`` (None on a version-1 connection) and more STATS fields;
    asking for any of them on a version-1 connection raises BadVersionError.

    ``curve=(server_public, client_public, client_secret)`` (Z85 strings; ``curve_keys()`` reads
    them from the files ``moe-routerctl keygen`` writes) connects to a tcp endpoint that requires
    ZeroMQ CURVE. A daemon that does not admit the key never completes the handshake: the HELLO
    times out (ClientTimeoutError).

    ``channel``: on an ipc connection of protocol version 2 to a daemon offering channels
    (``client.info.supports_channels``), inline ROUTEs go through a shared-memory channel of the
    C client library (libmoerouter, loaded with ctypes; see moe_router._native) opened at the
    first such route, instead of a ZeroMQ round trip: same results bit for bit, same errors;
    ``RouteResult.path`` says which path served each. None (default): on unless the environment
    has MOE_ROUTER_CHANNEL=0; False: never; True: on whatever the environment says. Without the
    library (or for shared-memory routes, tcp, protocol 1) ROUTE stays on ZeroMQ; a missing
    library is a RuntimeWarning, not an error (``client.channel_error`` says why).
    """

    def __init__(self, endpoint=None, timeout_ms=DEFAULT_TIMEOUT_MS, client_name=None, curve=None, protocol=None,
                 channel=None):
        if protocol not in (None, 1, 2):
            raise ClientArgumentError(f"protocol must be None, 1 or 2; got {protocol!r}")
        self.endpoint = endpoint or default_endpoint()
        self._wanted_protocol = protocol
        self._max_version = 1 if protocol == 1 else w.VERSION
        self.protocol = w.MIN_VERSION  # the negotiated version, once HELLO has answered
        self.info = None
        self.timeout_ms = int(timeout_ms) if timeout_ms and timeout_ms > 0 else DEFAULT_TIMEOUT_MS
        self._client_name = (client_name or f"moe_router-py pid {os.getpid()}").encode()[:w.NAME_BYTES - 1]
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._buffers = {}
        self._layers_by_id = {}
        self._layers_by_name = {}
        self._closed = False
        if channel is None:
            channel = os.environ.get("MOE_ROUTER_CHANNEL") != "0"  # as the C client reads it
        self._channel_wanted = bool(channel)
        self._channel_on = False   # inline ROUTEs try the native channel path (set after HELLO)
        self._native = None        # the _native.NativeClient, opened at the first inline route
        self._native_finalizer = None
        self.channel_error = None if self._channel_wanted else "turned off (channel=False or MOE_ROUTER_CHANNEL=0)"
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.linger = 0
        if curve is not None:
            try:
                server, public, secret = (k.encode() if isinstance(k, str) else bytes(k) for k in curve)
                if not all(len(k) == 40 for k in (server, public, secret)):
                    raise ValueError("each key must be 40 Z85 characters")
                zmq.utils.z85.decode(server), zmq.utils.z85.decode(public), zmq.utils.z85.decode(secret)
                self._sock.curve_serverkey, self._sock.curve_publickey, self._sock.curve_secretkey = server, public, secret
            except (ValueError, TypeError, zmq.ZMQError) as e:
                self._sock.close()
                raise ClientArgumentError(f"curve must be (server public, client public, client secret) Z85 keys: {e}") from e
        try:
            self._sock.connect(self.endpoint)
        except zmq.ZMQError as e:
            self._sock.close()
            raise ClientIOError(f"connect({self.endpoint}): {e}") from e
        try:
            self.server = self.hello()
        except BaseException:
            self._sock.close()
            self._closed = True
            raise
        if self._channel_wanted:
            if not self.endpoint.startswith("ipc://"):
                self.channel_error = "not an ipc endpoint"
            elif self.protocol < 2 or self.info is None:
                self.channel_error = "protocol version 1"
            elif not self.info.supports_channels:
                self.channel_error = "the daemon does not offer channels to this connection"
            else:
                self._channel_on = True

    # ---- the request/answer cycle ----------------------------------------------------------
    def _call(self, op, body=b"", payload=None, version=None):
        """Sends one request (``payload``: the frame after frame 0, or a list of such frames) with
        header version ``version`` (default: the negotiated one) and returns its answer; raises
        the status's exception unless it is OK (ROUTE bodies are returned either way)."""
        with self._lock:
            if self._closed:
                raise ClientArgumentError("the client is closed")
            request_id = next(self._ids)
            frame0 = w.REQ_HEADER.struct.pack(w.MAGIC, self.protocol if version is None else version, op, request_id,
                                              len(body), self.timeout_ms, 0) + body
            try:
                if payload is None:
                    self._sock.send(frame0)
                elif isinstance(payload, list):
                    self._sock.send_multipart([frame0, *payload], copy=False)
                else:
                    self._sock.send_multipart([frame0, payload], copy=False)
            except zmq.ZMQError as e:
                raise ClientIOError(f"send: {e}") from e
            deadline = time.monotonic() + self.timeout_ms / 1000
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClientTimeoutError(f"no answer from {self.endpoint} within {self.timeout_ms} ms")
                # A blocking receive with a timeout rather than poll + receive: libzmq checks the
                # socket once instead of three times (fewer syscalls per call).
                self._sock.rcvtimeo = max(1, int(left * 1000))
                try:
                    frames = self._sock.recv_multipart(copy=False)
                except zmq.Again:
                    continue
                except zmq.ZMQError as e:
                    raise ClientIOError(f"receive: {e}") from e
                head = frames[0].bytes
                if len(head) < w.RESP_HEADER.size:
                    raise ClientProtocolError(f"answer of {len(head)} bytes is shorter than a header")
                magic, _version, _op, rid, status, body_size, message_len, _, _ = w.RESP_HEADER.struct.unpack_from(head)
                if rid != request_id and rid != 0:
                    continue  # a late answer to an earlier request that timed out
                if magic != w.MAGIC or w.RESP_HEADER.size + body_size + message_len != len(head):
                    raise ClientProtocolError("malformed answer: magic or sizes disagree with the header")
                body = head[w.RESP_HEADER.size:w.RESP_HEADER.size + body_size]
                message = head[w.RESP_HEADER.size + body_size:].decode("utf-8", "replace")
                reply = _Reply(status, body, message, frames[1:])
                if status != Status.OK and op != w.OP_ROUTE:
                    raise error_for(status, message or f"daemon answered status {status}")
                return reply

    def _body(self, reply, st):
        if len(reply.body) != st.size:
            raise ClientProtocolError(f"{st.c_name} answer is {len(reply.body)} bytes, expected {st.size}")
        return st.unpack(reply.body)

    # ---- simple ops --------------------------------------------------------------------------
    def hello(self):
        """HELLO: the daemon's version, backend and limits (also kept as ``self.server``). Sets
        ``self.protocol`` to the negotiated version and, from version 2 on, ``self.info`` to the
        further limits (ServerLimits). HELLO itself always travels as version 1."""
        body = w.HELLO_REQ.pack(min_version=w.MIN_VERSION, max_version=self._max_version, client_name=self._client_name)
        reply = self._call(w.OP_HELLO, body, version=w.MIN_VERSION)
        if len(reply.body) < w.HELLO_RESP.size:
            raise ClientProtocolError(f"moe_hello_resp answer is {len(reply.body)} bytes, expected {w.HELLO_RESP.size}")
        d = w.HELLO_RESP.unpack(reply.body)
        version = d["protocol_version"]
        if not w.MIN_VERSION <= version <= self._max_version:
            raise ClientProtocolError(f"the daemon chose protocol version {version}; this client asked for "
                                      f"{w.MIN_VERSION}..{self._max_version}")
        info = None
        if version >= 2:
            d2 = self._body(reply, w.HELLO_ANSWER_V2)
            ext = {n: d2[n] for n in w.HELLO_EXT.names}
            ext["control_allowed"] = bool(ext["control_allowed"])
            info = ServerLimits(**ext)
        elif len(reply.body) != w.HELLO_RESP.size:
            raise ClientProtocolError(f"moe_hello_resp answer is {len(reply.body)} bytes, expected {w.HELLO_RESP.size}")
        if self._wanted_protocol is not None and version != self._wanted_protocol:
            raise BadVersionError(f"protocol version {self._wanted_protocol} was asked for; the daemon "
                                  f"({w.cstr(d['daemon_version'])}) speaks {d['min_protocol_version']}..{version}")
        self.protocol, self.info = version, info
        d["daemon_version"] = w.cstr(d["daemon_version"])
        d["backend"] = w.cstr(d["backend"])
        d["shm_allowed"] = bool(d["shm_allowed"])
        d.pop("reserved")
        d["backend_device"] = reply.message
        return ServerInfo(**d)

    def _need_v2(self, what):
        if self.protocol < 2:
            why = ("it was opened with protocol=1" if self._wanted_protocol == 1
                   else "the daemon speaks version 1 only")
            raise BadVersionError(f"{what} needs protocol version 2; this connection speaks version "
                                  f"{self.protocol} ({why})")

    def ping(self):
        """PING: round-trip seconds."""
        t = time.perf_counter()
        self._call(w.OP_PING)
        return time.perf_counter() - t

    def stats(self):
        """STATS: the daemon's counters (with version 2 also the asking uid's registrations and
        quotas, padding rows, hash routes and placement changes)."""
        if self.protocol >= 2:
            raw = self._body(self._call(w.OP_STATS), w.STATS_RESP_V2)
            d = {n.split(".", 1)[1]: v for n, v in raw.items() if n != "ext.reserved"}
        else:
            d = self._body(self._call(w.OP_STATS), w.STATS_RESP)
        d["backend"] = w.cstr(d["backend"])
        return Stats(**d)

    def layers(self):
        """LIST_LAYERS: every layer with its full spec (also refreshes the lookup cache)."""
        reply = self._call(w.OP_LIST_LAYERS)
        if len(reply.body) < w.LIST_RESP.size:
            raise ClientProtocolError("layer list shorter than its header")
        count = w.LIST_RESP.unpack(reply.body)["count"]
        entry = w.LAYER_INFO_V2 if self.protocol >= 2 else w.LAYER_INFO
        if len(reply.body) != w.LIST_RESP.size + count * entry.size or not reply.frames:
            raise ClientProtocolError("malformed layer list")
        biases = np.frombuffer(reply.frames[0].bytes, dtype="<f4")
        out = []
        for i in range(count):
            d = entry.unpack(reply.body, w.LIST_RESP.size + i * entry.size)
            ext = {}
            if entry is w.LAYER_INFO_V2:
                ext = dict(hash_vocab=d["ext.hash_vocab"], placement_epoch=d["ext.placement_epoch"],
                           num_physical=d["ext.num_physical"], renorm_epsilon=float(d["ext.renorm_epsilon"]))
                d = {n[5:]: v for n, v in d.items() if n.startswith("info.")}
            bias = None
            if d["has_bias"]:
                lo, hi = d["bias_offset"], d["bias_offset"] + d["num_experts"]
                if hi > biases.size:
                    raise ClientProtocolError(f"bias of layer {d['layer_id']} lies past the bias frame")
                bias = biases[lo:hi].astype(np.float32)
                bias.flags.writeable = False
            try:
                layer = Layer(id=d["layer_id"], name=w.cstr(d["name"]), method=Method(d["method"]),
                              scoring=Scoring(d["scoring"]), gate_dtype=DType(d["gate_dtype"]),
                              nonfinite=Nonfinite(d["nonfinite"]), num_experts=d["num_experts"], top_k=d["top_k"],
                              num_expert_group=d["num_expert_group"], topk_group=d["topk_group"],
                              renormalize=bool(d["renormalize"]),
                              routed_scaling_factor=float(d["routed_scaling_factor"]), bias=bias, **ext)
            except ValueError as e:
                raise ClientProtocolError(f"layer {d['layer_id']}: {e}") from e
            out.append(layer)
        with self._lock:
            self._layers_by_id = {l.id: l for l in out}
            self._layers_by_name = {l.name: l for l in out}
        return out

    def model_layers(self, model):
        """The layers loaded from checkpoint `model` (``moe-routerd --model DIR``: named
        ``MODEL/INDEX``), in layer order, so a host can route layer by layer."""
        prefix = f"{model}/"
        found = [(int(l.name[len(prefix):]), l) for l in self.layers()
                 if l.name.startswith(prefix) and l.name[len(prefix):].isdigit()]
        if not found:
            raise UnknownLayerError(f"the daemon has no layers of model {model!r}")
        return [l for _, l in sorted(found, key=lambda p: p[0])]

    def layer(self, key):
        """A Layer by id (int) or name (str); a Layer is returned as is. UnknownLayerError when
        the daemon has none such (the layer list is fetched again once before giving up)."""
        if isinstance(key, Layer):
            return key
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            table, k = "_layers_by_id", int(key)
        elif isinstance(key, str):
            table, k = "_layers_by_name", key
        else:
            raise ClientArgumentError(f"a layer is an id, a name or a Layer; got {type(key).__name__}")
        found = getattr(self, table).get(k)
        if found is None:
            self.layers()
            found = getattr(self, table).get(k)
        if found is None:
            known = ", ".join(f"{l.id}:{l.name}" for l in self._layers_by_id.values())
            raise UnknownLayerError(f"no layer {'named ' + repr(k) if isinstance(k, str) else 'with id ' + str(k)} "
                                    f"(the daemon serves {known or 'no layers'})")
        return found

    # ---- shared memory -----------------------------------------------------------------------
    def register_shm(self, name, size):
        """REGISTER_SHM for a segment the host manages itself ("/name", its exact size).
        Returns the handle, valid on this connection only. Prefer SharedBuffer/Session."""
        raw = name.encode() if isinstance(name, str) else bytes(name)
        if len(raw) >= w.SHM_NAME_BYTES:
            raise ClientArgumentError(f"shm name of {len(raw)} bytes is longer than {w.SHM_NAME_BYTES - 1}")
        d = self._body(self._call(w.OP_REGISTER_SHM, w.REGISTER_REQ.pack(name=raw, size=int(size))), w.REGISTER_RESP)
        return d["handle"]

    def unregister_shm(self, handle):
        """UNREGISTER_SHM. Returns True when the daemon deferred it behind a running request."""
        d = self._body(self._call(w.OP_UNREGISTER_SHM, w.UNREGISTER_REQ.pack(handle=int(handle))), w.UNREGISTER_RESP)
        return bool(d["deferred"])

    def shared_buffer(self, size):
        """A new SharedBuffer of ``size`` bytes registered on this connection."""
        return SharedBuffer(self, size)

    def session(self, layer, max_tokens, dtype="fp32", token_ids=None, mask=False):
        """A new Session: shared input/weights/ids buffers for ``layer`` and up to ``max_tokens``
        (version 2: also token ids and a padding mask; see Session)."""
        return Session(self, layer, max_tokens, dtype, token_ids, mask)

    def _adopt(self, buffer):
        with self._lock:
            self._buffers[id(buffer)] = buffer

    def _release(self, buffer):
        with self._lock:
            self._buffers.pop(id(buffer), None)
            if not self._closed:
                try:
                    self.unregister_shm(buffer.handle)
                except UnknownHandleError:
                    pass  # already unregistered (by hand, through unregister_shm): the goal is met

    def _locate(self, arr):
        """(handle, offset) of an array lying in one of this client's buffers, or None."""
        for b in list(self._buffers.values()):
            off = b.offset_of(arr)
            if off is not None:
                return b.handle, off
        return None

    # ---- ROUTE -------------------------------------------------------------------------------
    def route(self, layer, logits, dtype=None, out=None, token_ids=None, mask=None):
        """Routes ``logits`` [tokens, num_experts] (1-D: one token) through ``layer`` (id, name
        or Layer). ``logits``: float32, float16, a torch float32/float16/bfloat16 tensor, or
        uint16 bf16 bit patterns with ``dtype="bf16"``.

        Buffers that lie in this client's shared memory (SharedBuffer/Session views) go by
        reference and are read/written in place; others travel inline. ``out=(weights, ids)``:
        float32 and int32 C-contiguous [tokens, top_k] arrays to write into (in place when they
        are shared memory). Returns a RouteResult, which unpacks to ``(weights, ids)``.

        Protocol version 2 only: ``token_ids`` [tokens] int32 or int64 (numpy, torch or a list;
        other integer types are widened to int64), needed by hash-routed layers and ignored by
        the others; ``mask`` [tokens] bool or uint8, 1/True = padding row (ids -1, weights 0,
        its logits not read). Both go by reference when they lie in this client's shared memory.
        """
        stage_key = None
        if (self._channel_on and out is None and token_ids is None and mask is None
                and type(logits) is _ndarray and (dtype is None or type(dtype) is str or type(dtype) is DType)
                and (not self._buffers or self._locate(logits) is None)):
            # The channel's fast path: a request shape seen before goes through its Stage (the
            # call that made it checked logits of this shape, dtype and dtype argument).
            if type(layer) is not Layer:
                layer = self.layer(layer)
            stage_key = (logits.shape, logits.dtype, layer.top_k, dtype)
            native = self._native
            stage = None if native is None else native.stages.get(stage_key)
            if stage is not None:
                lock = self._lock
                lock.acquire()
                try:
                    if self._native is native:
                        result = stage.call(logits, layer.id)
                        if type(result) is RouteResult:
                            return result
                        raise self._native_error(result, native.last_error(), _unpack_info(native.info), layer,
                                                 stage.input, stage.wire)
                finally:
                    lock.release()
        arr, wire = as_logits(logits, dtype)
        tokens = arr.shape[0]
        if token_ids is not None:
            self._need_v2("route(token_ids=...)")
            token_ids = as_token_ids(token_ids, tokens)
        if mask is not None:
            self._need_v2("route(mask=...)")
            mask = as_mask(mask, tokens)
        return self._route_rows(self.layer(layer), arr, wire, out, token_ids, mask, stage_key)

    def _ref(self, arr, length=None):
        """(kind, handle, offset, length) of a buffer: by reference in this client's shared
        memory, else inline (``arr`` None: an inline output of ``length`` bytes)."""
        loc = None if arr is None else self._locate(arr)
        if loc is None:
            return (w.BUF_INLINE, 0, 0, arr.nbytes if length is None else length)
        return (w.BUF_SHM, loc[0], loc[1], arr.nbytes)

    def _route_rows(self, layer, arr, wire, out, token_ids=None, mask=None, stage_key=None):
        """ROUTE of ``arr``, already a C-contiguous [tokens, E] array of wire dtype ``wire``
        (what ``as_logits`` returns, or a Session's own rows); ``token_ids``/``mask`` checked
        by as_token_ids/as_mask (or a Session's rows), or None. ``stage_key``: see route()."""
        tokens, k = arr.shape[0], layer.top_k
        out_len = tokens * k * 4
        payload = None
        loc = self._locate(arr)
        if loc is None:
            payload = arr.reshape(-1).view(np.uint8)
            refs = [(w.BUF_INLINE, 0, 0, arr.nbytes)]
        else:
            refs = [(w.BUF_SHM, loc[0], loc[1], arr.nbytes)]
        outs = [None, None]
        if out is not None:
            outs = list(out)
            if len(outs) != 2:
                raise ClientArgumentError("out must be a (weights, ids) pair")
            for a, want, name in ((outs[0], np.float32, "weights"), (outs[1], np.int32, "ids")):
                if not isinstance(a, np.ndarray) or a.dtype != want or not a.flags.c_contiguous or not a.flags.writeable:
                    raise ClientArgumentError(f"out {name} must be a writable C-contiguous {np.dtype(want)} array")
        if (self._channel_on and tokens and loc is None and self.protocol >= 2
                and all(a is None or a.nbytes == out_len for a in outs)
                and not (self._buffers and any(self._locate(a) is not None
                                               for a in (*outs, token_ids, mask) if a is not None))):
            result = self._route_native(layer, arr, wire, None if out is None else outs, token_ids, mask,
                                        stage_key)
            if result is not None:
                return result
        for a in outs:
            refs.append(self._ref(a, None if a is not None else out_len))
        v2 = self.protocol >= 2
        if v2:
            frames = [] if payload is None else [payload]
            for extra in (token_ids, mask):
                if extra is None:
                    refs.append((w.BUF_NONE, 0, 0, 0))
                    continue
                ref = self._ref(extra)
                refs.append(ref)
                if ref[0] == w.BUF_INLINE:
                    frames.append(extra.view(np.uint8))
            body = w.route_body_v2(layer.id, int(wire), tokens, refs,
                                   0 if token_ids is None else token_ids.dtype.itemsize)
            reply = self._call(w.OP_ROUTE, body, frames or None)
            resp_struct = w.ROUTE_RESP_V2
        else:
            body = w.route_body(layer.id, int(wire), tokens, refs)
            reply = self._call(w.OP_ROUTE, body, payload)
            resp_struct = w.ROUTE_RESP
        resp = resp_struct.unpack(reply.body) if len(reply.body) == resp_struct.size else None
        if v2 and resp is not None:
            resp = {n[5:] if n.startswith("base.") else n: v for n, v in resp.items()}
        if reply.status != Status.OK:
            extra = {}
            message = reply.message
            if reply.status == Status.NONFINITE and resp is not None:
                extra = dict(token=resp["first_nonfinite_token"], count=resp["nonfinite_count"])
            if reply.status in (Status.TOKEN_ID, Status.BAD_MASK) and resp is not None:
                extra = dict(token=resp.get("first_bad_token"))
            if reply.status == Status.SIZE_MISMATCH:
                message += (f" (logits shape {tuple(arr.shape)} {wire.label}; layer '{layer.name}' has "
                            f"num_experts={layer.num_experts}, top_k={k})")
            raise error_for(reply.status, message, **extra)
        if resp is None:
            raise ClientProtocolError(f"ROUTE answer body is {len(reply.body)} bytes, expected {resp_struct.size}")
        results = []
        frame = 0
        for i, (a, dt) in enumerate(zip(outs, (np.float32, np.int32))):
            if refs[1 + i][0] == w.BUF_SHM:
                results.append(a)
                continue
            if frame >= len(reply.frames) or len(reply.frames[frame]) != refs[1 + i][3]:
                raise ClientProtocolError(f"ROUTE output frame {frame + 1} missing or of the wrong size")
            got = np.frombuffer(reply.frames[frame].buffer, dtype=dt)
            frame += 1
            if a is None:
                results.append(got.reshape(tokens, k).copy())
            else:
                np.copyto(a.reshape(-1), got)
                results.append(a)
        if not v2:
            return RouteResult(results[0], results[1], tokens=tokens, nonfinite_count=resp["nonfinite_count"],
                               fallback_cast=bool(resp["fallback_cast"]), compute_ns=resp["compute_ns"])
        return RouteResult(results[0], results[1], tokens=tokens, nonfinite_count=resp["nonfinite_count"],
                           fallback_cast=bool(resp["fallback_cast"]), compute_ns=resp["compute_ns"],
                           masked_tokens=resp["masked_tokens"], placement_epoch=resp["placement_epoch"],
                           hash_routed=bool(resp["hash_routed"]))

    # ---- ROUTE through a channel (the C client library) -------------------------------------
    def _open_native(self):
        """Connects the C client on this endpoint (under the lock). None, with ROUTE left on
        ZeroMQ for good and a RuntimeWarning, when the library is missing or cannot connect."""
        try:
            lib = _native.load()
            native = _native.NativeClient(lib, self.endpoint, self.timeout_ms)
        except _native.NativeUnavailable as e:
            self._channel_off(str(e))
            return None
        if lib.protocol_version(native.handle) < 2:
            native.close()
            self._channel_off("the C client negotiated protocol version 1")
            return None
        native.enable_channel()
        self._native = native
        self._native_finalizer = weakref.finalize(self, native.close)
        return native

    def _channel_off(self, why):
        self._channel_on = False
        self.channel_error = why
        # stacklevel: the caller of route() (route > _route_rows > _route_native > _open_native > here).
        warnings.warn(f"moe_router: ROUTE stays on ZeroMQ (no shared-memory channel): {why}", RuntimeWarning,
                      stacklevel=6)

    def _route_native(self, layer, arr, wire, out, token_ids, mask, stage_key):
        """An inline ROUTE through moe_route_ex (its channel, or its own ZeroMQ connection when
        the channel cannot carry it). None: the native path is unavailable; use pyzmq."""
        with self._lock:
            if self._closed:
                raise ClientArgumentError("the client is closed")
            native = self._native
            if native is None:
                native = self._open_native()
                if native is None:
                    return None
            stage = None
            if stage_key is not None and out is None and token_ids is None and mask is None:
                stage = native.stage(stage_key, arr, wire, layer.top_k, RouteResult)
            if stage is not None and layer.id < 0x80000000:
                result = stage.call(arr, layer.id)
                if type(result) is RouteResult:
                    return result
                raise self._native_error(result, native.last_error(), _unpack_info(native.info), layer, arr, wire)
            st, weights, ids, info, path = native.route(layer.id, wire, arr, layer.top_k, token_ids, mask, out)
            if st:
                raise self._native_error(st, native.last_error(), info, layer, arr, wire)
        return RouteResult(weights, ids, arr.shape[0], info[1], bool(info[8]), info[3], info[4], info[5],
                           bool(info[9]), "channel" if path == _native.ROUTE_PATH_CHANNEL else "zmq")

    @staticmethod
    def _native_error(st, message, info, layer, arr, wire):
        """The exception the pyzmq path raises for the same answer (``info``: _native.INFO's
        tuple of the call's moe_route_info)."""
        extra = {}
        if st == Status.NONFINITE:
            extra = dict(token=info[2], count=info[1])
        elif st in (Status.TOKEN_ID, Status.BAD_MASK):
            extra = dict(token=info[6])
        elif st == Status.SIZE_MISMATCH:
            message += (f" (logits shape {tuple(arr.shape)} {wire.label}; layer '{layer.name}' has "
                        f"num_experts={layer.num_experts}, top_k={layer.top_k})")
        return error_for(st, message or f"daemon answered status {st}", **extra)

    @property
    def channel(self):
        """Whether inline ROUTEs may go through a shared-memory channel (see the class doc;
        ``channel_error`` says why not)."""
        return self._channel_on

    # ---- version 2: expert placement and load ------------------------------------------------
    def set_placement(self, layer, replicas, num_physical=None):
        """SET_PLACEMENT (EPLB): ``replicas[e]`` lists the physical expert ids of logical expert
        e (one list per expert of the layer, each non-empty; a physical id serves one logical
        expert). ``num_physical`` defaults to the largest id + 1. From the answer on, ROUTEs of
        ``layer`` return physical ids: token t choosing logical e gets replicas[e][t mod len]
        (columns keep the logical order). The swap is atomic. Returns the layer's new placement
        epoch (RouteResult.placement_epoch names the placement an answer used).

        A control op: NotPermittedError for a peer that is not the daemon's uid, root or a
        --control-uid; BadPlacementError for an invalid placement (the layer keeps its old one).
        The daemon judges the placement; the client only checks that it can be sent."""
        self._need_v2("set_placement")
        info = self.layer(layer)
        try:
            lists = [np.asarray(r).reshape(-1) for r in replicas]
        except (TypeError, ValueError) as e:
            raise ClientArgumentError(f"replicas must be a list of lists of physical ids: {e}") from e
        if not lists:
            raise ClientArgumentError("replicas is empty: call clear_placement() to remove a placement")
        for e, r in enumerate(lists):
            if r.size and r.dtype.kind not in "iu":
                raise ClientArgumentError(f"replicas[{e}] holds {r.dtype} values; physical ids are integers")
        counts = np.array([r.size for r in lists], dtype="<i4")
        flat = np.concatenate([r.astype(np.int64) for r in lists]) if counts.sum() else np.zeros(0, np.int64)
        if flat.size and (flat.min() < np.iinfo(np.int32).min or flat.max() > np.iinfo(np.int32).max):
            raise ClientArgumentError("a physical id does not fit int32")
        if num_physical is None:
            num_physical = int(flat.max()) + 1 if flat.size else 0
        if not 0 <= int(num_physical) <= 0xFFFFFFFF:
            raise ClientArgumentError(f"num_physical = {num_physical} is not a uint32")
        body = w.PLACEMENT_REQ.pack(layer_id=info.id, num_physical=int(num_physical), num_logical=len(lists),
                                    total_replicas=int(flat.size))
        frame = counts.tobytes() + flat.astype("<i4").tobytes()
        d = self._body(self._call(w.OP_SET_PLACEMENT, body, frame), w.PLACEMENT_RESP)
        self._refresh_layers()
        return d["epoch"]

    def clear_placement(self, layer):
        """SET_PLACEMENT removing ``layer``'s placement: ROUTEs return logical ids again.
        Returns the epoch the daemon answers. A control op, like set_placement."""
        self._need_v2("clear_placement")
        info = self.layer(layer)
        body = w.PLACEMENT_REQ.pack(layer_id=info.id)
        d = self._body(self._call(w.OP_SET_PLACEMENT, body), w.PLACEMENT_RESP)
        self._refresh_layers()
        return d["epoch"]

    def _refresh_layers(self):
        """Re-reads the layer list so cached Layers show the new placement (best effort: the
        placement is set either way)."""
        try:
            self.layers()
        except ClientTimeoutError:
            pass

    def expert_load(self, layer, reset_window=False):
        """EXPERT_LOAD: how many tokens the daemon routed to each logical expert of ``layer``
        (padding rows not counted) since the layer was built (``totals``) and since the current
        window began (``window``), as uint64 arrays. ``reset_window=True`` starts a new window
        after this read (a control op: NotPermittedError for other peers)."""
        self._need_v2("expert_load")
        info = self.layer(layer)
        body = w.LOAD_REQ.pack(layer_id=info.id, flags=w.LOAD_RESET_WINDOW if reset_window else 0)
        reply = self._call(w.OP_EXPERT_LOAD, body)
        d = self._body(reply, w.LOAD_RESP)
        e = d["num_experts"]
        if not reply.frames or len(reply.frames[0]) != 16 * e:
            got = len(reply.frames[0]) if reply.frames else 0
            raise ClientProtocolError(f"EXPERT_LOAD counters frame is {got} bytes, expected {16 * e}")
        counters = np.frombuffer(reply.frames[0].bytes, dtype="<u8").astype(np.uint64)
        return ExpertLoad(layer=info.id, num_experts=e, totals=counters[:e], window=counters[e:],
                          window_reset=bool(d["window_reset"]), since_start_ns=d["since_start_ns"],
                          window_ns=d["window_ns"], total_assignments=d["total_assignments"],
                          window_assignments=d["window_assignments"])

    # ---- lifetime ----------------------------------------------------------------------------
    def close(self):
        """Unregisters every SharedBuffer/Session made through this client, then closes the
        connection. Errors while unregistering are ignored (the daemon drops a vanished
        client's registrations anyway). Idempotent."""
        with self._lock:
            if self._closed:
                return
            for b in list(self._buffers.values()):
                try:
                    b.close()
                except Exception:  # noqa: BLE001 - closing must finish
                    pass
            self._buffers.clear()
            self._closed = True
            self._channel_on = False
            if self._native is not None:
                try:
                    self._native.retire()  # unregisters the channel's segment, like the buffers above
                except Exception:  # noqa: BLE001 - closing must finish
                    pass
            if self._native_finalizer is not None:
                self._native_finalizer()  # moe_close: the C client's connection
            self._native = None
            self._sock.close(linger=0)

    @property
    def closed(self):
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Client({self.endpoint!r}, timeout_ms={self.timeout_ms}, closed={self._closed})"


def curve_keys(server_public_file, client_key_file):
    """(server public, client public, client secret) for ``Client(curve=...)``, read from the
    daemon's ``NAME.pub`` and this client's ``NAME.key`` (``moe-routerctl keygen NAME``)."""
    def read(path):
        keys = {}
        with open(path) as f:
            for raw in f:
                line = raw.strip()
                if not line or line.startswith("#"):  # Z85 uses "#" and "=": whole-line comments only
                    continue
                name, value = "public-key", line
                for key in ("public-key", "secret-key"):
                    rest = line[len(key):].lstrip()
                    if line.startswith(key) and rest.startswith("="):
                        name, value = key, rest[1:].strip()
                keys[name] = value
        return keys
    server, mine = read(server_public_file), read(client_key_file)
    if "public-key" not in server or "public-key" not in mine or "secret-key" not in mine:
        raise ClientArgumentError(f"{server_public_file} needs a public key and {client_key_file} both keys")
    return server["public-key"], mine["public-key"], mine["secret-key"]

