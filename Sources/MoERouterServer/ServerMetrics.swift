import CMoERouterdOS
import Metrics
import Synchronization

/// The daemon's swift-metrics instruments (made only when `--metrics` is given, after a metrics
/// backend is bootstrapped). Every reply is counted once, by the request core:
///
/// - `moe_requests_total{op}`, `moe_errors_total{code,layer}`, `moe_tokens_total{layer}`,
///   `moe_request_duration_seconds{op}` (receipt to reply, histogram);
/// - from `update(_:)` at scrape time: `moe_fallback_casts_total`, `moe_nonfinite_inputs_total`,
///   `moe_registered_segments`, `moe_mapped_bytes`, `moe_queue_depth`, `moe_clients`, `moe_layers`;
///   a device backend's zero copy: `moe_device_registered_segments` and `_bytes` (client mappings
///   registered with the runtime), `moe_device_registration_failures_total`,
///   `moe_device_routes_total{path="zero_copy"|"staged"}`; `moe_backend_info{backend,runtime,device}`
///   (always 1: the backend serving, what runs its kernels and on which device).
public final class ServerMetrics: Sendable {
    private let instruments = Mutex(Instruments())

    private struct Instruments {
        var requests: [UInt16: Counter] = [:]
        var errors: [String: Counter] = [:]
        var tokens: [String: Counter] = [:]
        var latency: [UInt16: Metrics.Timer] = [:]
        var totals: [String: UInt64] = [:]
    }

    public init() {}

    /// Counts one reply to a request for `layer` (a ROUTE's; "" for other ops) that arrived at
    /// `receivedNs`.
    func record(op: UInt16, status: WireStatus, tokens: UInt64, layer: String, receivedNs: UInt64) {
        let failed = status != .ok
        let (requests, errors, tokenCounter, latency) = instruments.withLock { i in
            let name = WireOp(rawValue: op)?.name ?? "unknown"
            let r = i.requests[op] ?? { let c = Counter(label: "moe_requests_total", dimensions: [("op", name)]); i.requests[op] = c; return c }()
            var e: Counter?
            if failed {
                let key = "\(status.rawValue)/\(layer)"
                e = i.errors[key] ?? {
                    let c = Counter(label: "moe_errors_total", dimensions: [("code", status.name), ("layer", layer)])
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
        latency.recordNanoseconds(Int64(mro_now_ns() &- receivedNs))
    }

    /// Brings the gauges and the counters kept in `ServerStats` up to date (before a scrape).
    public func update(_ s: ServiceSnapshot) {
        Gauge(label: "moe_registered_segments").record(s.registrations)
        Gauge(label: "moe_mapped_bytes").record(Int64(s.mappedBytes))
        Gauge(label: "moe_queue_depth").record(Int64(s.queued))
        Gauge(label: "moe_clients").record(s.clients)
        Gauge(label: "moe_layers").record(s.layers)
        Gauge(label: "moe_backend_info", dimensions: [("backend", s.backend), ("runtime", s.runtime), ("device", s.device)])
            .record(1)
        Gauge(label: "moe_device_registered_segments").record(s.transfers.registrations)
        Gauge(label: "moe_device_registered_bytes").record(s.transfers.registeredBytes)
        let totals: [(String, [(String, String)], UInt64)] = [
            ("moe_fallback_casts_total", [], s.fallbackCasts), ("moe_nonfinite_inputs_total", [], s.nonFiniteInputs),
            ("moe_device_registration_failures_total", [], s.transfers.registrationFailures),
            ("moe_device_routes_total", [("path", "zero_copy")], s.transfers.zeroCopyRoutes),
            ("moe_device_routes_total", [("path", "staged")], s.transfers.stagedRoutes),
        ]
        instruments.withLock { i in
            for (label, dimensions, value) in totals {
                let key = label + dimensions.map { "/\($0.1)" }.joined()
                let before = i.totals[key] ?? 0
                let c = Counter(label: label, dimensions: dimensions)
                if value > before || i.totals[key] == nil { c.increment(by: Int64(value - before)) }
                i.totals[key] = value
            }
        }
    }
}
