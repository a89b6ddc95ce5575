/// Decides whether a watchdog ping may go out: only when the serving loop's heartbeat counter
/// moved since the previous decision, so a stalled loop stops the pings and the service manager
/// restarts the daemon. While draining the loop ends on purpose; pings continue until exit.
public struct WatchdogGate: Sendable {
    private var lastBeat: UInt64
    /// Whether the previous decision withheld a ping (for logging the stall once).
    public private(set) var stalled = false

    public init(heartbeat: UInt64) { lastBeat = heartbeat }

    public mutating func shouldPing(heartbeat: UInt64, draining: Bool) -> Bool {
        defer { lastBeat = heartbeat }
        stalled = heartbeat == lastBeat && !draining
        return !stalled
    }
}
