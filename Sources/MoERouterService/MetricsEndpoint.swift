import CMoERouterdOS
import Glibc
import Synchronization

/// A minimal HTTP/1.1 endpoint for Prometheus scrapes and health probes: GET /metrics,
/// /healthz (200 while the process serves), /readyz (200 once ready, 503 before and while
/// draining). One connection at a time on its own thread; meant for loopback.
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
        listener = fd
        self.port = UInt16(bigEndian: actual.sin_port)
        self.render = render
    }

    public func setReady(_ value: Bool) { ready.store(value, ordering: .relaxed) }

    /// Serves until `stop()`; run it on a dedicated thread.
    public func serve() {
        ProcessTitle.nameThread("metrics")
        while !stopped.load(ordering: .relaxed) {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                break
            }
            handle(client)
            close(client)
        }
    }

    public func stop() {
        stopped.store(true, ordering: .relaxed)
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private func handle(_ fd: Int32) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 4096)
        var used = 0
        while used < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + used, $0.count - used) }
            if n <= 0 { break }
            used += n
            if buffer[..<used].contains(10) { break } // the request line is all we need
        }
        let line = String(decoding: buffer[..<used].prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = line.split(separator: " ")
        let (status, body): (String, String)
        if parts.count < 2 || parts[0] != "GET" {
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
        writeAll(fd, Array(head.utf8) + bytes)
    }

    private func writeAll(_ fd: Int32, _ data: [UInt8]) {
        var off = 0
        while off < data.count {
            let n = data.withUnsafeBytes { send(fd, $0.baseAddress! + off, data.count - off, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            off += n
        }
    }
}
