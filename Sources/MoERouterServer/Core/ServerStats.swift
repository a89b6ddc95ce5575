import CMoERouterdOS
import MoERouting
import Synchronization

/// Counters for STATS. Updated from any thread (each in its own row: `ShardedCounter`).
final class ServerStats: Sendable {
    let startNs = mro_now_ns()
    let requests = ShardedCounter()
    let errors = ShardedCounter()
    let routes = ShardedCounter()
    let tokens = ShardedCounter()
    let shmRoutes = ShardedCounter()
    let busyRejections = ShardedCounter()
    let deadlineMisses = ShardedCounter()
    let nonFiniteInputs = ShardedCounter()
    let fallbackCasts = ShardedCounter()
    let computeNs = ShardedCounter()
    let maskedTokens = ShardedCounter()
    let hashRoutes = ShardedCounter()
    let placementSets = ShardedCounter()
    /// Requests handed to workers and not yet answered (written by the I/O thread).
    let queued = Atomic<UInt64>(0)

    /// Counts one reply (the request core calls this once per reply, as it is sent).
    func count(status: WireStatus, route: RouteResult?) {
        requests.add(1)
        switch status {
        case .ok: break
        case .busy: errors.add(1); busyRejections.add(1)
        case .deadline: errors.add(1); deadlineMisses.add(1)
        default: errors.add(1)
        }
        guard let r = route, status == .ok else { return }
        // (Even an add to a thread's own row costs a little on this path, which a 1-token
        // channel route runs: none of 0.)
        if r.nonFiniteCount > 0 { nonFiniteInputs.add(UInt64(r.nonFiniteCount)) }
        routes.add(1)
        tokens.add(r.tokens)
        computeNs.add(r.computeNs)
        if r.viaSharedMemory { shmRoutes.add(1) }
        if r.fallbackCast { fallbackCasts.add(1) }
        if r.maskedTokens > 0 { maskedTokens.add(UInt64(r.maskedTokens)) }
        if r.hashRouted { hashRoutes.add(1) }
    }
}

/// Distinct clients by the time of their last request, for the process title, STATUS lines
/// and the `moe_clients` gauge. The I/O thread notes each client at most once a second.
final class ActiveClients: Sendable {
    private let lastSeen = Mutex<[ClientKey: UInt64]>([:])

    func note(_ client: ClientKey, at ns: UInt64) {
        lastSeen.withLock { $0[client] = ns }
    }

    /// Clients that sent a request in the last `windowNs` (older entries are forgotten).
    func count(windowNs: UInt64 = 10_000_000_000) -> Int {
        let now = mro_now_ns()
        return lastSeen.withLock { seen in
            seen = seen.filter { now &- $0.value < windowNs }
            return seen.count
        }
    }
}
