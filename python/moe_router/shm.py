"""Shared memory: segments this process creates and the daemon maps, so ROUTE moves no tensor
bytes over the socket.

A segment is created private (O_CREAT|O_EXCL, mode 0600, in /dev/shm), registered with the
daemon, and its name is unlinked at once: nothing is left in /dev/shm if either side dies. The
registration belongs to the Client (connection) that made it.
"""
import itertools
import mmap
import os
import secrets

import numpy as np

from ._arrays import NUMPY_DTYPE, address, as_logits, as_mask, as_token_ids, parse_dtype
from .errors import ClientArgumentError, ClientSystemError, SizeMismatchError
from .types import DType

_SHM_DIR = "/dev/shm"
_counter = itertools.count(1)
_ALIGN = 64


def _numpy_dtype(dtype):
    """A numpy dtype, or a wire dtype name ("bf16" -> uint16 bit patterns)."""
    if not isinstance(dtype, DType):
        try:
            return np.dtype(dtype)
        except TypeError:
            pass
    return NUMPY_DTYPE[parse_dtype(dtype)]


def _align(n):
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class SharedBuffer:
    """``size`` bytes of shared memory registered with the daemon through ``client``.

    ``array(dtype, shape, offset)`` hands out numpy views into it; pass such views to
    ``Client.route`` (as logits and/or ``out=``) and the daemon reads and writes them in place.
    ``close()`` unregisters it; the mapping itself lives until the last view is gone, so a view
    kept past close() stays valid memory (it is just no longer shared with the daemon).
    """

    def __init__(self, client, size):
        size = int(size)
        if size <= 0:
            raise ClientArgumentError(f"shared buffer size must be > 0; got {size}")
        self.client = client
        self.size = size
        self.name = f"/moe-router-py-{os.getpid()}-{next(_counter)}-{secrets.token_hex(6)}"
        path = _SHM_DIR + self.name
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise ClientSystemError(f"open({path}): {e.strerror}") from e
        try:
            try:
                os.ftruncate(fd, size)
                self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as e:
                raise ClientSystemError(f"ftruncate/mmap({path}, {size}): {e.strerror}") from e
            finally:
                os.close(fd)  # the mapping keeps the object alive
            try:
                self.handle = client.register_shm(self.name, size)
            except BaseException:
                self._mmap.close()
                raise
        finally:
            try:
                os.unlink(path)  # the daemon holds its own mapping; the name is no longer needed
            except FileNotFoundError:
                pass
        probe = np.frombuffer(self._mmap, np.uint8)
        self._base = address(probe)
        del probe
        self.closed = False
        client._adopt(self)

    def array(self, dtype, shape, offset=0):
        """A numpy view of ``shape`` elements of ``dtype`` at byte ``offset``. bf16 is handed out
        as uint16 bit patterns (declare it with ``dtype="bf16"`` when routing)."""
        self._check_open()
        dt = _numpy_dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(shape, dtype=np.int64))
        if offset < 0 or offset + count * dt.itemsize > self.size:
            raise ClientArgumentError(f"view of {count * dt.itemsize} bytes at offset {offset} "
                                      f"does not fit the {self.size}-byte buffer")
        # frombuffer (unlike ndarray(buffer=)) holds a buffer export, so the mapping cannot be
        # unmapped under a live view: mmap.close() refuses while one exists.
        return np.frombuffer(self._mmap, dt, count=count, offset=offset).reshape(shape)

    def offset_of(self, arr):
        """The byte offset of ``arr``'s data in this buffer, or None when it lies elsewhere.
        The array must be C-contiguous to count as in this buffer."""
        if self.closed or not arr.flags.c_contiguous:
            return None
        off = address(arr) - self._base
        if 0 <= off and off + arr.nbytes <= self.size:
            return off
        return None

    def close(self):
        """Unregisters (the daemon's mapping goes) and releases this process's mapping once no
        view of it remains. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.client._release(self)
        finally:
            try:
                self._mmap.close()
            except BufferError:
                pass  # views still exist; the mapping goes with the last of them

    def _check_open(self):
        if self.closed:
            raise ClientArgumentError(f"shared buffer {self.name} is closed")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"SharedBuffer(handle={getattr(self, 'handle', None)}, size={self.size}, closed={self.closed})"


class Session:
    """Reusable shared-memory buffers for one layer, sized for ``max_tokens``:
    ``input`` [max_tokens, E] in ``dtype`` (bf16 as uint16 bits), ``weights`` float32
    [max_tokens, k] and ``ids`` int32 [max_tokens, k], each 64-byte aligned in one segment.

    Fill ``session.input[:T]`` and call ``session.route(T)``: the daemon reads the logits and
    writes ``session.weights[:T]`` / ``session.ids[:T]`` in place; the returned RouteResult's
    arrays are those views (they are overwritten by the next route on this session).

    Protocol version 2 adds two optional buffers in the same segment:
    ``token_ids`` [max_tokens] (int32 or int64; the ``token_ids`` argument names the type,
    None: int64 for a hash-routed layer on a version-2 connection, none otherwise; False: none)
    and ``mask`` [max_tokens] uint8 (``mask=True``; 1 = padding row). When the session has
    them, every ``route(T)`` sends their first T entries by reference; without them,
    ``route(token_ids=..., mask=...)`` sends the given arrays inline.
    """

    def __init__(self, client, layer, max_tokens, dtype="fp32", token_ids=None, mask=False):
        self.client = client
        self.layer = client.layer(layer)
        self.dtype = parse_dtype(dtype)
        self.max_tokens = int(max_tokens)
        if self.max_tokens <= 0:
            raise ClientArgumentError(f"max_tokens must be > 0; got {max_tokens}")
        E, k = self.layer.num_experts, self.layer.top_k
        in_bytes = self.max_tokens * E * self.dtype.itemsize
        out_bytes = self.max_tokens * k * 4
        w_off = _align(in_bytes)
        i_off = w_off + _align(out_bytes)
        size = i_off + out_bytes
        id_type = self._token_id_type(client, token_ids)
        if (id_type is not None or mask) and client.protocol < 2:
            client._need_v2("a Session with token ids or a mask")
        t_off = m_off = None
        if id_type is not None:
            t_off = _align(size)
            size = t_off + self.max_tokens * id_type.itemsize
        if mask:
            m_off = _align(size)
            size = m_off + self.max_tokens
        self.buffer = SharedBuffer(client, size)
        self.input = self.buffer.array(NUMPY_DTYPE[self.dtype], (self.max_tokens, E), 0)
        self.weights = self.buffer.array(np.float32, (self.max_tokens, k), w_off)
        self.ids = self.buffer.array(np.int32, (self.max_tokens, k), i_off)
        self.token_ids = None if t_off is None else self.buffer.array(id_type, self.max_tokens, t_off)
        self.mask = None if m_off is None else self.buffer.array(np.uint8, self.max_tokens, m_off)

    def _token_id_type(self, client, token_ids):
        if token_ids is None:
            return np.dtype(np.int64) if self.layer.hash_routed and client.protocol >= 2 else None
        if token_ids is False:
            return None
        try:
            dt = np.dtype("int64" if token_ids is True else token_ids)
        except TypeError:
            dt = None
        if dt not in (np.dtype(np.int32), np.dtype(np.int64)):
            raise ClientArgumentError(f"token_ids = {token_ids!r}: a session's token ids are int32 or int64")
        return dt

    def route(self, tokens=None, logits=None, token_ids=None, mask=None):
        """Routes the first ``tokens`` rows of ``input`` (default: all ``max_tokens``). With
        ``logits``, first copies them into ``input`` (skipped when they already are its rows).
        ``token_ids`` / ``mask`` are copied into this session's buffers when it has them (and
        then the buffers' rows are sent, given or not), else sent inline."""
        if logits is not None:
            arr, _ = as_logits(logits, self.dtype)  # checks the element size matches
            n = arr.shape[0]
            if n > self.max_tokens:
                raise ClientArgumentError(f"{n} tokens exceed this session's max_tokens {self.max_tokens}")
            if arr.shape[1] != self.layer.num_experts:
                raise SizeMismatchError(f"logits have {arr.shape[1]} columns; layer '{self.layer.name}' has "
                                        f"{self.layer.num_experts} experts")
            if tokens is None:
                tokens = n
            if self.buffer.offset_of(arr) != 0:
                self.input[:n] = arr.view(self.input.dtype)
        t = self.max_tokens if tokens is None else int(tokens)
        if not 0 <= t <= self.max_tokens:
            raise ClientArgumentError(f"tokens = {t} outside 0..{self.max_tokens} of this session")
        extras = []
        for given, own, convert, what in ((token_ids, self.token_ids, as_token_ids, "token_ids"),
                                          (mask, self.mask, as_mask, "mask")):
            if given is not None:
                self.client._need_v2(f"route({what}=...)")
                given = convert(given, t)
                if own is not None:
                    if given.ctypes.data != own.ctypes.data:
                        if own.dtype == np.int32 and given.dtype == np.int64 and given.size and (
                                given.min() < -2**31 or given.max() >= 2**31):
                            raise ClientArgumentError("token_ids do not fit this session's int32 buffer")
                        own[:t] = given
                    given = None
            extras.append(own[:t] if own is not None else given)
        # The rows are already this session's contiguous array in its dtype: no second as_logits.
        return self.client._route_rows(self.layer, self.input[:t], self.dtype, (self.weights[:t], self.ids[:t]),
                                       *extras)

    def input_tensor(self):
        """``input`` as a torch tensor sharing the memory (torch.bfloat16 for a bf16 session).
        Imports torch."""
        import torch
        if self.dtype is DType.BF16:
            return torch.from_numpy(self.input.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(self.input)

    def close(self):
        self.buffer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"Session(layer={self.layer.name!r}, max_tokens={self.max_tokens}, dtype={self.dtype.label}, "
                f"handle={self.buffer.handle})")
