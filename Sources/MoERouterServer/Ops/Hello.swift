import CMoERouterWire
import MoERouting

/// HELLO: the protocol version both sides speak and the limits this daemon enforces.
struct HelloHandler: Sendable {
    static let daemonVersion = "moe-routerd 0.1.0"

    let config: ServerConfig
    let layers: LayerSlot
    let backendName: String

    func answer(_ q: HelloRequest, _ r: InboundRequest) -> Reply {
        guard q.versions.contains(UInt16(MOE_PROTOCOL_VERSION)) else {
            return r.refused(RequestFailure(.badVersion, "client speaks versions \(q.versions.lowerBound)...\(q.versions.upperBound); daemon speaks \(MOE_PROTOCOL_VERSION)"))
        }
        var h = moe_hello_resp()
        h.protocol_version = UInt16(MOE_PROTOCOL_VERSION)
        h.min_protocol_version = UInt16(MOE_PROTOCOL_VERSION)
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
        return Reply(answering: r, message: "hello", body: .hello(h))
    }
}
