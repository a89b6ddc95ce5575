"""moe_router: the Python client of moe-routerd (MoE top-k routing over ZeroMQ + shared memory).

    from moe_router import Client
    with Client() as c:                       # default endpoint, like the C client
        w, ids = c.route("deepseek-v3", logits)   # float32 [T,k], int32 [T,k]

See python/README.md. The wire protocol is Include/moe_router_wire.h.
"""
from .client import DEFAULT_TIMEOUT_MS, Client, curve_keys, default_endpoint
from .errors import *  # noqa: F401,F403 - one exception class per moe_status code
from .errors import ERRORS, MoERouterError, Status, error_for
from .shm import Session, SharedBuffer
from .types import DType, ExpertLoad, Layer, Method, Nonfinite, RouteResult, Scoring, ServerInfo, ServerLimits, Stats

__version__ = "0.1.0"
PROTOCOL_VERSION = 2  # the newest version this client speaks (Client(protocol=1) speaks version 1)

__all__ = ["Client", "curve_keys", "default_endpoint", "DEFAULT_TIMEOUT_MS", "Session", "SharedBuffer", "DType", "Layer",
           "Method", "Nonfinite", "RouteResult", "Scoring", "ServerInfo", "ServerLimits", "Stats", "ExpertLoad",
           "MoERouterError", "Status",
           "ERRORS", "error_for"] + [c.__name__ for c in ERRORS.values()]
