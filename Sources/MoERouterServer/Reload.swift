import MoERouting
import Synchronization

/// The layers the daemon serves right now. A reload replaces the whole catalog in one store;
/// a request reads the slot once, so it finishes on the layers it started with (the old
/// `BuiltLayer`s live until their last request returns).
final class LayerSlot: Sendable {
    private let catalog: Mutex<LayerCatalog>
    /// Bumped by every `replace` (after the swap): a `Reader` whose copy is older reads again.
    private let generation = Atomic<UInt64>(0)
    /// Layers replaced by a reload whose device copies are not freed yet.
    let retired = Mutex<[BuiltLayer]>([])

    init(_ catalog: LayerCatalog) { self.catalog = Mutex(catalog) }

    var current: LayerCatalog { catalog.withLock { $0 } }

    /// Stores `new` and returns the catalog it replaced.
    func replace(with new: LayerCatalog) -> LayerCatalog {
        catalog.withLock { old in
            let previous = old
            old = new
            generation.add(1, ordering: .releasing)
            return previous
        }
    }

    /// One thread's copy of the slot, for a path that reads it on every request (a channel's):
    /// an atomic load instead of the lock (~25 ns of a 1-token route). A copy keeps its layers
    /// alive, so a reload frees their device copies only after `drop` (or the next `current`).
    struct Reader {
        private var catalog: LayerCatalog?
        private var generation: UInt64 = 0

        init() {}

        /// The slot's catalog: the copy, unless a reload replaced it since it was read.
        mutating func current(_ slot: LayerSlot) -> LayerCatalog {
            let now = slot.generation.load(ordering: .acquiring)
            if let catalog, now == generation { return catalog }
            let fresh = slot.current
            (catalog, generation) = (fresh, now)
            return fresh
        }

        mutating func drop() { catalog = nil }
    }
}

/// What a reload did, for the log and the service manager's STATUS line.
public struct ReloadOutcome: Sendable, CustomStringConvertible {
    public let previousLayers: [String]
    public let layers: [String]
    /// Settings in the new configuration that only take effect after a restart.
    public let needsRestart: [String]

    public var description: String {
        var s = "reloaded: \(layers.count) layers (\(layers.joined(separator: ", "))), previously \(previousLayers.count)"
        if !needsRestart.isEmpty { s += "; changed settings that need a restart: \(needsRestart.joined(separator: ", "))" }
        return s
    }
}

extension RouterServer {
    /// Builds the layers of `config` and swaps them in atomically. Throws (and keeps serving the
    /// current layers) when any layer is invalid or the backend cannot take it. Layer ids are
    /// positions in the new configuration: clients should LIST_LAYERS again after a reload.
    public func reload(_ new: ServerConfig) throws(ConfigError) -> ReloadOutcome {
        let catalog = try LayerCatalog(new.layers, previous: state.layers.current)
        try catalog.prepare(on: state.backend)
        let old = state.layers.replace(with: catalog)
        let kept = Set(catalog.layers.map(ObjectIdentifier.init))
        state.layers.retired.withLock { $0 += old.layers.filter { !kept.contains(ObjectIdentifier($0)) } }
        releaseRetiredLayers()
        var restart: [String] = []
        if new.endpoint != config.endpoint { restart.append("endpoint") }
        if new.tcpEndpoint != config.tcpEndpoint { restart.append("tcp") }
        if new.backend != config.backend { restart.append("backend") }
        if new.workers != config.workers { restart.append("workers") }
        if new.queueDepth != config.queueDepth { restart.append("queue_depth") }
        if new.inlineTokens != config.inlineTokens { restart.append("inline_tokens") }
        if new.maxMessageBytes != config.maxMessageBytes { restart.append("max_message_bytes") }
        if new.maxTokens != config.maxTokens { restart.append("max_tokens") }
        if new.defaultDeadlineMs != config.defaultDeadlineMs { restart.append("deadline_ms") }
        if new.maxRegistrations != config.maxRegistrations { restart.append("max_registrations") }
        return ReloadOutcome(previousLayers: old.layers.map(\.spec.name), layers: catalog.layers.map(\.spec.name),
                             needsRestart: restart)
    }

    /// Frees the device copies of layers a reload replaced once no request runs on them
    /// (called after each reload and periodically by the service thread).
    public func releaseRetiredLayers() {
        state.layers.retired.withLock { retired in
            // Once a layer is out of the slot nothing can take a new reference to it, so "only
            // the retired list holds it" stays true.
            var kept: [BuiltLayer] = []
            while var layer = retired.popLast() {
                if isKnownUniquelyReferenced(&layer) { state.backend.release(layer) } else { kept.append(layer) }
            }
            retired = kept
        }
    }

    /// A snapshot for STATUS lines, the process title and metrics.
    public var serviceSnapshot: ServiceSnapshot {
        let snap = state.registry.snapshot
        let s = state.stats
        return ServiceSnapshot(layers: state.layers.current.layers.count, clients: state.clients.count(),
                               registrations: snap.registrations, mappedBytes: UInt64(snap.mappedBytes),
                               requests: s.requests.value, errors: s.errors.value,
                               tokens: s.tokens.value, queued: s.queued.load(ordering: .relaxed),
                               fallbackCasts: s.fallbackCasts.value,
                               nonFiniteInputs: s.nonFiniteInputs.value,
                               transfers: state.backend.transfers, backend: state.backend.name,
                               runtime: state.backend.runtime, device: state.backend.deviceName)
    }
}

/// Counters and gauges of a running daemon at one instant.
public struct ServiceSnapshot: Sendable {
    public let layers: Int
    public let clients: Int
    public let registrations: Int
    public let mappedBytes: UInt64
    public let requests: UInt64
    public let errors: UInt64
    public let tokens: UInt64
    public let queued: UInt64
    public let fallbackCasts: UInt64
    public let nonFiniteInputs: UInt64
    /// The backend's registrations of client mappings and its zero-copy / staged routes.
    public let transfers: BackendTransfers
    /// The backend's name, its runtime and the device (or CPU) it routes on.
    public let backend: String
    public let runtime: String
    public let device: String
}
