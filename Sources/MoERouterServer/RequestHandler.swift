import CMoERouterWire
import CMoERouterdOS
import MoERouting

/// The daemon's state shared by the I/O thread and the workers, and the handlers of every op.
final class RequestHandler: Sendable {
    static let daemonVersion = "moe-routerd 0.1.0"

    let config: ServerConfig
    /// The served layers; a reload swaps them (Reload.swift). Read once per request.
    let layerSlot: LayerSlot
    var catalog: LayerCatalog { layerSlot.current }
    let backend: any RoutingBackend
    let registry: SegmentRegistry
    let stats = ServerStats()
    let router: RouteExecutor

    init(config: ServerConfig, catalog: LayerCatalog, backend: any RoutingBackend) {
        self.config = config
        self.layerSlot = LayerSlot(catalog)
        self.backend = backend
        registry = SegmentRegistry(limits: .init(maxPerClient: config.maxRegistrations,
                                                 maxSegmentBytes: config.maxSegmentBytes))
        router = RouteExecutor(layerSlot: layerSlot, backend: backend, registry: registry, stats: stats,
                               maxTokens: config.maxTokens)
    }

    /// Answers a parsed request (any op).
    func handle(_ r: IncomingRequest) -> Reply {
        let reply: Reply
        if mro_now_ns() > r.deadlineNs {
            reply = r.failure(RequestFailure(.deadline, "request waited past its deadline; nothing was run"))
        } else {
            switch WireOp(rawValue: r.op)! {
            case .hello: reply = hello(r)
            case .listLayers: reply = listLayers(r)
            case .registerShm: reply = register(r)
            case .unregisterShm: reply = unregister(r)
            case .route: reply = router.route(r)
            case .stats: reply = statsReply(r)
            case .ping: reply = Reply(op: r.op, requestID: r.requestID, message: "pong")
            }
        }
        stats.count(reply, request: r, layer: { self.layerName(r) })
        return reply
    }

    /// The name of the layer a ROUTE addressed ("" for other ops and unknown ids).
    private func layerName(_ r: IncomingRequest) -> String {
        guard r.op == WireOp.route.rawValue else { return "" }
        return catalog.layer(WireBytes.load(moe_route_req.self, from: r.body).layer_id)?.spec.name ?? ""
    }

    private func hello(_ r: IncomingRequest) -> Reply {
        let q = WireBytes.load(moe_hello_req.self, from: r.body)
        guard q.reserved == 0 else { return r.failure(RequestFailure(.badField, "hello.reserved = \(q.reserved), must be 0")) }
        guard WireBytes.string(fromFixed: q.client_name) != nil else {
            return r.failure(RequestFailure(.badField, "hello.client_name is not NUL-terminated"))
        }
        guard q.min_version <= MOE_PROTOCOL_VERSION, q.max_version >= MOE_PROTOCOL_VERSION else {
            return r.failure(RequestFailure(.badVersion, "client speaks versions \(q.min_version)...\(q.max_version); daemon speaks \(MOE_PROTOCOL_VERSION)"))
        }
        var h = moe_hello_resp()
        h.protocol_version = UInt16(MOE_PROTOCOL_VERSION)
        h.min_protocol_version = UInt16(MOE_PROTOCOL_VERSION)
        h.layer_count = UInt32(catalog.layers.count)
        WireBytes.setFixed(&h.daemon_version, Self.daemonVersion)
        WireBytes.setFixed(&h.backend, backend.name)
        h.max_message_bytes = UInt64(config.maxMessageBytes)
        h.max_tokens = UInt64(config.maxTokens)
        h.max_registrations = UInt32(config.maxRegistrations)
        h.default_deadline_ms = config.defaultDeadlineMs
        h.workers = UInt32(config.workers)
        h.queue_depth = UInt32(config.queueDepth)
        h.shm_allowed = r.transport == .ipc && r.peer != nil ? 1 : 0
        h.max_experts = UInt32(RoutingLimits.maxExperts)
        h.max_top_k = UInt32(RoutingLimits.maxTopK)
        return Reply(op: r.op, requestID: r.requestID, message: "hello", body: WireBytes.bytes(of: h))
    }

    private func listLayers(_ r: IncomingRequest) -> Reply {
        let catalog = self.catalog
        var head = moe_list_resp()
        head.count = UInt32(catalog.layers.count)
        var body = WireBytes.bytes(of: head)
        var biases: [Float] = []
        for (id, layer) in catalog.layers.enumerated() {
            let s = layer.spec
            var info = moe_layer_info()
            info.layer_id = UInt32(id)
            info.method = s.method.rawValue
            info.scoring = s.scoring.rawValue
            info.gate_dtype = s.gateDType.rawValue
            info.nonfinite = s.nonFinite.rawValue
            info.num_experts = UInt32(s.numExperts)
            info.top_k = UInt32(s.topK)
            info.num_expert_group = UInt32(s.numExpertGroup)
            info.topk_group = UInt32(s.topKGroup)
            info.renormalize = s.renormalize ? 1 : 0
            info.routed_scaling_factor = s.routedScalingFactor
            info.bias_offset = UInt32(biases.count)
            if let b = layer.storedBias {
                info.has_bias = 1
                biases += b.widened()
            }
            WireBytes.setFixed(&info.name, s.name)
            body += WireBytes.bytes(of: info)
        }
        let frame = biases.withUnsafeBytes { ZMQMessage.copying($0) }
        return Reply(op: r.op, requestID: r.requestID, message: "\(catalog.layers.count) layers", body: body, frames: [frame])
    }

    private func register(_ r: IncomingRequest) -> Reply {
        let q = WireBytes.load(moe_register_req.self, from: r.body)
        guard r.transport == .ipc, let peer = r.peer else {
            return r.failure(RequestFailure(.shmRefused, "shared memory is only available to ipc peers on this host"))
        }
        guard let name = WireBytes.string(fromFixed: q.name) else {
            return r.failure(RequestFailure(.shmName, "register.name is not NUL-terminated within \(MOE_SHM_NAME_BYTES) bytes"))
        }
        do {
            let seg = try registry.register(client: r.client, peer: peer, connectionFD: r.connectionFD, name: name, size: q.size)
            var resp = moe_register_resp()
            resp.handle = seg.handle
            resp.size = UInt64(seg.size)
            return Reply(op: r.op, requestID: r.requestID, message: "registered \(name)", body: WireBytes.bytes(of: resp))
        } catch {
            return r.failure(error)
        }
    }

    private func unregister(_ r: IncomingRequest) -> Reply {
        let q = WireBytes.load(moe_unregister_req.self, from: r.body)
        do {
            let deferred = try registry.unregister(client: r.client, handle: q.handle)
            var resp = moe_unregister_resp()
            resp.deferred = deferred ? 1 : 0
            return Reply(op: r.op, requestID: r.requestID, message: deferred ? "release deferred until the running request ends" : "unregistered",
                         body: WireBytes.bytes(of: resp))
        } catch {
            return r.failure(error)
        }
    }

    private func statsReply(_ r: IncomingRequest) -> Reply {
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
        WireBytes.setFixed(&s.backend, backend.name)
        return Reply(op: r.op, requestID: r.requestID, message: "stats", body: WireBytes.bytes(of: s))
    }
}
