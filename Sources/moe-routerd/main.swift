import ArgumentParser
import Dispatch
import Foundation
import Logging
import Metrics
import MoERouterServer
import MoERouterService
import MoERouting
import Prometheus

/// moe-routerd: holds built MoE routing layers and serves top-k routing over ZeroMQ, with bulk
/// tensors in POSIX shared memory. Protocol: docs/PROTOCOL.md; wire structs: Include/moe_router.h.
@main
struct RouterDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe-routerd",
        abstract: "Serve MoE top-k routing over ZeroMQ (ipc, optional tcp) with shared-memory tensors.",
        discussion: """
        Layers come from --config (YAML) and --preset (repeatable), in that order; their ids are \
        their positions. Presets: \(Presets.names.joined(separator: ", ")). A biased preset uses \
        the deterministic synthetic bias of Presets.syntheticBias (uniform in [-0.1, 0.1)).
        Default endpoint: ipc://$RUNTIME_DIRECTORY/routerd.sock, else \
        ipc://$XDG_RUNTIME_DIR/moe-router/routerd.sock, else ipc:///tmp/moe-router-$UID/routerd.sock.
        """)

    @Option(name: .customLong("preset"), help: "Serve a built-in model layer (repeatable).")
    var presets: [String] = []

    @Option(help: "YAML configuration file (endpoints, limits, layers).")
    var config: String?

    @Option(help: "The ipc endpoint, ipc://PATH (socket file mode 0660).")
    var endpoint: String?

    @Option(help: "Also bind this tcp endpoint (tcp://HOST:PORT). Shared memory is refused there.")
    var tcp: String?

    @Option(help: "Routing backend: \(BackendFactory.names.joined(separator: ", ")) (auto: ROCm when a device is present, else cpu).")
    var backend: String?

    @Option(help: "ROCm device ordinal for --backend rocm|auto.")
    var device: Int = 0

    @Option(help: "Serve Prometheus metrics, /healthz and /readyz on HOST:PORT (loopback only unless --metrics-allow-remote).")
    var metrics: String?

    @Flag(help: "Allow --metrics on a non-loopback address (the endpoint has no authentication).")
    var metricsAllowRemote = false

    @Option(help: "Log format: auto (journal when stderr is the journal), journal (<N> priority prefixes), plain.")
    var logFormat: String = "auto"

    @Option(help: "Gate dtype of --preset layers: fp32, bf16, fp16.")
    var gateDtype: String = "bf16"

    @Option(help: "Non-finite policy of --preset layers: clamp or reject.")
    var nonfinite: String = "clamp"

    @Option(help: "Worker threads for large requests (default: online cores).")
    var workers: Int?

    @Option(help: "Queued large requests before BUSY.")
    var queueDepth: Int?

    @Option(help: "ROUTEs up to this many tokens run on the I/O thread.")
    var inlineTokens: Int?

    @Option(help: "Largest request in bytes answered with a typed error.")
    var maxMessageBytes: Int?

    @Option(help: "Largest token count per ROUTE.")
    var maxTokens: Int?

    @Option(help: "Default per-request deadline in milliseconds.")
    var deadlineMs: UInt32?

    @Option(help: "Shared-memory registrations per client.")
    var maxRegistrations: Int?

    @Option(help: "Write and lock a pidfile.")
    var pidfile: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    mutating func run() throws {
        ProcessTitle.initialize()
        let level = Logger.Level(rawValue: logLevel) ?? .info
        guard ["auto", "journal", "plain"].contains(logFormat) else {
            throw ValidationError("--log-format \(logFormat): expected auto, journal or plain")
        }
        let journal = logFormat == "journal" || (logFormat == "auto" && JournalLogHandler.stderrIsJournal)
        LoggingSystem.bootstrap { label in
            if journal { return JournalLogHandler(logLevel: level) }
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "moe-routerd")
        let notifier = SystemdNotifier()
        var settings = try makeConfig()
        let metricsAddress: (host: String, port: UInt16)?
        do {
            settings.listenFD = try SocketActivation.listenFD()
            metricsAddress = try metrics.map { m throws(ConfigError) in try MetricsAddress.parse(m, allowRemote: metricsAllowRemote) }
        } catch {
            logger.critical("\(error)")
            throw ExitCode(2)
        }
        if metricsAddress != nil {
            let registry = PrometheusCollectorRegistry()
            var factory = PrometheusMetricsFactory(registry: registry)
            factory.defaultDurationHistogramBuckets = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 1_000_000]
                .map { Duration.microseconds($0) }
            MetricsSystem.bootstrap(factory)
            ServerMetrics.enable()
            Self.registry = registry
        }
        let server: RouterServer
        do { server = try RouterServer(config: settings, logger: logger) } catch {
            logger.critical("\(error)")
            notifier.notify("STATUS=failed: \(error)")
            throw ExitCode(2)
        }
        logger.info("\(server.backendReason)")
        if settings.listenFD != nil { logger.info("socket activation: serving \(settings.endpoint) on the socket systemd passed") }
        let pid = try pidfile.map { path in
            do { return try PidFile(path: path) } catch {
                logger.critical("\(error)")
                throw ExitCode(2)
            }
        }
        for layer in server.layers { logger.info("\(Self.describe(layer))") }
        let endpoint: MetricsEndpoint?
        if let (host, port) = metricsAddress {
            do {
                endpoint = try MetricsEndpoint(host: host, port: port) { [server] in
                    ServerMetrics.update(server.serviceSnapshot)
                    return RouterDaemon.registry?.emitToString() ?? ""
                }
            } catch {
                logger.critical("\(error)")
                pid?.remove()
                throw ExitCode(2)
            }
            let t = Thread { endpoint!.serve() }
            t.start()
            logger.info("metrics on http://\(host):\(endpoint!.port)/metrics")
        } else {
            endpoint = nil
        }
        let reporter = ServiceReporter(server: server, notifier: notifier, logger: logger)
        let signals = [SIGTERM, SIGINT].map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                logger.info("signal \(sig): draining and shutting down")
                reporter.draining.store(true, ordering: .relaxed)
                endpoint?.setReady(false)
                notifier.stopping(status: "draining")
                server.stop()
            }
            source.resume()
            return source
        }
        // SIGHUP: reload the configuration file on a serial queue (one reload at a time).
        signal(SIGHUP, SIG_IGN)
        let reloads = DispatchQueue(label: "moe-routerd.reload")
        let hup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: reloads)
        let command = self
        hup.setEventHandler {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000)\nSTATUS=reloading \(command.config ?? "(no --config)")")
            do {
                let outcome = try server.reload(try command.makeConfig())
                logger.notice("\(outcome)")
                for layer in server.layers { logger.info("\(Self.describe(layer))") }
            } catch {
                logger.error("reload rejected, still serving the previous \(server.layers.count) layers: \(error)")
            }
            notifier.notify("READY=1\nSTATUS=serving \(server.layers.count) layers on \(settings.endpoint)")
        }
        hup.resume()
        do {
            try server.run(ready: {
                endpoint?.setReady(true)
                notifier.ready(status: "serving \(server.layers.count) layers on \(settings.endpoint), backend \(server.backendName)")
                ProcessTitle.set("\(server.layers.count) layers, 0 clients, 0 req/s, backend \(server.backendName)")
                reporter.start()
            })
        } catch {
            logger.critical("\(error)")
            reporter.stop()
            pid?.remove()
            throw ExitCode(1)
        }
        reporter.stop()
        hup.cancel()
        endpoint?.stop()
        notifier.stopping(status: "stopped")
        signals.forEach { $0.cancel() }
        pid?.remove()
    }

    nonisolated(unsafe) static var registry: PrometheusCollectorRegistry?

    static func describe(_ layer: BuiltLayer) -> String {
        let s = layer.spec
        return "layer \(s.name): \(s.method) E=\(s.numExperts) k=\(s.topK) G=\(s.numExpertGroup) Gk=\(s.topKGroup) gate=\(s.gateDType) nonfinite=\(s.nonFinite)"
    }

    func makeConfig() throws -> ServerConfig {
        var file = ConfigFile()
        var specs: [LayerSpec] = []
        do {
            if let config {
                file = try ConfigFile.load(path: config)
                let dir = URL(fileURLWithPath: config).deletingLastPathComponent().path
                specs = try file.layerSpecs(baseDirectory: dir)
            }
            guard let gate = DType(name: gateDtype) else { throw ConfigError("--gate-dtype \(gateDtype): expected fp32, bf16 or fp16") }
            guard let policy = NonFinitePolicy(name: nonfinite) else { throw ConfigError("--nonfinite \(nonfinite): expected clamp or reject") }
            for name in presets {
                guard var spec = Presets.spec(named: name, gateDType: gate) else {
                    throw ConfigError("--preset \(name) is unknown (known: \(Presets.names.joined(separator: ", ")))")
                }
                spec.nonFinite = policy
                specs.append(spec)
            }
        } catch let e as ConfigError {
            throw ValidationError(e.description)
        }
        var c = ServerConfig(endpoint: endpoint ?? file.endpoint ?? ServerConfig.defaultEndpoint())
        c.tcpEndpoint = tcp ?? file.tcp
        c.backend = backend ?? file.backend ?? "cpu"
        c.device = device
        // Every limit is checked against a range: a value outside it is a start-up error naming
        // the setting (never clamped silently, never an overflow or a runaway thread count).
        func checked(_ name: String, _ v: Int, _ range: ClosedRange<Int>) throws -> Int {
            guard range.contains(v) else {
                throw ConfigError("\(name) = \(v) is outside \(range.lowerBound)...\(range.upperBound)")
            }
            return v
        }
        let limits = ServerConfig.Limits.self
        if let v = workers ?? file.workers { c.workers = try checked("workers", v, limits.workers) }
        if let v = queueDepth ?? file.queue_depth { c.queueDepth = try checked("queue_depth", v, limits.queueDepth) }
        if let v = inlineTokens ?? file.inline_tokens { c.inlineTokens = try checked("inline_tokens", v, limits.inlineTokens) }
        if let v = maxMessageBytes ?? file.max_message_bytes {
            c.maxMessageBytes = try checked("max_message_bytes", v, limits.maxMessageBytes)
        }
        if let v = maxTokens ?? file.max_tokens { c.maxTokens = try checked("max_tokens", v, limits.maxTokens) }
        if let v = deadlineMs ?? file.deadline_ms { c.defaultDeadlineMs = UInt32(try checked("deadline_ms", Int(v), limits.deadlineMs)) }
        if let v = maxRegistrations ?? file.max_registrations {
            c.maxRegistrations = try checked("max_registrations", v, limits.maxRegistrations)
        }
        c.layers = specs
        return c
    }
}
