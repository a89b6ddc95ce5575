import CMoERouterdOS
import Glibc
import Synchronization

/// A minimal HTTP/1.1 endpoint for Prometheus scrapes and health probes: GET /metrics,
/// /healthz (200 while the process serves), /readyz (200 once ready, 503 before and while
/// draining). One thread serves every connection at once with `poll(2)`: each connection has a
/// whole-request deadline (`requestDeadlineMs` from accept to the last byte of the answer),
/// so a peer that trickles its request (or never reads the answer) holds one slot until then and
/// never delays anyone else's probe. At most `maxConnections` are open; past that the oldest is
/// closed. (FlyingFox, the one small HTTP server among our packages, bounds the handler's time,
/// not a slow request's, so this stays ~100 lines of our own.)
public final class MetricsEndpoint: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    private let listener: Int32
    private let render: @Sendable () -> String
    private let ready = Atomic<Bool>(false)
    private let stopped = Atomic<Bool>(false)
    /// The bound port (useful when asked for port 0).
    public let port: UInt16

    /// Binds `host:port` (IPv4 literal). `render` produces the exposition text.
    public init(host: String, port: UInt16, render: @escaping @Sendable () -> String) throws(Failure) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "metrics socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else {
            close(fd)
            throw Failure(description: "metrics address '\(host)' is not an IPv4 literal")
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw Failure(description: "metrics endpoint \(host):\(port): \(e)")
        }
        var actual = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)  // a connection reset after poll never blocks accept
        listener = fd
        self.port = UInt16(bigEndian: actual.sin_port)
        self.render = render
    }

    public func setReady(_ value: Bool) { ready.store(value, ordering: .relaxed) }

    public static let requestDeadlineMs = 2000
    public static let maxConnections = 64

    /// One connection being served: what it sent so far, the answer once known, its deadline.
    private struct Connection {
        let fd: Int32
        let deadlineNs: UInt64
        var request: [UInt8] = []
        var answer: [UInt8]? = nil
        var sent = 0
    }

    /// Serves until `stop()`; run it on a dedicated thread.
    public func serve() {
        ProcessTitle.nameThread("metrics")
        var open: [Connection] = []
        defer { for c in open { close(c.fd) } }
        while !stopped.load(ordering: .relaxed) {
            let now = mro_now_ns()
            // Past the deadline: closed, whatever state it is in.
            open.removeAll { c in
                guard now >= c.deadlineNs else { return false }
                close(c.fd)
                return true
            }
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            fds += open.map { pollfd(fd: $0.fd, events: Int16($0.answer == nil ? POLLIN : POLLOUT), revents: 0) }
            let wait = open.map { Int(($0.deadlineNs &- now) / 1_000_000) + 1 }.min() ?? 1000
            let n = poll(&fds, nfds_t(fds.count), Int32(min(wait, 1000)))
            if n < 0 {
                if errno == EINTR { continue }
                break
            }
            if n == 0 { continue }
            var finished: Set<Int32> = []
            for (i, p) in fds.enumerated().dropFirst() where p.revents != 0 {
                if step(&open[i - 1], revents: p.revents) { finished.insert(open[i - 1].fd) }
            }
            open.removeAll { c in
                guard finished.contains(c.fd) else { return false }
                close(c.fd)
                return true
            }
            if fds[0].revents & Int16(POLLIN) != 0 {
                let fd = accept(listener, nil, nil)
                if fd >= 0 {
                    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                    if open.count >= Self.maxConnections { close(open.removeFirst().fd) }
                    open.append(Connection(fd: fd, deadlineNs: mro_now_ns() + UInt64(Self.requestDeadlineMs) * 1_000_000))
                } else if errno == EBADF || errno == EINVAL {
                    break  // stop() closed the listener
                }
            }
        }
    }

    public func stop() {
        stopped.store(true, ordering: .relaxed)
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    /// Reads or writes what the socket allows; true when the connection is done.
    private func step(_ c: inout Connection, revents: Int16) -> Bool {
        if c.answer == nil {
            var chunk = [UInt8](repeating: 0, count: 2048)
            let n = chunk.withUnsafeMutableBytes { read(c.fd, $0.baseAddress!, $0.count) }
            if n < 0 { return errno != EAGAIN && errno != EINTR }
            if n == 0 && c.request.isEmpty { return true }
            c.request += chunk[..<max(n, 0)]
            // The request line is all we need; a peer that closes early gets an answer to
            // what it sent, one that sends 4 KiB without a line end gets 400.
            guard n == 0 || c.request.contains(10) || c.request.count >= 4096 else { return false }
            c.answer = answer(to: c.request)
            return false
        }
        let total = c.answer!.count
        let n = c.answer!.withUnsafeBytes { send(c.fd, $0.baseAddress! + c.sent, total - c.sent, Int32(MSG_NOSIGNAL)) }
        if n < 0 { return errno != EAGAIN && errno != EINTR }
        c.sent += n
        return c.sent >= total
    }

    private func answer(to request: [UInt8]) -> [UInt8] {
        let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = line.split(separator: " ")
        let (status, body): (String, String)
        if !request.contains(10) && request.count >= 4096 {
            (status, body) = ("400 Bad Request", "request line too long\n")
        } else if parts.count < 2 || parts[0] != "GET" {
            (status, body) = ("405 Method Not Allowed", "only GET\n")
        } else {
            switch parts[1].split(separator: "?").first.map(String.init) ?? "" {
            case "/metrics": (status, body) = ("200 OK", render())
            case "/healthz": (status, body) = ("200 OK", "ok\n")
            case "/readyz":
                (status, body) = ready.load(ordering: .relaxed) ? ("200 OK", "ready\n") : ("503 Service Unavailable", "not ready\n")
            default: (status, body) = ("404 Not Found", "unknown path\n")
            }
        }
        let bytes = Array(body.utf8)
        let head = "HTTP/1.1 \(status)\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: \(bytes.count)\r\nConnection: close\r\n\r\n"
        return Array(head.utf8) + bytes
    }
}
