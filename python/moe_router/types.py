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
    """``moe_scoring``: how logits become scores (shared/ROUTING.md, "Added schemes")."""
    SOFTMAX = 0
    SIGMOID = 1
    SQRTSOFTPLUS = 2  # DeepSeek-V4: sqrt(softplus(x))
    NONE = 3          # the logit itself (vLLM "TopK")


class Nonfinite(_Labelled):
    """What a layer does with NaN/Inf input: CLAMP scores to 0 (counted) or REJECT the request."""
    CLAMP = 0
    REJECT = 1


@dataclass(frozen=True)
class Layer:
    """One layer the daemon serves, with its full spec. ``bias`` is None or a read-only fp32
    array of ``num_experts`` values, each the exact widening of the bias as stored (in
    ``gate_dtype``). A request in another dtype than ``gate_dtype`` takes the fallback path:
    the bias is converted to the request's dtype for that request (reported as fallback_cast).

    Protocol version 2 adds (zero on a version-1 connection): ``hash_vocab`` (> 0: a hash-routed
    layer whose experts come from a tid2eid table of that many rows; routes need token ids),
    ``placement_epoch`` and ``num_physical`` (0: no expert placement, ids are logical; else ids
    are physical ids of that placement, as of when the layer list was read) and
    ``renorm_epsilon`` (> 0: weights / (sum + eps), MiniMax2)."""
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
    hash_vocab: int = 0
    placement_epoch: int = 0
    num_physical: int = 0
    renorm_epsilon: float = 0.0

    @property
    def has_bias(self):
        return self.bias is not None

    @property
    def hash_routed(self):
        """Whether the layer routes by token id (DeepSeek-V4's hash layers)."""
        return self.hash_vocab > 0

    def spec(self):
        """The layer as a dict with shared/ROUTING.md's snake_case fields and label values
        (the shape of the daemon's config entries and of IntegrationTests/python/routing_reference.py)."""
        return dict(name=self.name, method=self.method.label, num_experts=self.num_experts, top_k=self.top_k,
                    num_expert_group=self.num_expert_group, topk_group=self.topk_group,
                    scoring=self.scoring.label, renormalize=self.renormalize,
                    routed_scaling_factor=self.routed_scaling_factor, gate_dtype=self.gate_dtype.label,
                    nonfinite=self.nonfinite.label, bias=self.bias, renorm_epsilon=self.renorm_epsilon,
                    hash_vocab=self.hash_vocab)


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
    #: HELLO's message: the backend and its device, e.g. "backend cuda: cuda device NVIDIA H200"
    backend_device: str = ""


@dataclass(frozen=True)
class ServerLimits:
    """What a version-2 HELLO adds (``moe_hello_ext``): limits a client meets without asking,
    the daemon's features, and whether this connection may run control ops."""
    max_segment_bytes: int
    max_mapped_bytes_per_uid: int
    max_registrations_per_uid: int
    heartbeat_ivl_ms: int
    heartbeat_timeout_ms: int
    features: int
    max_queued_reply_bytes: int
    max_queued_reply_bytes_total: int
    max_physical_experts: int
    control_allowed: bool

    @property
    def supports_mask(self):
        return bool(self.features & 1)

    @property
    def supports_token_ids(self):
        return bool(self.features & 2)

    @property
    def supports_placement(self):
        return bool(self.features & 4)

    @property
    def supports_expert_load(self):
        return bool(self.features & 8)

    @property
    def supports_channels(self):
        """OPEN_CHANNEL / CLOSE_CHANNEL: ROUTE through shared memory (ipc connections only)."""
        return bool(self.features & 16)


@dataclass(frozen=True)
class Stats:
    """The daemon's STATS counters (process-wide, all clients). The fields after ``backend``
    come with protocol version 2 (None on a version-1 connection): the asking uid's live
    registrations and mapped bytes with their quotas, padding rows routed, hash-routed ROUTEs
    and successful SET_PLACEMENTs."""
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
    uid_registrations: Optional[int] = None
    uid_mapped_bytes: Optional[int] = None
    max_registrations_per_uid: Optional[int] = None
    max_mapped_bytes_per_uid: Optional[int] = None
    masked_tokens: Optional[int] = None
    hash_routes: Optional[int] = None
    placement_sets: Optional[int] = None


@dataclass(frozen=True)
class ExpertLoad:
    """EXPERT_LOAD: tokens routed to each logical expert of a layer (padding rows not counted).
    ``totals``/``window``: uint64 [num_experts], since the layer was built / since the window
    began; ``window_reset``: a new window began with this read; ``since_start_ns`` and
    ``window_ns`` (how long the window read here lasted); the sums of both arrays."""
    layer: int
    num_experts: int
    totals: np.ndarray = field(repr=False)
    window: np.ndarray = field(repr=False)
    window_reset: bool
    since_start_ns: int
    window_ns: int
    total_assignments: int
    window_assignments: int


class RouteResult:
    """A ROUTE's outputs and report. Unpacks like a pair: ``weights, ids = client.route(...)``.

    ``weights``: float32 [tokens, top_k]; ``ids``: int32 [tokens, top_k] (views into shared
    memory when the outputs were routed there, else arrays of their own).
    ``nonfinite_count``: NaN/Inf input values (clamped to score 0 under a CLAMP layer).
    ``fallback_cast``: True when the input dtype differed from the layer's gate dtype and the bias
    was converted for this request. ``compute_ns``: time spent in the daemon's backend.
    Protocol version 2 (0/False on a version-1 connection): ``masked_tokens`` (padding rows:
    ids -1, weights 0), ``placement_epoch`` (the placement the ids were mapped to physical ids
    with; 0: logical ids), ``hash_routed`` (the experts came from the layer's tid2eid table).
    ``path``: what carried the request: "channel" (a shared-memory channel, through the C client
    library) or "zmq" (a ZeroMQ round trip).
    """
    __slots__ = ("weights", "ids", "tokens", "nonfinite_count", "fallback_cast", "compute_ns", "masked_tokens",
                 "placement_epoch", "hash_routed", "path")

    def __init__(self, weights, ids, tokens, nonfinite_count, fallback_cast, compute_ns, masked_tokens=0,
                 placement_epoch=0, hash_routed=False, path="zmq"):
        self.weights = weights
        self.ids = ids
        self.tokens = tokens
        self.nonfinite_count = nonfinite_count
        self.fallback_cast = fallback_cast
        self.compute_ns = compute_ns
        self.masked_tokens = masked_tokens
        self.placement_epoch = placement_epoch
        self.hash_routed = hash_routed
        self.path = path

    def __iter__(self):
        yield self.weights
        yield self.ids

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return (self.weights, self.ids)[i]

    def __repr__(self):
        return (f"RouteResult(tokens={self.tokens}, top_k={self.weights.shape[1]}, "
                f"nonfinite_count={self.nonfinite_count}, fallback_cast={self.fallback_cast}, "
                f"masked_tokens={self.masked_tokens}, placement_epoch={self.placement_epoch}, "
                f"hash_routed={self.hash_routed}, path={self.path!r})")
