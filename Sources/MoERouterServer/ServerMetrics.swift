import CMoERouterWire
import CMoERouterdOS
import Metrics
import MoERouting
import Synchronization

/// The daemon's swift-metrics instruments. Off until `enable()` (the daemon calls it when
/// `--metrics` is given, after bootstrapping a metrics backend); then every reply is counted:
///
/// - `moe_requests_total{op}`, `moe_errors_total{code,layer}`, `moe_tokens_total{layer}`,
///   `moe_request_duration_seconds{op}` (receipt to reply, histogram);
/// - from `update(_:)` at scrape time: `moe_fallback_casts_total`, `moe_nonfinite_inputs_total`,
///   `moe_registered_segments`, `moe_mapped_bytes`, `moe_queue_depth`, `moe_clients`, `moe_layers`.
public enum ServerMetrics {
    private static let enabled = Atomic<Bool>(false)
    private static let instruments = Mutex(Instruments())
    /// Distinct clients by the time of their last request (see `activeClients`).
    private static let lastSeen = Mutex<[ClientKey: UInt64]>([:])

    private struct Instruments {
        var requests: [UInt16: Counter] = [:]
        var errors: [String: Counter] = [:]
        var tokens: [String: Counter] = [:]
        var latency: [UInt16: Metrics.Timer] = [:]
        var totals: [String: UInt64] = [:]
    }

    public static func enable() { enabled.store(true, ordering: .relaxed) }

    /// Counts one reply. `layer` is the layer's name for ROUTE, "" for other ops.
    static func record(_ reply: Reply, request: IncomingRequest?, layer layerName: () -> String) {
        guard enabled.load(ordering: .relaxed) else { return }
        let layer = layerName()
        let op = request?.op ?? reply.op
        let failed = reply.status != .ok
        let tokens = op == WireOp.route.rawValue && !failed && request != nil
            ? WireBytes.load(moe_route_req.self, from: request!.body).tokens : 0
        let (requests, errors, tokenCounter, latency) = instruments.withLock { i in
            let name = opName(op)
            let r = i.requests[op] ?? { let c = Counter(label: "moe_requests_total", dimensions: [("op", name)]); i.requests[op] = c; return c }()
            var e: Counter?
            if failed {
                let key = "\(reply.status.rawValue)/\(layer)"
                e = i.errors[key] ?? {
                    let c = Counter(label: "moe_errors_total", dimensions: [("code", statusName(reply.status)), ("layer", layer)])
                    i.errors[key] = c
                    return c
                }()
            }
            var t: Counter?
            if tokens > 0 {
                t = i.tokens[layer] ?? { let c = Counter(label: "moe_tokens_total", dimensions: [("layer", layer)]); i.tokens[layer] = c; return c }()
            }
            let l = i.latency[op] ?? {
                let m = Metrics.Timer(label: "moe_request_duration_seconds", dimensions: [("op", name)])
                i.latency[op] = m
                return m
            }()
            return (r, e, t, l)
        }
        requests.increment()
        errors?.increment()
        if let tokenCounter { tokenCounter.increment(by: Int64(tokens)) }
        if let request { latency.recordNanoseconds(Int64(mro_now_ns() &- request.receivedNs)) }
    }

    /// Records that `client` sent a request at `ns` (the I/O thread calls this; see `ClientActivity`).
    static func noteClient(_ client: ClientKey, at ns: UInt64) {
        lastSeen.withLock { $0[client] = ns }
    }

    /// Distinct clients that sent a request in the last `windowNs` (entries older are forgotten).
    static func activeClients(windowNs: UInt64 = 10_000_000_000) -> Int {
        let now = mro_now_ns()
        return lastSeen.withLock { seen in
            seen = seen.filter { now &- $0.value < windowNs }
            return seen.count
        }
    }

    /// Brings the gauges and the counters kept in `ServerStats` up to date (before a scrape).
    public static func update(_ s: ServiceSnapshot) {
        Gauge(label: "moe_registered_segments").record(s.registrations)
        Gauge(label: "moe_mapped_bytes").record(Int64(s.mappedBytes))
        Gauge(label: "moe_queue_depth").record(Int64(s.queued))
        Gauge(label: "moe_clients").record(s.clients)
        Gauge(label: "moe_layers").record(s.layers)
        instruments.withLock { i in
            for (label, value) in [("moe_fallback_casts_total", s.fallbackCasts), ("moe_nonfinite_inputs_total", s.nonFiniteInputs)] {
                let before = i.totals[label] ?? 0
                let c = Counter(label: label)
                if value > before || i.totals[label] == nil { c.increment(by: Int64(value - before)) }
                i.totals[label] = value
            }
        }
    }

    static func opName(_ op: UInt16) -> String {
        switch WireOp(rawValue: op) {
        case .hello: "hello"
        case .listLayers: "list_layers"
        case .registerShm: "register_shm"
        case .unregisterShm: "unregister_shm"
        case .route: "route"
        case .stats: "stats"
        case .ping: "ping"
        case nil: "unknown"
        }
    }

    private static let statusNames: [WireStatus: String] = [
        .ok: "ok", .malformed: "malformed", .badMagic: "bad_magic", .badVersion: "bad_version",
        .unknownOp: "unknown_op", .unknownLayer: "unknown_layer", .badDType: "bad_dtype",
        .sizeMismatch: "size_mismatch", .outOfBounds: "out_of_bounds", .overflow: "overflow",
        .misaligned: "misaligned", .overlap: "overlap", .unknownHandle: "unknown_handle",
        .shmRefused: "shm_refused", .shmOwner: "shm_owner", .shmPermissions: "shm_permissions",
        .shmOpen: "shm_open", .shmSize: "shm_size", .shmTruncated: "shm_truncated", .shmName: "shm_name",
        .nonFinite: "nonfinite", .busy: "busy", .deadline: "deadline", .tooLarge: "too_large",
        .limit: "limit", .shuttingDown: "shutting_down", .badField: "bad_field", .internalError: "internal",
    ]

    static func statusName(_ s: WireStatus) -> String { statusNames[s] ?? "status_\(s.rawValue)" }
}
