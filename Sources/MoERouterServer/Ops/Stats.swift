import CMoERouterWire
import CMoERouterdOS

/// STATS: the daemon's counters since start and its registrations now.
struct StatsHandler: Sendable {
    let stats: ServerStats
    let registry: SegmentRegistry
    let backendName: String
    /// "backend NAME: RUNTIME device DEVICE", the answer's message.
    let backendDevice: String

    func answer(_ r: InboundRequest) -> Reply {
        let snap = registry.snapshot
        var s = moe_stats_resp()
        s.uptime_ns = mro_now_ns() - stats.startNs
        s.requests = stats.requests.load(ordering: .relaxed)
        s.errors = stats.errors.load(ordering: .relaxed)
        s.routes = stats.routes.load(ordering: .relaxed)
        s.tokens = stats.tokens.load(ordering: .relaxed)
        s.shm_routes = stats.shmRoutes.load(ordering: .relaxed)
        s.busy_rejections = stats.busyRejections.load(ordering: .relaxed)
        s.deadline_misses = stats.deadlineMisses.load(ordering: .relaxed)
        s.nonfinite_inputs = stats.nonFiniteInputs.load(ordering: .relaxed)
        s.fallback_casts = stats.fallbackCasts.load(ordering: .relaxed)
        s.registrations = UInt64(snap.registrations)
        s.clients = UInt64(snap.clients)
        s.mapped_bytes = UInt64(snap.mappedBytes)
        s.queued = stats.queued.load(ordering: .relaxed)
        s.clients_released = snap.releasedClients
        s.compute_ns = stats.computeNs.load(ordering: .relaxed)
        WireBytes.setFixed(&s.backend, backendName)
        guard r.version >= 2 else { return Reply(answering: r, message: backendDevice, body: .stats(s, ext: nil)) }
        var e = moe_stats_ext()
        if let uid = r.origin.peer?.uid {
            let used = registry.usage(uid: uid)
            e.uid_registrations = UInt64(used.count)
            e.uid_mapped_bytes = used.bytes
        }
        e.max_registrations_per_uid = UInt64(registry.limits.maxPerUID)
        e.max_mapped_bytes_per_uid = registry.limits.maxBytesPerUID
        e.masked_tokens = stats.maskedTokens.load(ordering: .relaxed)
        e.hash_routes = stats.hashRoutes.load(ordering: .relaxed)
        e.placement_sets = stats.placementSets.load(ordering: .relaxed)
        return Reply(answering: r, message: backendDevice, body: .stats(s, ext: e))
    }
}
