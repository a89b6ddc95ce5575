import Foundation
import MoERouting

/// Everything the daemon needs to serve: endpoints, limits and the layers to build.
public struct ServerConfig: Sendable {
    /// The ipc endpoint ("ipc:///run/moe-router/routerd.sock"); see `ServerConfig.defaultEndpoint`.
    public var endpoint: String
    /// A tcp endpoint, bound only when set. Shared memory is refused to its peers.
    public var tcpEndpoint: String?
    /// CURVE on the tcp endpoint (nil: plain, allowed only on loopback unless tcpAllowInsecure).
    public var tcpCurve: CurveKeys?
    public var tcpAllowInsecure = false
    /// The kernel backend (`--backend`).
    public var backend: BackendKind = .cpu
    /// The GPU device ordinal for the "rocm", "cuda" and "auto" backends.
    public var device: Int = 0
    /// A listening unix socket passed by systemd socket activation (LISTEN_FDS), used for the
    /// ipc endpoint through ZMQ_USE_FD instead of binding a new one.
    public var listenFD: Int32?
    /// Worker threads for large requests (default: online cores).
    public var workers: Int = ProcessInfo.processInfo.activeProcessorCount
    /// Requests waiting for or running on a worker before new ones get BUSY.
    public var queueDepth: Int = 64
    /// Threads serving shared-memory channels: n > 0 shares a pool of n among all channels
    /// (default: online cores, at most 64: on 2 cores, 8 clients got 1.2-1.7 x the requests/s of
    /// a thread per channel; docs/PERFORMANCE.md, issue 18); 0 gives each channel its own.
    public var channelThreads: Int = min(64, ProcessInfo.processInfo.activeProcessorCount)
    /// ROUTE requests of at most this many tokens run on the I/O thread without a hand-off.
    public var inlineTokens: Int = 64
    /// Largest request frame answered with a typed error; libzmq drops a connection that
    /// sends a frame larger than this plus 64 KiB (ZMQ_MAXMSGSIZE).
    public var maxMessageBytes: Int = 64 << 20
    public var maxTokens: Int = 1 << 20
    /// Bytes of inline answers a connection may leave unread before its ROUTEs get BUSY, and
    /// the same for all connections together (ReplyBudget).
    public var maxQueuedReplyBytes: Int = 64 << 20
    public var maxQueuedReplyBytesTotal: Int = 1 << 30

    /// The accepted range of each numeric setting (outside it: a start-up error).
    public enum Limits {
        public static let workers = 1...256
        public static let queueDepth = 1...1_000_000
        public static let channelThreads = 0...64
        public static let inlineTokens = 0...maxTokens.upperBound
        /// Up to 1 TiB; libzmq's ZMQ_MAXMSGSIZE is set a little above it (an Int64).
        public static let maxMessageBytes = 4096...(1 << 40)
        /// Byte counts of a request (tokens × experts × 4) stay far inside Int, so no hostile
        /// token count can overflow them.
        public static let maxTokens = 1...(1 << 32)
        public static let deadlineMs = 1...3_600_000
        public static let maxRegistrations = 1...65_536
        public static let queuedReplyBytes = (1 << 20)...(1 << 40)
        /// The guard table holds 4096 mappings in all.
        public static let maxRegistrationsPerUID = 1...4096
        public static let maxMappedBytesPerUID = (1 << 20)...(1 << 47)
    }
    public var defaultDeadlineMs: UInt32 = 5000
    public var maxRegistrations: Int = 64
    /// Per peer uid, over all its connections (SegmentRegistry.Limits).
    public var maxRegistrationsPerUID: Int = 1024
    public var maxMappedBytesPerUID: UInt64 = 1 << 40
    public var maxSegmentBytes: UInt64 = 1 << 34
    /// Peers allowed control operations (SET_PLACEMENT, resetting a load window) besides the
    /// daemon's own uid and root: ipc peers with one of these uids (`--control-uid`).
    public var controlUIDs: Set<UInt32> = []
    /// Whether /metrics carries the per-expert load histograms (one series per expert and layer).
    public var expertLoadMetrics = true
    /// ZMQ_RCVHWM / ZMQ_SNDHWM of the client-facing sockets.
    public var highWaterMark: Int32 = 1000
    /// ZMQ heartbeat interval; a tcp peer silent for 3 intervals is dropped.
    public var heartbeatMs: Int32 = 1000
    /// How long shutdown waits for in-flight requests.
    public var drainTimeoutMs: Int = 10_000
    public var layers: [LayerSpec] = []

    public init(endpoint: String) { self.endpoint = endpoint }

    /// The documented default ipc endpoint:
    /// `$RUNTIME_DIRECTORY/routerd.sock` (systemd's RuntimeDirectory=, first entry), else
    /// `$XDG_RUNTIME_DIR/moe-router/routerd.sock`, else `/tmp/moe-router-$UID/routerd.sock`.
    public static func defaultEndpoint(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let dir = environment["RUNTIME_DIRECTORY"]?.split(separator: ":").first, !dir.isEmpty {
            return "ipc://\(dir)/routerd.sock"
        }
        if let xdg = environment["XDG_RUNTIME_DIR"], !xdg.isEmpty {
            return "ipc://\(xdg)/moe-router/routerd.sock"
        }
        return "ipc:///tmp/moe-router-\(getuid())/routerd.sock"
    }

    /// The filesystem path of an ipc endpoint, or nil for other transports.
    public static func ipcPath(_ endpoint: String) -> String? {
        endpoint.hasPrefix("ipc://") ? String(endpoint.dropFirst(6)) : nil
    }
}

/// The built layers, addressed by id (their index, in configuration order).
public final class LayerCatalog: Sendable {
    public let layers: [BuiltLayer]

    /// Builds `specs`. A layer of `previous` with the same name and expert count hands its load
    /// counters (and its run-time placement, unless the spec sets one) to its successor.
    public init(_ specs: [LayerSpec], previous: LayerCatalog? = nil) throws(ConfigError) {
        var seen = Set<String>()
        var built: [BuiltLayer] = []
        let old = Dictionary((previous?.layers ?? []).map { ($0.spec.name, $0) }, uniquingKeysWith: { a, _ in a })
        for spec in specs {
            guard seen.insert(spec.name).inserted else { throw .layer(spec.name, reason: "the name appears twice") }
            guard spec.name.utf8.count < 64 else { throw .layer(spec.name, reason: "the name is longer than 63 bytes") }
            do { built.append(try BuiltLayer(spec, replacing: old[spec.name])) } catch { throw .layer(spec.name, reason: error.description) }
        }
        guard !built.isEmpty else { throw .noLayers }
        layers = built
    }

    /// Makes every layer ready on `backend` (a device backend uploads them) before it serves.
    func prepare(on backend: any RoutingBackend) throws(ConfigError) {
        for layer in layers {
            do { try backend.prepare(layer) } catch { throw .layer(layer.spec.name, reason: error.description) }
        }
    }

    public func layer(_ id: UInt32) -> BuiltLayer? { Int(id) < layers.count ? layers[Int(id)] : nil }
}
