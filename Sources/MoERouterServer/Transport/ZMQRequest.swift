import CMoERouterdOS
import MoERouterZMQ

/// A request as the ROUTER socket delivered it: the envelope to answer on, the payload frames and
/// who sent it. Feeds the request core as its origin and its frames.
final class ZMQRequest: RequestOrigin, RequestFrames, @unchecked Sendable {
    let transport: ClientKey.Transport
    /// Every frame as received: the envelope (the routing id, for tcp also the relayed client's,
    /// plus an empty delimiter when the client is a REQ socket), then the payload.
    let parts: [ZMQMessage]
    /// Where the payload starts in `parts`.
    private let payloadStart: Int
    /// Which part holds the client's routing id.
    private let clientIDPart: Int
    let peer: PeerCredentials?
    let receivedNs: UInt64

    init(transport: ClientKey.Transport, parts: [ZMQMessage], payloadStart: Int, clientIDPart: Int, peer: PeerCredentials?) {
        self.transport = transport
        self.parts = parts
        self.payloadStart = payloadStart
        self.clientIDPart = clientIDPart
        self.peer = peer
        receivedNs = mro_now_ns()
    }

    /// The client (connection) that sent it; only built when an op needs it.
    lazy var client = ClientKey(transport: transport, routingID: parts[clientIDPart].array, connection: peer?.connection ?? 0)
    var routingID: ZMQMessage { parts[clientIDPart] }
    var envelope: ArraySlice<ZMQMessage> { parts[..<payloadStart] }
    var frameCount: Int { parts.count - payloadStart }
    func frame(_ i: Int) -> UnsafeRawBufferPointer { parts[payloadStart + i].bytes }
    /// The file descriptor of the connection the request arrived on (-1 when it had no payload).
    var connectionFD: Int32 { frameCount > 0 ? parts[payloadStart].sourceFD : -1 }
}
