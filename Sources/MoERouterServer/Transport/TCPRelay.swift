import MoERouterZMQ
import CZMQ

/// Serves the optional tcp endpoint without a second socket in the I/O thread's loop: a relay
/// thread runs libzmq's `zmq_proxy` between the tcp ROUTER and a DEALER connected to the I/O
/// thread's ROUTER. A tcp request reaches the I/O thread as [relay id, client id, payload...]
/// and its answer, sent back with that envelope, leaves through the relay to the client.
/// Shared memory is refused to these requests (`IncomingRequest.transport == .tcp`).
final class TCPRelay: @unchecked Sendable {
    private let thread: ServiceThread

    /// Binds `endpoint` on the calling thread (so a bad address fails start-up), then hands
    /// both sockets to the relay thread, which owns them until the context shuts down.
    init(context: ZMQContext, endpoint: String, front: String, configure: (ZMQSocket) throws(ZMQError) -> Void) throws(ZMQError) {
        let tcp = try ZMQSocket(context, type: ZMQ_ROUTER)
        try tcp.set(ZMQ_ZAP_DOMAIN, ZAPHandler.tcpDomain)
        try configure(tcp)
        try tcp.bind(endpoint)
        let inner = try ZMQSocket(context, type: ZMQ_DEALER)
        try inner.set(ZMQ_ROUTING_ID, IOLoop.tcpRelayID)
        try configure(inner)  // the same high-water marks: a full relay pushes back on tcp peers
        try inner.connect(front)
        let sockets = SocketPair(tcp: tcp, inner: inner)
        thread = ServiceThread(name: "moe-tcp-relay") {
            // Returns when the context shuts down (ETERM).
            ZMQSocket.proxy(sockets.tcp, sockets.inner)
            sockets.tcp.close()
            sockets.inner.close()
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
