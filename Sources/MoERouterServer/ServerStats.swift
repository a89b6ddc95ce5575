import CMoERouterdOS
import Synchronization

/// Counters for STATS. Updated from any thread.
final class ServerStats: Sendable {
    let startNs = mro_now_ns()
    let requests = Atomic<UInt64>(0)
    let errors = Atomic<UInt64>(0)
    let routes = Atomic<UInt64>(0)
    let tokens = Atomic<UInt64>(0)
    let shmRoutes = Atomic<UInt64>(0)
    let busyRejections = Atomic<UInt64>(0)
    let deadlineMisses = Atomic<UInt64>(0)
    let nonFiniteInputs = Atomic<UInt64>(0)
    let fallbackCasts = Atomic<UInt64>(0)
    let computeNs = Atomic<UInt64>(0)
    /// Requests handed to workers and not yet answered (written by the I/O thread).
    let queued = Atomic<UInt64>(0)

    /// `request` is nil for replies made before a request was parsed (or refused unparsed).
    /// `layer` names the ROUTE's layer for the metrics (only asked when metrics are on).
    func count(_ reply: Reply, request: IncomingRequest? = nil, layer: () -> String = { "" }) {
        ServerMetrics.record(reply, request: request, layer: layer)
        requests.add(1, ordering: .relaxed)
        if reply.status != .ok { errors.add(1, ordering: .relaxed) }
        if reply.status == .busy { busyRejections.add(1, ordering: .relaxed) }
        if reply.status == .deadline { deadlineMisses.add(1, ordering: .relaxed) }
    }
}
