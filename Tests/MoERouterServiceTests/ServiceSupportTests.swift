import Foundation
import Glibc
import Testing
@testable import MoERouterService

@Suite(.serialized) struct ServiceSupportTests {
    /// Plays systemd's side of sd_notify: a datagram socket named by NOTIFY_SOCKET.
    @Test func notifierSendsDatagrams() throws {
        let path = "/tmp/moe-notify-\(getpid()).sock"
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd); unlink(path) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in
            for (i, b) in path.utf8.enumerated() { buf[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(rc == 0)
        setenv("NOTIFY_SOCKET", path, 1)
        defer { unsetenv("NOTIFY_SOCKET") }
        let n = SystemdNotifier()
        #expect(n.isActive)
        n.ready(status: "3 layers")
        var buf = [UInt8](repeating: 0, count: 256)
        let got = recv(fd, &buf, buf.count, 0)
        #expect(String(decoding: buf[..<max(0, got)], as: UTF8.self) == "READY=1\nSTATUS=3 layers")
    }

    @Test func notifierIsSilentOutsideSystemd() {
        unsetenv("NOTIFY_SOCKET")
        #expect(!SystemdNotifier().notify("READY=1"))
    }

    @Test func watchdogIntervalIsHalfOfWatchdogUsec() {
        setenv("WATCHDOG_USEC", "4000000", 1)
        defer { unsetenv("WATCHDOG_USEC") }
        #expect(SystemdNotifier().watchdogInterval == .seconds(2))
        setenv("WATCHDOG_PID", "1", 1)
        defer { unsetenv("WATCHDOG_PID") }
        #expect(SystemdNotifier().watchdogInterval == nil) // meant for another process
    }

    @Test func pidFileIsExclusive() throws {
        let path = "/tmp/moe-pid-\(getpid()).pid"
        let pf = try PidFile(path: path)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.trimmingCharacters(in: .whitespacesAndNewlines) == "\(getpid())")
        pf.remove()
        #expect(access(path, F_OK) != 0)
    }

    @Test func metricsEndpointServesScrapesAndProbes() throws {
        let endpoint = try MetricsEndpoint(host: "127.0.0.1", port: 0) { "moe_router_up 1\n" }
        let thread = Thread { endpoint.serve() }
        thread.start()
        defer { endpoint.stop() }
        func get(_ path: String) -> String {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = endpoint.port.bigEndian
            inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
            _ = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            let req = Array("GET \(path) HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
            _ = send(fd, req, req.count, 0)
            var out = [UInt8]()
            var buf = [UInt8](repeating: 0, count: 1024)
            while true {
                let n = recv(fd, &buf, buf.count, 0)
                if n <= 0 { break }
                out += buf[..<n]
            }
            return String(decoding: out, as: UTF8.self)
        }
        #expect(get("/metrics").hasSuffix("moe_router_up 1\n"))
        #expect(get("/healthz").hasPrefix("HTTP/1.1 200"))
        #expect(get("/readyz").hasPrefix("HTTP/1.1 503"))
        endpoint.setReady(true)
        #expect(get("/readyz").hasPrefix("HTTP/1.1 200"))
        #expect(get("/nope").hasPrefix("HTTP/1.1 404"))
    }
}
