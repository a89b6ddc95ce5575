import CMoERouterWire
import CZMQ
import Dispatch
import Glibc
import Logging
@testable import MoERouterServer
import MoERouterZMQ
import MoERouting
import Synchronization
import Testing

/// The I/O loop's dispatch on real sockets over inproc: the test plays the tcp relay (the one
/// internal peer whose messages carry a client envelope), so requests reach the loop exactly as
/// relayed tcp clients' do.
@Suite struct IOLoopTests {
    /// An I/O loop serving on its own thread, and the relay socket the test talks through.
    final class Harness: @unchecked Sendable {
        let context = ZMQContext()
        let endpoint = "inproc://ioloop-test-\(UInt32.random(in: 0...UInt32.max))"
        let core: RequestCore
        let state: DaemonState
        let relay: ZMQSocket
        private let stopServing = Atomic<Bool>(false)
        private let served = DispatchSemaphore(value: 0)
        private let drainNow = DispatchSemaphore(value: 0)
        private var thread: ServiceThread?

        init(configure: (inout ServerConfig) -> Void = { _ in }) throws {
            (core, state) = try makeCore(["deepseek-v3"], configure: configure)
            let bound = DispatchSemaphore(value: 0)
            relay = try ZMQSocket(context, type: ZMQ_DEALER)
            try relay.set(ZMQ_ROUTING_ID, IOLoop.tcpRelayID)
            try relay.set(ZMQ_RCVTIMEO, Int32(5000))
            thread = ServiceThread(name: "test-ioloop") { [self] in
                do {
                    let front = try ZMQSocket(context, type: ZMQ_ROUTER)
                    try front.bind(endpoint)
                    let monitor = try ZMQSocket(context, type: ZMQ_PAIR)
                    let pool = WorkerPool(count: 1, context: context, front: endpoint, core: core, logger: Logger(label: "test"))
                    let daemon = IOLoop.Daemon(core: core, connections: state.registry, clients: state.clients,
                                               stats: state.stats, queueDepth: state.config.queueDepth)
                    var loop = try IOLoop(daemon: daemon, front: front, monitor: monitor, pool: pool, servesTCP: true,
                                          logger: Logger(label: "test"))
                    bound.signal()
                    loop.serve { stopServing.load(ordering: .relaxed) }
                    served.signal()
                    drainNow.wait()
                    loop.drain(timeoutMs: 1000)
                    pool.stop()
                    loop.flushResults(timeoutMs: 1000)
                    front.close()
                    monitor.close()
                } catch {
                    Issue.record("loop setup: \(error)")
                    bound.signal()
                }
            }
            bound.wait()
            try relay.connect(endpoint)
        }

        /// Sends `frames` as relayed client `client` and returns the reply's frames (nil: none
        /// within the socket's receive timeout).
        func exchange(_ frames: [[UInt8]], client: [UInt8] = [0xC1]) throws -> [ZMQMessage]? {
            try send(frames, client: client)
            return try receive(client: client)
        }

        func send(_ frames: [[UInt8]], client: [UInt8] = [0xC1]) throws {
            try relay.sendMultipart(([client] + frames).map { ZMQMessage.copying($0) })
        }

        func receive(client: [UInt8]) throws -> [ZMQMessage]? {
            guard let parts = try? relay.receiveMultipart() else { return nil }
            #expect(parts.first?.array == client, "the reply goes back on the client's envelope")
            return Array(parts.dropFirst())
        }

        /// Ends `serve`; the loop then waits for `drain()`.
        func stopServingLoop() {
            stopServing.store(true, ordering: .relaxed)
            served.wait()
        }

        /// Drains (running `whileDraining` meanwhile), stops the workers and joins the loop.
        func drainAndJoin(whileDraining: () -> Void = {}) {
            drainNow.signal()
            whileDraining()
            thread?.join()
            relay.close()
            context.shutdown()
        }
    }

    static func header(_ frame: ZMQMessage) -> moe_resp_header {
        WireBytes.load(moe_resp_header.self, from: frame.bytes)
    }

    @Test func answersSmallRequestsOnTheLoopAndCountsThemOnce() throws {
        let h = try Harness()
        let reply = try #require(try h.exchange([WireRequest.empty(.ping, id: 11)]))
        let head = Self.header(reply[0])
        #expect(head.status == WireStatus.ok.rawValue && head.op == WireOp.ping.rawValue && head.request_id == 11)
        let bad = try #require(try h.exchange([[1, 2, 3]]))
        #expect(Self.header(bad[0]).status == WireStatus.malformed.rawValue)
        #expect(h.state.stats.requests.value == 2)
        #expect(h.state.stats.errors.value == 1)
        h.stopServingLoop()
        h.drainAndJoin()
    }

    @Test func largeRoutesGoThroughAWorkerAndComeBackOnce() throws {
        let h = try Harness { $0.inlineTokens = 2 }
        let tokens = 64
        let logits = WireRequest.logits((0..<tokens * 256).map { Float($0 % 97) / 10 })
        let reply = try #require(try h.exchange(WireRequest.inlineRoute(tokens: tokens, experts: 256, topK: 8, input: logits, id: 5)))
        #expect(Self.header(reply[0]).status == WireStatus.ok.rawValue && Self.header(reply[0]).request_id == 5)
        #expect(reply.count == 3 && reply[1].count == tokens * 8 * 4 && reply[2].count == tokens * 8 * 4)
        let (direct, _) = { () -> (Reply, Void) in
            let r = TestRequest(WireRequest.inlineRoute(tokens: tokens, experts: 256, topK: 8, input: logits))
            guard case .request(let q) = h.core.decode(r, from: r) else { return (Reply(op: 0, requestID: 0), ()) }
            return (h.core.answer(q), ())
        }()
        #expect(reply[2].array == direct.frames[1].array, "the worker's ids are the core's")
        #expect(h.state.stats.requests.value == 1, "counted once, by the worker")
        #expect(h.state.stats.routes.value == 1)
        #expect(h.state.stats.queued.load(ordering: .relaxed) == 0)
        h.stopServingLoop()
        h.drainAndJoin()
    }

    @Test func drainingAnswersShuttingDown() throws {
        let h = try Harness()
        h.stopServingLoop()
        try h.send([WireRequest.empty(.ping, id: 3)])
        h.drainAndJoin {
            let reply = (try? h.receive(client: [0xC1])) ?? nil
            #expect(reply?.first.map { Self.header($0).status } == WireStatus.shuttingDown.rawValue)
        }
    }

    @Test func messagesFromUnknownInternalPeersAreDropped() throws {
        let h = try Harness()
        let stranger = try ZMQSocket(h.context, type: ZMQ_DEALER)
        try stranger.set(ZMQ_ROUTING_ID, [0x00, 0x78])
        try stranger.set(ZMQ_RCVTIMEO, Int32(300))
        try stranger.connect(h.endpoint)
        try stranger.sendMultipart([ZMQMessage.copying(WireRequest.empty(.ping))])
        #expect((try? stranger.receive()) == nil, "no answer to a peer without credentials")
        // The loop still serves.
        #expect(try h.exchange([WireRequest.empty(.ping)]) != nil)
        #expect(h.state.stats.requests.value == 1)
        stranger.close()
        h.stopServingLoop()
        h.drainAndJoin()
    }
}
