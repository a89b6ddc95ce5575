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
    let maskedTokens = Atomic<UInt64>(0)
    let hashRoutes = Atomic<UInt64>(0)
    let placementSets = Atomic<UInt64>(0)
    /// Requests handed to workers and not yet answered (written by the I/O thread).
    let queued = Atomic<UInt64>(0)

    /// Counts one reply (the request core calls this once per reply, as it is sent).
    func count(_ reply: Reply) {
        requests.add(1, ordering: .relaxed)
        switch reply.status {
        case .ok: break
        case .busy: errors.add(1, ordering: .relaxed); busyRejections.add(1, ordering: .relaxed)
        case .deadline: errors.add(1, ordering: .relaxed); deadlineMisses.add(1, ordering: .relaxed)
        default: errors.add(1, ordering: .relaxed)
        }
        guard case .route(let r) = reply.body, reply.status == .ok else { return }
        // (Atomic adds cost ~10 ns each on this path, which a 1-token channel route runs: none of 0.)
        if r.nonFiniteCount > 0 { nonFiniteInputs.add(UInt64(r.nonFiniteCount), ordering: .relaxed) }
        routes.add(1, ordering: .relaxed)
        tokens.add(r.tokens, ordering: .relaxed)
        computeNs.add(r.computeNs, ordering: .relaxed)
        if r.viaSharedMemory { shmRoutes.add(1, ordering: .relaxed) }
        if r.fallbackCast { fallbackCasts.add(1, ordering: .relaxed) }
        if r.maskedTokens > 0 { maskedTokens.add(UInt64(r.maskedTokens), ordering: .relaxed) }
        if r.hashRouted { hashRoutes.add(1, ordering: .relaxed) }
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
