import Foundation
import Logging
import MoERouterServer
import MoERouterService
import Synchronization

/// systemd socket activation (sd_listen_fds(3) protocol, without libsystemd).
enum SocketActivation {
    /// The listening socket passed as fd 3 when $LISTEN_PID is this process, else nil. The
    /// variables are removed so children do not inherit them.
    static func listenFD() throws(ConfigError) -> Int32? {
        let env = ProcessInfo.processInfo.environment
        guard let pid = env["LISTEN_PID"].flatMap(Int32.init), pid == getpid(),
              let count = env["LISTEN_FDS"].flatMap(Int.init) else { return nil }
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        guard count == 1 else {
            throw .invalid(key: "LISTEN_FDS", value: "\(count)", expected: "1: moe-routerd takes exactly one socket (the ipc socket) from socket activation")
        }
        let fd: Int32 = 3
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw .invalid(key: "LISTEN_FDS", value: "1", expected: "fd 3 to be a socket (socket activation)")
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }
}

/// The thread that tells the outside how the daemon is doing: WATCHDOG=1 only while the
/// serving loop's heartbeat advances, STATUS= lines and the process title with layers, clients
/// and req/s, and the release of device copies of layers a reload retired.
final class ServiceReporter: Sendable {
    private let server: RouterServer
    private let notifier: SystemdNotifier
    private let logger: Logger
    private let stopped = Atomic<Bool>(false)
    /// Set when draining: the serving loop has ended on purpose, so the pings continue until
    /// exit (the drain has its own time limit).
    let draining = Atomic<Bool>(false)
    private let statusEveryNs: UInt64 = 2_000_000_000

    init(server: RouterServer, notifier: SystemdNotifier, logger: Logger) {
        self.server = server
        self.notifier = notifier
        self.logger = logger
    }

    /// One line for STATUS= and the process title.
    static func summary(_ s: ServiceSnapshot, reqPerSec: Double, backend: String) -> String {
        "\(s.layers) layers, \(s.clients) clients, \(String(format: "%.0f", reqPerSec)) req/s, backend \(backend)"
    }

    func start() {
        let t = Thread { [self] in loop() }
        t.name = "moe-service"
        t.start()
    }

    func stop() { stopped.store(true, ordering: .relaxed) }

    private func loop() {
        ProcessTitle.nameThread("moe-service")
        let pingEvery = notifier.watchdogInterval.map { UInt64($0.components.seconds) * 1_000_000_000 + UInt64($0.components.attoseconds / 1_000_000_000) }
        var gate = WatchdogGate(heartbeat: server.heartbeat.load(ordering: .relaxed))
        var nextPing = DispatchTime.now().uptimeNanoseconds
        var nextStatus = nextPing
        var lastRequests = server.serviceSnapshot.requests
        var lastStatusAt = nextPing
        var stallLogged = false
        while !stopped.load(ordering: .relaxed) {
            let now = DispatchTime.now().uptimeNanoseconds
            if let pingEvery, now >= nextPing {
                nextPing = now + pingEvery
                if gate.shouldPing(heartbeat: server.heartbeat.load(ordering: .relaxed), draining: draining.load(ordering: .relaxed)) {
                    notifier.watchdog()
                    if stallLogged { logger.notice("serving loop running again; watchdog pings resumed") }
                    stallLogged = false
                } else if !stallLogged {
                    logger.error("serving loop stalled: no iteration for \(pingEvery / 1_000_000) ms; watchdog pings withheld")
                    stallLogged = true
                }
            }
            if now >= nextStatus {
                nextStatus = now + statusEveryNs
                let s = server.serviceSnapshot
                let elapsed = Double(now - lastStatusAt) / 1e9
                let rate = elapsed > 0 ? Double(s.requests &- lastRequests) / elapsed : 0
                lastRequests = s.requests
                lastStatusAt = now
                let line = Self.summary(s, reqPerSec: rate, backend: server.backendName)
                if !draining.load(ordering: .relaxed) {
                    notifier.status(line)
                    ProcessTitle.set(line)
                }
                server.releaseRetiredLayers()
            }
            usleep(100_000)
        }
    }
}

/// The Prometheus endpoint of `--metrics HOST:PORT`.
enum MetricsAddress {
    /// Parses HOST:PORT (IPv4 literal); refuses non-loopback hosts unless `allowRemote`.
    static func parse(_ text: String, allowRemote: Bool) throws(ConfigError) -> (host: String, port: UInt16) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            throw .invalid(key: "--metrics", value: text, expected: "HOST:PORT, e.g. 127.0.0.1:9464")
        }
        let host = String(text[..<colon])
        guard host.split(separator: ".").count == 4, host.split(separator: ".").allSatisfy({ UInt8($0) != nil }) else {
            throw .invalid(key: "--metrics", value: text, expected: "an IPv4 HOST, e.g. 127.0.0.1")
        }
        if !host.hasPrefix("127.") && !allowRemote {
            throw .invalid(key: "--metrics", value: text, expected: "a loopback HOST (\(host) is not a loopback address; the metrics endpoint has no authentication: pass --metrics-allow-remote to expose it anyway)")
        }
        return (host, port)
    }
}
