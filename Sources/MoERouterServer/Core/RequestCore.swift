import CMoERouterdOS
import Logging
import MoERouting

/// The daemon's state that requests read and change: the served layers, the backend, the
/// shared-memory registrations and the counters.
final class DaemonState: Sendable {
    let config: ServerConfig
    /// The served layers; a reload swaps them (Reload.swift). Read once per request.
    let layers: LayerSlot
    let backend: any RoutingBackend
    let registry: SegmentRegistry
    let stats = ServerStats()
    let clients = ActiveClients()
    let metrics: ServerMetrics?
    let replyBudget: ReplyBudget
    let channels: ChannelTable

    init(config: ServerConfig, catalog: LayerCatalog, backend: any RoutingBackend, metrics: ServerMetrics?,
         logger: Logger = Logger(label: "moe-routerd")) {
        self.config = config
        self.layers = LayerSlot(catalog)
        self.backend = backend
        self.metrics = metrics
        registry = SegmentRegistry(limits: .init(maxPerClient: config.maxRegistrations, maxSegmentBytes: config.maxSegmentBytes,
                                                 maxPerUID: config.maxRegistrationsPerUID,
                                                 maxBytesPerUID: config.maxMappedBytesPerUID),
                                   backend: backend)
        replyBudget = ReplyBudget(perConnection: config.maxQueuedReplyBytes, total: config.maxQueuedReplyBytesTotal)
        channels = ChannelTable(registry: registry, threads: config.channelThreads, logger: logger)
    }
}

/// Every transport feeds requests through this: `decode` once, `answer` (on whichever thread
/// the transport chooses), and `record` each reply once, as it is sent. Transports hold no
/// protocol logic; ops hold no transport logic.
final class RequestCore: Sendable {
    let decoder: RequestDecoder
    private let state: DaemonState
    private let hello: HelloHandler
    private let listLayers: ListLayersHandler
    private let registration: RegistrationHandler
    private let router: RouteHandler
    private let statistics: StatsHandler
    private let placement: PlacementHandler

    init(state: DaemonState, logger: Logger = Logger(label: "moe-routerd")) {
        let c = state.config
        self.state = state
        decoder = RequestDecoder(defaultDeadlineMs: c.defaultDeadlineMs, maxMessageBytes: c.maxMessageBytes, maxTokens: c.maxTokens)
        let b = state.backend
        // The device travels in HELLO's and STATS's message text: the fixed bodies have no room
        // for it, and a longer body would break version-2 clients that check its size.
        let device = "backend \(b.name): \(b.runtime) device \(b.deviceName)"
        hello = HelloHandler(config: c, layers: state.layers, backendName: b.name, backendDevice: device)
        listLayers = ListLayersHandler(layers: state.layers)
        registration = RegistrationHandler(registry: state.registry)
        router = RouteHandler(layers: state.layers, backend: state.backend, registry: state.registry, replies: state.replyBudget)
        statistics = StatsHandler(stats: state.stats, registry: state.registry, backendName: b.name, backendDevice: device)
        placement = PlacementHandler(layers: state.layers, stats: state.stats, control: ControlAccess(config: c), logger: logger)
    }

    /// The served layers.
    var layers: LayerSlot { state.layers }

    /// The decoded request, or the reply refusing it.
    func decode(_ frames: some RequestFrames, from origin: any RequestOrigin) -> Decoded {
        decoder.decode(frames, from: origin)
    }

    /// Whether the transport should run `request` off its I/O thread (a ROUTE over
    /// `inline_tokens` tokens).
    func isLarge(_ request: InboundRequest) -> Bool {
        if case .route(let q) = request.request { q.tokens > state.config.inlineTokens } else { false }
    }

    /// Answers a decoded request (any op). A request past its deadline is not run. `now`: the
    /// time, where the transport just read it (a channel answers a request as it sees it).
    func answer(_ r: InboundRequest, now: UInt64? = nil) -> Reply {
        guard now ?? mro_now_ns() <= r.deadlineNs else {
            return r.refused(RequestFailure(.deadline, "request waited past its deadline; nothing was run"))
        }
        switch r.request {
        case .hello(let q): return hello.answer(q, r)
        case .listLayers: return listLayers.answer(r)
        case .registerShm(let q): return registration.register(q, r)
        case .unregisterShm(let handle): return registration.unregister(handle: handle, r)
        case .route(let q): return router.answer(q, r)
        case .stats: return statistics.answer(r)
        case .ping: return Reply(answering: r, message: "pong")
        case .setPlacement(let q): return placement.setPlacement(q, r)
        case .expertLoad(let layer, let reset): return placement.expertLoad(layerID: layer, resetWindow: reset, r)
        case .openChannel(let q): return state.channels.open(q, r, core: self)
        case .closeChannel(let id): return state.channels.close(id, r)
        }
    }

    /// A ROUTE that arrived without frames (a channel's, decoded by `RequestDecoder.route`),
    /// answered at once: there is no queue, so no deadline to miss.
    func route(_ q: RouteRequest, _ call: RouteCall) -> RouteAnswer { router.route(q, call) }

    /// Counts `reply` in STATS and the metrics: once per reply, as the transport sends it.
    /// `origin`: who sent the request (decoded or not), for the request's duration.
    func record(_ reply: Reply, from origin: any RequestOrigin) {
        let route: RouteResult? = if case .route(let r) = reply.body { r } else { nil }
        record(op: reply.op, status: reply.status, route: route, receivedNs: origin.receivedNs)
    }

    /// Counts a ROUTE answered without a `Reply` (a channel's), as `record(_:from:)` would.
    func record(_ answer: RouteAnswer, receivedNs: UInt64) {
        record(op: WireOp.route.rawValue, status: answer.status, route: answer.result, receivedNs: receivedNs)
    }

    private func record(op: UInt16, status: WireStatus, route: RouteResult?, receivedNs: UInt64) {
        state.stats.count(status: status, route: route)
        guard let metrics = state.metrics else { return }
        // A ROUTE refused before its layer was looked up is still counted under that layer.
        var layer = ""
        if let r = route {
            layer = r.layerName.isEmpty ? state.layers.current.layer(r.layerID)?.spec.name ?? "" : r.layerName
        }
        metrics.record(op: op, status: status, tokens: status == .ok ? route?.tokens ?? 0 : 0, layer: layer,
                       receivedNs: receivedNs)
    }
}
