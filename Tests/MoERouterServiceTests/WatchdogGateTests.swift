import Testing
@testable import MoERouterService

struct WatchdogGateTests {
    @Test func pingsOnlyWhileTheLoopTurns() {
        var gate = WatchdogGate(heartbeat: 10)
        var decisions: [Bool] = []
        for beat: UInt64 in [14, 14, 14, 15] { decisions.append(gate.shouldPing(heartbeat: beat, draining: false)) }
        // The loop stalls at 14: the pings stop until the heartbeat moves again.
        #expect(decisions == [true, false, false, true])
        #expect(!gate.stalled)
        _ = gate.shouldPing(heartbeat: 15, draining: false)
        #expect(gate.stalled)
    }

    @Test func drainingKeepsPinging() {
        var gate = WatchdogGate(heartbeat: 3)
        let ping = gate.shouldPing(heartbeat: 3, draining: true)
        #expect(ping)
    }
}
