import CMoERouterdOS
import CZMQ
import Glibc
import Logging
import MoERouterZMQ
import MoERouting
import Synchronization

/// moe-routerd's server: one I/O thread owns the client-facing ROUTER sockets, answers small
/// requests itself (no thread hand-off on the latency path) and hands large ROUTEs to workers.
public final class RouterServer: Sendable {
    public let config: ServerConfig
    let state: DaemonState
    private let core: RequestCore
    private let logger: Logger
    private let stopping = Atomic<Bool>(false)
    /// Advanced by the I/O thread on every loop iteration (at least 10 per second when idle); a
    /// watchdog that sees it stand still knows the serving loop is stalled.
    public let heartbeat = Atomic<UInt64>(0)
    /// Why this backend was chosen (for the log).
    public let backendReason: String

    /// Builds every layer and the backend; throws a `ConfigError` naming what is wrong.
    /// `metrics`: the instruments every reply is counted in (nil: no metrics).
    public init(config: ServerConfig, logger: Logger, metrics: ServerMetrics? = nil) throws(ConfigError) {
        guard ServerConfig.ipcPath(config.endpoint) != nil else {
            throw .invalid(key: "endpoint", value: config.endpoint, expected: "ipc://PATH (use --tcp for tcp)")
        }
        if let t = config.tcpEndpoint {
            guard t.hasPrefix("tcp://") else { throw .invalid(key: "tcp", value: t, expected: "tcp://HOST:PORT") }
            // Anyone who can reach a non-loopback port could route, list layers and read STATS.
            guard config.tcpCurve != nil || config.tcpAllowInsecure || CurveKeys.isLoopback(t) else {
                throw .invalid(key: "tcp", value: t, expected: "a loopback address (127.0.0.1, [::1], localhost), or CURVE "
                               + "(--tcp-curve-key FILE --tcp-curve-allow FILE), or --tcp-allow-insecure")
            }
        }
        let catalog = try LayerCatalog(config.layers)
        let selection: BackendKind.Selection
        do { selection = try config.backend.select(threads: config.workers, device: config.device) } catch {
            throw .backend(config.backend, device: config.device, error)
        }
        try catalog.prepare(on: selection.backend)
        backendReason = selection.reason
        self.config = config
        state = DaemonState(config: config, catalog: catalog, backend: selection.backend, metrics: metrics, logger: logger)
        core = RequestCore(state: state, logger: logger)
        self.logger = logger
    }

    public var layers: [BuiltLayer] { state.layers.current.layers }
    public var backendName: String { state.backend.name }

    /// Asks `run()` to shut down gracefully; the I/O thread notices within
    /// `IOLoop.receiveTimeoutMs`. Async-signal-safe (one atomic store).
    public func stop() {
        stopping.store(true, ordering: .relaxed)
    }

    /// Binds, serves until `stop()`, drains, releases everything and removes the socket file.
    /// `ready` runs once the endpoints accept connections.
    public func run(ready: () -> Void = {}) throws {
        let rc = mro_guard_install()
        guard rc == 0 else { throw StartupError("cannot install the SIGBUS guard: \(String(cString: strerror(rc)))") }
        let context = ZMQContext(ioThreads: 1)
        let zap = try ZAPHandler(context: context, allowedCurveKeys: config.tcpCurve?.allowed, logger: logger)
        if let t = config.tcpEndpoint, config.tcpCurve == nil, !CurveKeys.isLoopback(t) {
            logger.warning("--tcp-allow-insecure: \(t) admits any peer without authentication or encryption")
        }
        let zapThread = ServiceThread(name: "moe-zap") { [zap] in zap.serve() }
        // One ROUTER for everything the I/O thread receives (see IOLoop): the inproc endpoint
        // first, so the workers and the tcp relay are connected before any client.
        let front = try makeRouter(context, domain: ZAPHandler.ipcDomain)
        try front.bind(IOLoop.frontInproc)
        let pool = WorkerPool(count: config.workers, context: context, front: IOLoop.frontInproc, core: core, logger: logger)
        var relay: TCPRelay?
        if let t = config.tcpEndpoint {
            do {
                relay = try TCPRelay(context: context, endpoint: t, front: IOLoop.frontInproc, curve: config.tcpCurve, logger: logger,
                                     configure: configure)
            } catch {
                pool.stop()
                throw StartupError("cannot bind \(t): \(error)")
            }
        }
        let path = ServerConfig.ipcPath(config.endpoint)!
        // Socket activation: libzmq takes the listening socket systemd passed instead of
        // creating one; the socket file belongs to the .socket unit and stays.
        do {
            if let fd = config.listenFD { try front.set(ZMQ_USE_FD, fd) } else { try Self.prepareSocketPath(path) }
            let saved = umask(0o117)  // the socket file gets mode 0660
            defer { umask(saved) }
            do { try front.bind(config.endpoint) } catch { throw StartupError("cannot bind \(config.endpoint): \(error)") }
        } catch {
            pool.stop()
            throw error
        }
        if config.listenFD == nil { chmod(path, 0o660) }
        let monitor = try monitor(front, context, name: "ipc")
        let daemon = IOLoop.Daemon(core: core, connections: state.registry, clients: state.clients, stats: state.stats,
                                   queueDepth: config.queueDepth)
        var loop = try IOLoop(daemon: daemon, front: front, monitor: monitor, pool: pool, servesTCP: relay != nil,
                              logger: logger)
        logger.info("serving", metadata: ["endpoint": "\(config.endpoint)", "tcp": "\(config.tcpEndpoint ?? "-")",
                                          "layers": "\(layers.count)", "backend": "\(backendName)", "workers": "\(config.workers)"])
        ready()
        loop.serve(isStopping: {
            self.heartbeat.add(1, ordering: .relaxed)
            return self.stopping.load(ordering: .relaxed)
        })
        // Stop accepting: the socket file goes first, then in-flight requests finish.
        if config.listenFD == nil { unlink(path) }
        // Channels answer the request in hand and close (their clients see MOE_CHANNEL_CLOSED);
        // their threads are gone before any segment is unmapped.
        state.channels.closeAll(timeoutMs: config.drainTimeoutMs)
        loop.drain(timeoutMs: config.drainTimeoutMs)
        pool.stop()
        loop.flushResults(timeoutMs: 2000)
        state.registry.releaseAll()
        // Answers still in the ROUTER's pipes (a client reading slowly) go out while the context
        // terminates, for up to drain_timeout more; then what is left is dropped.
        try? front.set(ZMQ_LINGER, Int32(clamping: config.drainTimeoutMs))
        for s in [front, monitor] { s.close() }
        context.shutdown()
        relay?.join()
        zapThread.join()
        // Every socket is closed now: terminating delivers what the ROUTER still holds.
        if !context.terminate(timeoutMs: config.drainTimeoutMs + 1000) {
            logger.warning("shutdown: answers still undelivered after \(config.drainTimeoutMs) ms were dropped")
        }
        logger.info("stopped")
    }

    /// The options every client-facing ROUTER gets.
    private func configure(_ s: ZMQSocket) throws(ZMQError) {
        try s.set(ZMQ_RCVHWM, config.highWaterMark)
        try s.set(ZMQ_SNDHWM, config.highWaterMark)
        try s.set(ZMQ_MAXMSGSIZE, Int64(config.maxMessageBytes + (64 << 10)))
        try s.set(ZMQ_HEARTBEAT_IVL, config.heartbeatMs)
        try s.set(ZMQ_HEARTBEAT_TTL, config.heartbeatMs * 3)
        try s.set(ZMQ_HEARTBEAT_TIMEOUT, config.heartbeatMs * 3)
    }

    private func makeRouter(_ context: ZMQContext, domain: String) throws(ZMQError) -> ZMQSocket {
        let s = try ZMQSocket(context, type: ZMQ_ROUTER)
        try s.set(ZMQ_ZAP_DOMAIN, domain)
        try configure(s)
        return s
    }

    private func monitor(_ s: ZMQSocket, _ context: ZMQContext, name: String) throws(ZMQError) -> ZMQSocket {
        let endpoint = "inproc://moe-routerd-monitor-\(name)"
        try s.monitor(endpoint, events: ZMQ_EVENT_DISCONNECTED)
        let pair = try ZMQSocket(context, type: ZMQ_PAIR)
        try pair.connect(endpoint)
        return pair
    }

    /// Creates the socket's directory (0700 when we create it) and refuses to replace a socket
    /// file a live daemon still listens on.
    static func prepareSocketPath(_ path: String) throws(StartupError) {
        let dir = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if !dir.isEmpty {
            var parts: [Substring] = []
            for component in dir.split(separator: "/") {
                parts.append(component)
                let p = "/" + parts.joined(separator: "/")
                if mkdir(p, 0o700) != 0 && errno != EEXIST {
                    throw StartupError("cannot create \(p): \(String(cString: strerror(errno)))")
                }
            }
        }
        guard path.utf8.count < 108 else { throw StartupError("ipc path \(path) is longer than 107 bytes") }
        if access(path, F_OK) == 0 {
            if mro_unix_socket_alive(path) != 0 { throw StartupError("\(path): another daemon is listening there") }
            unlink(path)
        }
    }
}

/// The daemon could not start serving (a socket, a path, a signal handler); the message says
/// what and why.
public struct StartupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
