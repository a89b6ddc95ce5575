"""Errors: one exception class per ``moe_status`` code of Include/moe_router.h.

Every class derives from :class:`MoERouterError` (``.status``, ``.status_name``, ``.message``).
Codes 1..99 come from the daemon; 100.. are raised by this client without a daemon answer. A
condition the client detects before sending (an unknown layer name, an unsupported dtype) raises
the same class the daemon would have answered with, so callers catch one class per condition.
Where it fits, a class also derives from the matching built-in (``TimeoutError``, ``ValueError``,
``TypeError``, ``LookupError``, ``ConnectionError``, ``OSError``).
"""
import enum


class Status(enum.IntEnum):
    """``moe_status`` (names without the ``MOE_`` / ``MOE_ERR_`` prefix)."""
    OK = 0
    MALFORMED = 1
    BAD_MAGIC = 2
    BAD_VERSION = 3
    UNKNOWN_OP = 4
    UNKNOWN_LAYER = 5
    BAD_DTYPE = 6
    SIZE_MISMATCH = 7
    OUT_OF_BOUNDS = 8
    OVERFLOW = 9
    MISALIGNED = 10
    OVERLAP = 11
    UNKNOWN_HANDLE = 12
    SHM_REFUSED = 13
    SHM_OWNER = 14
    SHM_PERMISSIONS = 15
    SHM_OPEN = 16
    SHM_SIZE = 17
    SHM_TRUNCATED = 18
    SHM_NAME = 19
    NONFINITE = 20
    BUSY = 21
    DEADLINE = 22
    TOO_LARGE = 23
    LIMIT = 24
    SHUTTING_DOWN = 25
    BAD_FIELD = 26
    INTERNAL = 27
    NOT_PERMITTED = 28
    BAD_PLACEMENT = 29
    TOKEN_ID = 30
    BAD_MASK = 31
    CLIENT_IO = 100
    CLIENT_TIMEOUT = 101
    CLIENT_PROTOCOL = 102
    CLIENT_ARG = 103
    CLIENT_SYS = 104

    @property
    def c_name(self):
        return "MOE_OK" if self is Status.OK else f"MOE_ERR_{self.name}"


class MoERouterError(Exception):
    """A request that did not succeed. ``status`` is the ``moe_status`` code, ``message`` the
    daemon's (or the client's) explanation naming the offending field and value."""
    status = None

    def __init__(self, message, status=None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.message = message

    @property
    def status_name(self):
        try:
            return Status(self.status).c_name
        except ValueError:
            return f"status {self.status}"

    def __str__(self):
        return f"{self.message} [{self.status_name}]"


def _error(name, status, doc, *bases):
    cls = type(name, (MoERouterError, *bases), {"status": int(status), "__doc__": doc})
    cls.__module__ = __name__
    return cls


MalformedRequestError = _error("MalformedRequestError", Status.MALFORMED, "Frame count or frame size wrong for the op.")
BadMagicError = _error("BadMagicError", Status.BAD_MAGIC, "The request did not start with the protocol magic.")
BadVersionError = _error("BadVersionError", Status.BAD_VERSION, "Protocol version not spoken by the daemon.")
UnknownOpError = _error("UnknownOpError", Status.UNKNOWN_OP, "Unknown operation code.")
UnknownLayerError = _error("UnknownLayerError", Status.UNKNOWN_LAYER, "No layer with that id or name.", LookupError)
BadDTypeError = _error("BadDTypeError", Status.BAD_DTYPE, "Input dtype is not fp32, bf16 or fp16.", TypeError)
SizeMismatchError = _error("SizeMismatchError", Status.SIZE_MISMATCH,
                           "A buffer is not tokens*E*dtype (input) or tokens*k*4 (outputs) bytes.", ValueError)
OutOfBoundsError = _error("OutOfBoundsError", Status.OUT_OF_BOUNDS, "A buffer lies past the end of its segment.", ValueError)
SizeOverflowError = _error("SizeOverflowError", Status.OVERFLOW, "offset+length or tokens*row overflows 64 bits.", ValueError)
MisalignedError = _error("MisalignedError", Status.MISALIGNED, "A buffer offset is not a multiple of its element size.", ValueError)
OverlapError = _error("OverlapError", Status.OVERLAP, "Input and outputs (or the two outputs) overlap.", ValueError)
UnknownHandleError = _error("UnknownHandleError", Status.UNKNOWN_HANDLE,
                            "Shared-memory handle not registered by this client (or already unregistered).", LookupError)
ShmRefusedError = _error("ShmRefusedError", Status.SHM_REFUSED, "Shared memory over a non-ipc transport.")
ShmOwnerError = _error("ShmOwnerError", Status.SHM_OWNER, "Segment not owned by the requesting peer's uid.")
ShmPermissionsError = _error("ShmPermissionsError", Status.SHM_PERMISSIONS, "Segment world-writable or not a regular shm object.")
ShmOpenError = _error("ShmOpenError", Status.SHM_OPEN, "The daemon's shm_open/fstat/mmap failed.")
ShmSizeError = _error("ShmSizeError", Status.SHM_SIZE, "Segment size differs from the registered size.")
ShmTruncatedError = _error("ShmTruncatedError", Status.SHM_TRUNCATED, "Segment shrank after registration; registration is dead.")
ShmNameError = _error("ShmNameError", Status.SHM_NAME, 'Name is not "/[^/]{1,254}".', ValueError)
BusyError = _error("BusyError", Status.BUSY, "The daemon's queue is full; retry later.")
DeadlineError = _error("DeadlineError", Status.DEADLINE, "The request waited past its deadline; nothing was run.")
TooLargeError = _error("TooLargeError", Status.TOO_LARGE, "Over max_message_bytes or max_tokens.", ValueError)
RegistrationLimitError = _error("RegistrationLimitError", Status.LIMIT, "Too many registrations for this client.")
ShuttingDownError = _error("ShuttingDownError", Status.SHUTTING_DOWN, "The daemon is shutting down.")
BadFieldError = _error("BadFieldError", Status.BAD_FIELD, "Reserved field not zero, unknown buffer kind, bad flag.")
InternalError = _error("InternalError", Status.INTERNAL, "Internal daemon error.")
NotPermittedError = _error("NotPermittedError", Status.NOT_PERMITTED,
                           "A control op (SET_PLACEMENT, resetting a load window) from a peer that is not the "
                           "daemon's uid, root or a --control-uid.", PermissionError)
BadPlacementError = _error("BadPlacementError", Status.BAD_PLACEMENT,
                           "Placement invalid (an expert unplaced, a physical id out of range or given twice); "
                           "the layer keeps its placement.", ValueError)
ClientIOError = _error("ClientIOError", Status.CLIENT_IO, "Socket error in the client.", ConnectionError)
ClientTimeoutError = _error("ClientTimeoutError", Status.CLIENT_TIMEOUT, "No answer within the client's timeout.", TimeoutError)
ClientProtocolError = _error("ClientProtocolError", Status.CLIENT_PROTOCOL, "The daemon's answer was malformed.")
ClientArgumentError = _error("ClientArgumentError", Status.CLIENT_ARG, "Bad argument to a client call.", ValueError)
ClientSystemError = _error("ClientSystemError", Status.CLIENT_SYS, "shm_open/mmap/ftruncate failed in the client.", OSError)


class NonfiniteInputError(MoERouterError):
    """The layer rejects NaN/Inf input; nothing was written to the outputs.
    ``token`` is the first offending token, ``count`` the number of non-finite input values."""
    status = int(Status.NONFINITE)

    def __init__(self, message, status=None, token=None, count=None):
        super().__init__(message, status)
        self.token = token
        self.count = count


class _TokenError(MoERouterError):
    def __init__(self, message, status=None, token=None):
        super().__init__(message, status)
        self.token = token


class TokenIdError(_TokenError, ValueError):
    """A hash-routed layer got no token ids, or one outside its tid2eid table. ``token`` is the
    offending token's index in the request (None when the ids were missing altogether)."""
    status = int(Status.TOKEN_ID)


class BadMaskError(_TokenError, ValueError):
    """A padding-mask byte other than 0 and 1; ``token`` is the first such token's index."""
    status = int(Status.BAD_MASK)


ERRORS = {cls.status: cls for cls in [
    MalformedRequestError, BadMagicError, BadVersionError, UnknownOpError, UnknownLayerError, BadDTypeError,
    SizeMismatchError, OutOfBoundsError, SizeOverflowError, MisalignedError, OverlapError, UnknownHandleError,
    ShmRefusedError, ShmOwnerError, ShmPermissionsError, ShmOpenError, ShmSizeError, ShmTruncatedError, ShmNameError,
    NonfiniteInputError, BusyError, DeadlineError, TooLargeError, RegistrationLimitError, ShuttingDownError,
    BadFieldError, InternalError, NotPermittedError, BadPlacementError, TokenIdError, BadMaskError, ClientIOError, ClientTimeoutError, ClientProtocolError, ClientArgumentError,
    ClientSystemError]}


def error_for(status, message, **extra):
    """The exception for a status code (an unknown future code gives a plain MoERouterError)."""
    cls = ERRORS.get(status)
    if cls is None:
        return MoERouterError(message, status)
    return cls(message, **extra) if extra else cls(message)


__all__ = ["Status", "MoERouterError", "ERRORS", "error_for"] + [c.__name__ for c in ERRORS.values()]
