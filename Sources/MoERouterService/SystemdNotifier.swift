import CMoERouterdOS
import Foundation

/// The sd_notify datagram protocol, without libsystemd: READY, STATUS, WATCHDOG, STOPPING.
/// Every call is a no-op outside systemd (no NOTIFY_SOCKET).
public struct SystemdNotifier: Sendable {
    public init() {}

    /// Whether a service manager listens ($NOTIFY_SOCKET is set).
    public var isActive: Bool { ProcessInfo.processInfo.environment["NOTIFY_SOCKET"]?.isEmpty == false }

    /// How often to send WATCHDOG=1: half of $WATCHDOG_USEC, when it is set for this process.
    public var watchdogInterval: Duration? {
        let env = ProcessInfo.processInfo.environment
        guard let usec = env["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0 else { return nil }
        if let pid = env["WATCHDOG_PID"].flatMap(Int32.init), pid != getpid() { return nil }
        return .microseconds(Int64(usec / 2))
    }

    @discardableResult
    public func notify(_ state: String) -> Bool { mro_sd_notify(state) > 0 }

    public func ready(status: String) { notify("READY=1\nSTATUS=\(status)") }
    public func status(_ text: String) { notify("STATUS=\(text)") }
    public func watchdog() { notify("WATCHDOG=1") }
    public func stopping(status: String) { notify("STOPPING=1\nSTATUS=\(status)") }
    public func reloading() { notify("RELOADING=1") }
}
