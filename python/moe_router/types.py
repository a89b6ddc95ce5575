"""Typed views of what the daemon reports: layers, HELLO, STATS, and a ROUTE's result."""
import enum
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


class _Labelled(enum.IntEnum):
    @property
    def label(self):
        """The lower-case name used by shared/ROUTING.md and the daemon's config ("bf16")."""
        return self.name.lower()

    def __str__(self):
        return self.label


class DType(_Labelled):
    """``moe_dtype``: the element type of a ROUTE input, and of a layer's stored bias."""
    FP32 = 0
    BF16 = 1
    FP16 = 2

    @property
    def itemsize(self):
        return 4 if self is DType.FP32 else 2


class Method(_Labelled):
    """``moe_method`` (shared/ROUTING.md, "Methods")."""
    SOFTMAX_TOPK = 0
    TOPK_SOFTMAX = 1
    GROUPED_TOPK = 2
    BIASED_GROUPED_TOPK = 3
    BIASED_TOPK = 4
    LLAMA4_TOP1 = 5


class Scoring(_Labelled):
    SOFTMAX = 0
    SIGMOID = 1


class Nonfinite(_Labelled):
    """What a layer does with NaN/Inf input: CLAMP scores to 0 (counted) or REJECT the request."""
    CLAMP = 0
    REJECT = 1


@dataclass(frozen=True)
class Layer:
    """One layer the daemon serves, with its full spec. ``bias`` is None or a read-only fp32
    array of ``num_experts`` values, each the exact widening of the bias as stored (in
    ``gate_dtype``). A request in another dtype than ``gate_dtype`` takes the fallback path:
    the bias is converted to the request's dtype for that request (reported as fallback_cast)."""
    id: int
    name: str
    method: Method
    scoring: Scoring
    gate_dtype: DType
    nonfinite: Nonfinite
    num_experts: int
    top_k: int
    num_expert_group: int
    topk_group: int
    renormalize: bool
    routed_scaling_factor: float
    bias: Optional[np.ndarray] = field(compare=False, repr=False)

    @property
    def has_bias(self):
        return self.bias is not None

    def spec(self):
        """The layer as a dict with shared/ROUTING.md's snake_case fields and label values
        (the shape of the daemon's config entries and of IntegrationTests/python/routing_reference.py)."""
        return dict(name=self.name, method=self.method.label, num_experts=self.num_experts, top_k=self.top_k,
                    num_expert_group=self.num_expert_group, topk_group=self.topk_group,
                    scoring=self.scoring.label, renormalize=self.renormalize,
                    routed_scaling_factor=self.routed_scaling_factor, gate_dtype=self.gate_dtype.label,
                    nonfinite=self.nonfinite.label, bias=self.bias)


@dataclass(frozen=True)
class ServerInfo:
    """The daemon's HELLO answer: versions, limits, and whether this connection may use shm."""
    protocol_version: int
    min_protocol_version: int
    layer_count: int
    daemon_version: str
    backend: str
    max_message_bytes: int
    max_tokens: int
    max_registrations: int
    default_deadline_ms: int
    workers: int
    queue_depth: int
    shm_allowed: bool
    max_experts: int
    max_top_k: int


@dataclass(frozen=True)
class Stats:
    """The daemon's STATS counters (process-wide, all clients)."""
    uptime_ns: int
    requests: int
    errors: int
    routes: int
    tokens: int
    shm_routes: int
    busy_rejections: int
    deadline_misses: int
    nonfinite_inputs: int
    fallback_casts: int
    registrations: int
    clients: int
    mapped_bytes: int
    queued: int
    clients_released: int
    compute_ns: int
    backend: str


class RouteResult:
    """A ROUTE's outputs and report. Unpacks like a pair: ``weights, ids = client.route(...)``.

    ``weights``: float32 [tokens, top_k]; ``ids``: int32 [tokens, top_k] (views into shared
    memory when the outputs were routed there, else arrays of their own).
    ``nonfinite_count``: NaN/Inf input values (clamped to score 0 under a CLAMP layer).
    ``fallback_cast``: True when the input dtype differed from the layer's gate dtype and the bias
    was converted for this request. ``compute_ns``: time spent in the daemon's backend.
    """
    __slots__ = ("weights", "ids", "tokens", "nonfinite_count", "fallback_cast", "compute_ns")

    def __init__(self, weights, ids, tokens, nonfinite_count, fallback_cast, compute_ns):
        self.weights = weights
        self.ids = ids
        self.tokens = tokens
        self.nonfinite_count = nonfinite_count
        self.fallback_cast = fallback_cast
        self.compute_ns = compute_ns

    def __iter__(self):
        yield self.weights
        yield self.ids

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return (self.weights, self.ids)[i]

    def __repr__(self):
        return (f"RouteResult(tokens={self.tokens}, top_k={self.weights.shape[1]}, "
                f"nonfinite_count={self.nonfinite_count}, fallback_cast={self.fallback_cast})")
