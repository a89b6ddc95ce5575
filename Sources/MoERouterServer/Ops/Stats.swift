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
        s.requests = stats.requests.value
        s.errors = stats.errors.value
        s.routes = stats.routes.value
        s.tokens = stats.tokens.value
        s.shm_routes = stats.shmRoutes.value
        s.busy_rejections = stats.busyRejections.value
        s.deadline_misses = stats.deadlineMisses.value
        s.nonfinite_inputs = stats.nonFiniteInputs.value
        s.fallback_casts = stats.fallbackCasts.value
        s.registrations = UInt64(snap.registrations)
        s.clients = UInt64(snap.clients)
        s.mapped_bytes = UInt64(snap.mappedBytes)
        s.queued = stats.queued.load(ordering: .relaxed)
        s.clients_released = snap.releasedClients
        s.compute_ns = stats.computeNs.value
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
        e.masked_tokens = stats.maskedTokens.value
        e.hash_routes = stats.hashRoutes.value
        e.placement_sets = stats.placementSets.value
        return Reply(answering: r, message: backendDevice, body: .stats(s, ext: e))
    }
}
