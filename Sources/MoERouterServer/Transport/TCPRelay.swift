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
/// and a flood from one peer delays others' requests but loses no answer. An answer to a peer
/// that does not read (its pipe full: `ZMQ_ROUTER_MANDATORY`) or that left is dropped and
/// counted (`droppedAnswers`, logged): it could only be kept by letting one peer pin memory.
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

    /// Runs until the context shuts down (ETERM).
    private static func relay(_ s: SocketPair, dropped: DropCounter, logger: Logger) {
        var held: [ZMQMessage]?  // a request the I/O thread's pipe had no room for yet
        do throws(ZMQError) {
            while true {
                let events = try ZMQSocket.poll([(s.inner, Int16(ZMQ_POLLIN) | (held == nil ? 0 : Int16(ZMQ_POLLOUT))),
                                                 (s.tcp, held == nil ? Int16(ZMQ_POLLIN) : 0)], timeoutMs: -1)
                // Answers first, all that are there.
                if events[0] & Int16(ZMQ_POLLIN) != 0 {
                    while let answer = try? s.inner.receiveMultipart(dontWait: true) {
                        do {
                            if try !s.tcp.trySendMultipart(answer) { dropped.note("its pipe is full", logger) }
                        } catch {
                            if error.isTerminated { throw error }
                            dropped.note("\(error)", logger)
                        }
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
