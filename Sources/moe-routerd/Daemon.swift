import ArgumentParser
import CMoERouterdOS
import Dispatch
import Foundation
import Logging
import Metrics
import MoERouterServer
import MoERouterService
import MoERouting
import Prometheus

/// Service wiring: logging, metrics, the server, signals (SIGTERM/SIGINT drain, SIGHUP reload),
/// the pidfile and the service manager's notifications, in start-up order.
///
/// The parts are OS threads, not swift-service-lifecycle `Service`s: the serving loop and the
/// workers block in libzmq calls (sockets are bound to one thread and must never run on Swift's
/// cooperative pool), and shutdown has a fixed order (unlink the socket, drain, stop workers,
/// flush, release registrations) that `RouterServer.run` owns. A ServiceGroup would wrap each
/// thread in a bridge without removing any of this code (docs/ARCHITECTURE.md).
struct Daemon {
    let command: RouterDaemon

    func run() throws {
        let command = self.command
        ProcessTitle.initialize()
        let level = Logger.Level(rawValue: command.logLevel) ?? .info
        guard ["auto", "journal", "plain"].contains(command.logFormat) else {
            throw ValidationError("--log-format \(command.logFormat): expected auto, journal or plain")
        }
        let journal = command.logFormat == "journal" || (command.logFormat == "auto" && JournalLogHandler.stderrIsJournal)
        LoggingSystem.bootstrap { label in
            if journal { return JournalLogHandler(logLevel: level) }
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "moe-routerd")
        // Every connection is an fd, and libzmq aborts when accept() meets EMFILE: take the
        // whole hard limit (LimitNOFILE= under systemd), and the ZAP handler sheds new
        // connections past 75 % of it.
        let fdLimit = mro_raise_fd_limit()
        mro_fd_reserve_init()
        let notifier = SystemdNotifier()
        // A configuration the daemon cannot serve with exits 2, whichever stage found it.
        var settings: ServerConfig
        do { settings = try command.serverConfig { logger.info("\($0)") } } catch {
            logger.critical("\(error)")
            notifier.notify("STATUS=failed: \(error)")
            throw ExitCode(2)
        }
        let metricsAddress: (host: String, port: UInt16)?
        do {
            settings.listenFD = try SocketActivation.listenFD()
            metricsAddress = try command.metrics.map { m throws(ConfigError) in
                try MetricsAddress.parse(m, allowRemote: command.metricsAllowRemote)
            }
        } catch {
            logger.critical("\(error)")
            throw ExitCode(2)
        }
        var registry: PrometheusCollectorRegistry?
        var serverMetrics: ServerMetrics?
        if metricsAddress != nil {
            let r = PrometheusCollectorRegistry()
            var factory = PrometheusMetricsFactory(registry: r)
            factory.defaultDurationHistogramBuckets = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 1_000_000]
                .map { Duration.microseconds($0) }
            MetricsSystem.bootstrap(factory)
            registry = r
            serverMetrics = ServerMetrics()
        }
        let server: RouterServer
        do { server = try RouterServer(config: settings, logger: logger, metrics: serverMetrics) } catch {
            logger.critical("\(error)")
            notifier.notify("STATUS=failed: \(error)")
            throw ExitCode(2)
        }
        logger.info("\(server.backendReason)")
        logger.info("file descriptor limit \(fdLimit < 0 ? "unlimited" : String(fdLimit)); new connections are refused past 75 % of it, and shed unaccepted if it runs out")
        if settings.listenFD != nil { logger.info("socket activation: serving \(settings.endpoint) on the socket systemd passed") }
        let pid = try command.pidfile.map { path in
            do { return try PidFile(path: path) } catch {
                logger.critical("\(error)")
                throw ExitCode(2)
            }
        }
        for layer in server.layers { logger.info("\(Self.describe(layer))") }
        let endpoint: MetricsEndpoint?
        if let (host, port) = metricsAddress {
            do {
                endpoint = try MetricsEndpoint(host: host, port: port) { [server, registry, serverMetrics] in
                    serverMetrics?.update(server.serviceSnapshot)
                    return (registry?.emitToString() ?? "") + server.expertLoadExposition()
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
        hup.setEventHandler { [command] in
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000)\nSTATUS=reloading \(command.config ?? "(no --config)")")
            do {
                let outcome = try server.reload(try command.serverConfig { logger.info("\($0)") })
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

    static func describe(_ layer: BuiltLayer) -> String {
        let s = layer.spec
        return "layer \(s.name): \(s.method) E=\(s.numExperts) k=\(s.topK) G=\(s.numExpertGroup) Gk=\(s.topKGroup) gate=\(s.gateDType) nonfinite=\(s.nonFinite)"
    }
}
