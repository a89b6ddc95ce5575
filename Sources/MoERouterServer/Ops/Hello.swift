import CMoERouterWire
import MoERouting

/// HELLO: the protocol version both sides speak and the limits this daemon enforces. Version 2
/// appends moe_hello_ext (the limits version 1 could not carry).
struct HelloHandler: Sendable {
    static let daemonVersion = "moe-routerd 0.2.0"

    let config: ServerConfig
    let layers: LayerSlot
    let backendName: String
    /// "backend NAME: RUNTIME device DEVICE", the answer's message.
    let backendDevice: String

    func answer(_ q: HelloRequest, _ r: InboundRequest) -> Reply {
        let negotiated = min(q.versions.upperBound, WireVersion.newest)
        guard negotiated >= WireVersion.oldest, q.versions.lowerBound <= WireVersion.newest else {
            return r.refused(RequestFailure(.badVersion, "client speaks versions \(q.versions.lowerBound)...\(q.versions.upperBound); daemon speaks \(WireVersion.oldest)...\(WireVersion.newest)"))
        }
        var h = moe_hello_resp()
        h.protocol_version = negotiated
        h.min_protocol_version = WireVersion.oldest
        h.layer_count = UInt32(layers.current.layers.count)
        WireBytes.setFixed(&h.daemon_version, Self.daemonVersion)
        WireBytes.setFixed(&h.backend, backendName)
        h.max_message_bytes = UInt64(config.maxMessageBytes)
        h.max_tokens = UInt64(config.maxTokens)
        h.max_registrations = UInt32(config.maxRegistrations)
        h.default_deadline_ms = config.defaultDeadlineMs
        h.workers = UInt32(config.workers)
        h.queue_depth = UInt32(config.queueDepth)
        h.shm_allowed = r.origin.transport == .ipc && r.origin.peer != nil ? 1 : 0
        h.max_experts = UInt32(RoutingLimits.maxExperts)
        h.max_top_k = UInt32(RoutingLimits.maxTopK)
        guard negotiated >= 2 else { return Reply(answering: r, message: backendDevice, body: .hello(h, ext: nil)) }
        var e = moe_hello_ext()
        e.max_segment_bytes = config.maxSegmentBytes
        e.max_mapped_bytes_per_uid = config.maxMappedBytesPerUID
        e.max_registrations_per_uid = UInt32(config.maxRegistrationsPerUID)
        e.heartbeat_ivl_ms = UInt32(config.heartbeatMs)
        e.heartbeat_timeout_ms = UInt32(config.heartbeatMs) * 3
        e.features = UInt32(MOE_FEATURE_MASK | MOE_FEATURE_TOKEN_IDS | MOE_FEATURE_PLACEMENT | MOE_FEATURE_EXPERT_LOAD)
            | (h.shm_allowed != 0 ? UInt32(MOE_FEATURE_CHANNELS) : 0)
        e.max_queued_reply_bytes = UInt64(config.maxQueuedReplyBytes)
        e.max_queued_reply_bytes_total = UInt64(config.maxQueuedReplyBytesTotal)
        e.max_physical_experts = UInt32(ExpertPlacement.maxPhysical)
        e.control_allowed = ControlAccess(config: config).allows(r.origin) ? 1 : 0
        return Reply(answering: r, message: backendDevice, body: .hello(h, ext: e))
    }
}

/// Who may run control operations (SET_PLACEMENT, resetting a load window), which change what
/// every other client sees: ipc peers (kernel credentials) whose uid is root, the daemon's own,
/// or one of `--control-uid`. Never a tcp peer.
struct ControlAccess: Sendable {
    let allowed: Set<UInt32>

    init(config: ServerConfig) {
        allowed = config.controlUIDs.union([0, UInt32(geteuid())])
    }

    func allows(_ origin: any RequestOrigin) -> Bool {
        guard origin.transport == .ipc, let peer = origin.peer else { return false }
        return allowed.contains(peer.uid)
    }

    /// NOT_PERMITTED naming the peer, or nothing.
    func check(_ origin: any RequestOrigin, _ what: String) throws(RequestFailure) {
        guard !allows(origin) else { return }
        let who = origin.peer.map { "uid \($0.uid)" } ?? "a tcp peer"
        throw RequestFailure(.notPermitted, "\(what) is a control operation: \(who) is not root, the daemon's uid or a --control-uid")
    }
}

#if canImport(Glibc)
import Glibc
#endif
