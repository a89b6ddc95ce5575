import CZMQ
import Glibc
import Logging
import MoERouterZMQ
import Synchronization

/// Serves the optional tcp endpoint without a second socket in the I/O thread's loop: a relay
/// thread moves messages between the tcp ROUTER and a DEALER connected to the I/O thread's
/// ROUTER. A tcp request reaches the I/O thread as [relay id, client id, payload...] and its
/// answer, sent back with that envelope, leaves through the relay to the client. Shared memory is
/// refused to these requests (`ClientKey.Transport.tcp`).
///
/// Answers are never held up by requests: the relay takes every answer the I/O thread sent
/// first, and hands requests on without blocking — when the I/O thread's pipe is full, it keeps
/// the one request in hand and stops reading tcp peers (their own pipes and sockets then push
/// back on them) until the pipe has room. So the pipe the I/O thread answers into always drains,
/// and a flood from one peer delays others' requests but loses no answer. An answer for a peer
/// whose own pipe is full (it reads slowly: `ZMQ_ROUTER_MANDATORY` says so) waits in that peer's
/// backlog, in order, and is retried every few milliseconds, without holding up anyone else;
/// past `maxBacklogPerPeer` (or `maxBacklog` in all) answers are dropped and counted, as are
/// answers to a peer that left (`droppedAnswers`, logged). Large inline answers stay counted by
/// the reply budget while they wait, so a peer that never reads gets BUSY, not memory.
final class TCPRelay: @unchecked Sendable {
    private let thread: ServiceThread
    private let dropped = DropCounter()

    /// Answers dropped because their peer left or did not read.
    var droppedAnswers: UInt64 { dropped.count.load(ordering: .relaxed) }

    final class DropCounter: Sendable {
        let count = Atomic<UInt64>(0)

        func note(_ why: String, _ logger: Logger) {
            let n = count.add(1, ordering: .relaxed).newValue
            if n.nonzeroBitCount == 1 {  // 1, 2, 4, 8, ...: logged, never a flood of lines
                logger.warning("tcp: \(n) answer(s) dropped so far: their peer left or does not read (\(why))")
            }
        }
    }

    /// Binds `endpoint` on the calling thread (so a bad address fails start-up), then hands
    /// both sockets to the relay thread, which owns them until the context shuts down.
    init(context: ZMQContext, endpoint: String, front: String, curve: CurveKeys?, logger: Logger,
         configure: (ZMQSocket) throws(ZMQError) -> Void) throws(ZMQError) {
        let tcp = try ZMQSocket(context, type: ZMQ_ROUTER)
        try tcp.set(ZMQ_ZAP_DOMAIN, ZAPHandler.tcpDomain)
        if let curve {  // the ZAP handler admits only the allow-list's public keys
            try tcp.set(ZMQ_CURVE_SERVER, Int32(1))
            try tcp.set(ZMQ_CURVE_SECRETKEY, curve.secretKey)
        }
        try configure(tcp)
        try tcp.set(ZMQ_ROUTER_MANDATORY, Int32(1))  // a full or vanished peer is an error, not a silent drop
        try tcp.bind(endpoint)
        let inner = try ZMQSocket(context, type: ZMQ_DEALER)
        try inner.set(ZMQ_ROUTING_ID, IOLoop.tcpRelayID)
        try configure(inner)
        try inner.connect(front)
        let sockets = SocketPair(tcp: tcp, inner: inner)
        thread = ServiceThread(name: "moe-tcp-relay") { [dropped] in
            Self.relay(sockets, dropped: dropped, logger: logger)
            sockets.tcp.close()
            sockets.inner.close()
        }
    }

    static let maxBacklogPerPeer = 10_000
    static let maxBacklog = 100_000

    /// Answers waiting for peers whose pipes are full, per peer (routing id), in order.
    private struct Backlog {
        var byPeer: [[UInt8]: [[ZMQMessage]]] = [:]
        var count = 0

        /// Sends `answer` now, or queues it behind the peer's earlier ones.
        mutating func deliver(_ answer: [ZMQMessage], on tcp: ZMQSocket, _ dropped: DropCounter, _ logger: Logger) throws(ZMQError) {
            let peer = answer[0].array
            if byPeer[peer] == nil {
                switch try Self.send(answer, on: tcp) {
                case .sent: return
                case .gone(let why): return dropped.note(why, logger)
                case .full: break
                }
            }
            guard byPeer[peer, default: []].count < TCPRelay.maxBacklogPerPeer, count < TCPRelay.maxBacklog else {
                return dropped.note("\(byPeer[peer]?.count ?? 0) answers already wait for it", logger)
            }
            byPeer[peer, default: []].append(answer)
            count += 1
        }

        /// Sends what each waiting peer's pipe takes now.
        mutating func flush(on tcp: ZMQSocket, _ dropped: DropCounter, _ logger: Logger) throws(ZMQError) {
            for peer in Array(byPeer.keys) {
                while let next = byPeer[peer]?.first {
                    let outcome = try Self.send(next, on: tcp)
                    if case .full = outcome { break }
                    if case .gone(let why) = outcome {
                        let lost = byPeer[peer]?.count ?? 0
                        for _ in 0..<lost { dropped.note(why, logger) }
                        count -= lost
                        byPeer[peer] = nil
                        break
                    }
                    byPeer[peer]!.removeFirst()
                    count -= 1
                    if byPeer[peer]!.isEmpty { byPeer[peer] = nil }
                }
            }
        }

        enum Outcome { case sent, full, gone(String) }

        static func send(_ answer: [ZMQMessage], on tcp: ZMQSocket) throws(ZMQError) -> Outcome {
            do { return try tcp.trySendMultipart(answer) ? .sent : .full } catch {
                if error.isTerminated { throw error }
                return .gone("\(error)")  // EHOSTUNREACH: the peer left
            }
        }
    }

    /// Runs until the context shuts down (ETERM).
    private static func relay(_ s: SocketPair, dropped: DropCounter, logger: Logger) {
        var held: [ZMQMessage]?  // a request the I/O thread's pipe had no room for yet
        var backlog = Backlog()
        do throws(ZMQError) {
            while true {
                let events = try ZMQSocket.poll([(s.inner, Int16(ZMQ_POLLIN) | (held == nil ? 0 : Int16(ZMQ_POLLOUT))),
                                                 (s.tcp, held == nil ? Int16(ZMQ_POLLIN) : 0)],
                                                timeoutMs: backlog.count > 0 ? 5 : -1)
                // Answers first: those that waited, then all that are there.
                if backlog.count > 0 { try backlog.flush(on: s.tcp, dropped, logger) }
                if events[0] & Int16(ZMQ_POLLIN) != 0 {
                    while let answer = try? s.inner.receiveMultipart(dontWait: true) {
                        try backlog.deliver(answer, on: s.tcp, dropped, logger)
                    }
                }
                if let request = held {
                    guard try s.inner.trySendMultipart(request) else { continue }
                    held = nil
                }
                // Requests: as many as the I/O thread's pipe takes, without blocking.
                for _ in 0..<64 {
                    guard let request = try? s.tcp.receiveMultipart(dontWait: true) else { break }
                    if try !s.inner.trySendMultipart(request) {
                        held = request
                        break
                    }
                }
            }
        } catch {
            if !error.isTerminated { logger.error("tcp relay stopped: \(error)") }
        }
    }

    /// Waits for the relay thread (after the context shut down).
    func join() { thread.join() }

    /// The two sockets, handed to the relay thread, which alone uses them from then on.
    private struct SocketPair: @unchecked Sendable {
        let tcp: ZMQSocket
        let inner: ZMQSocket
    }
}
