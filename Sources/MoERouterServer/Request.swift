import CMoERouterWire
import CMoERouterdOS

/// One request as it arrived: the ROUTER envelope to answer on, the payload frames and who sent
/// it. Moves from the I/O thread to at most one worker.
final class IncomingRequest: @unchecked Sendable {
    let transport: ClientKey.Transport
    /// Every frame as received: the envelope (the routing id, for tcp also the relayed client's,
    /// plus an empty delimiter when the client is a REQ socket), then the payload.
    let parts: [ZMQMessage]
    /// Where the payload starts in `parts`.
    let payloadStart: Int
    /// Which part holds the client's routing id.
    private let clientIDPart: Int
    let peer: PeerCredentials?
    let receivedNs: UInt64
    /// Set by `RequestParser.parse`.
    var header = moe_req_header()
    var deadlineNs: UInt64 = 0

    init(transport: ClientKey.Transport, parts: [ZMQMessage], payloadStart: Int, clientIDPart: Int, peer: PeerCredentials?) {
        self.transport = transport
        self.parts = parts
        self.payloadStart = payloadStart
        self.clientIDPart = clientIDPart
        self.peer = peer
        receivedNs = mro_now_ns()
    }

    /// The client (connection) that sent it; only built when an op needs it.
    lazy var client = ClientKey(transport: transport, routingID: parts[clientIDPart].array)
    var envelope: ArraySlice<ZMQMessage> { parts[..<payloadStart] }
    var frameCount: Int { parts.count - payloadStart }
    /// Payload frame `i` (0 = the header frame).
    func frame(_ i: Int) -> ZMQMessage { parts[payloadStart + i] }
    /// The file descriptor of the connection the request arrived on (-1 when it had no payload).
    var connectionFD: Int32 { frameCount > 0 ? frame(0).sourceFD : -1 }

    var op: UInt16 { header.op }
    var requestID: UInt64 { header.request_id }

    /// The op body (frame 0 after the header); valid after `parse`.
    var body: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: frame(0).bytes[MemoryLayout<moe_req_header>.size...])
    }

    func failure(_ f: RequestFailure, body: [UInt8] = []) -> Reply {
        Reply(failure: f, op: header.op, requestID: header.request_id, body: body)
    }
}

/// Checks the envelope-independent framing of a request: header, version, op, body size.
enum RequestParser {
    static let headerSize = MemoryLayout<moe_req_header>.size

    /// The body size each op requires.
    static func bodySize(_ op: WireOp) -> Int {
        switch op {
        case .hello: MemoryLayout<moe_hello_req>.size
        case .registerShm: MemoryLayout<moe_register_req>.size
        case .unregisterShm: MemoryLayout<moe_unregister_req>.size
        case .route: MemoryLayout<moe_route_req>.size
        case .listLayers, .stats, .ping: 0
        }
    }

    /// Parses the header into `request` or returns the error reply.
    static func parse(_ request: IncomingRequest, defaultDeadlineMs: UInt32, maxMessageBytes: Int) -> Reply? {
        guard request.frameCount > 0, request.frame(0).count >= headerSize else {
            return Reply(op: 0, requestID: 0, status: .malformed,
                         message: "frame 0 holds \(request.frameCount > 0 ? request.frame(0).count : 0) bytes; a request starts with a \(headerSize)-byte header")
        }
        let first = request.frame(0)
        let h = WireBytes.load(moe_req_header.self, from: first.bytes)
        request.header = h
        let fail = { (s: WireStatus, m: String) in Reply(op: h.op, requestID: h.request_id, status: s, message: m) }
        guard h.magic == MOE_PROTOCOL_MAGIC else {
            return fail(.badMagic, "magic = 0x\(String(h.magic, radix: 16)), expected 0x\(String(MOE_PROTOCOL_MAGIC, radix: 16)) (\"MOER\")")
        }
        guard h.version == MOE_PROTOCOL_VERSION else {
            return fail(.badVersion, "version = \(h.version); this daemon speaks protocol \(MOE_PROTOCOL_VERSION)")
        }
        guard let op = WireOp(rawValue: h.op) else { return fail(.unknownOp, "op = \(h.op) is not an operation") }
        guard h.reserved == 0 else { return fail(.badField, "header.reserved = \(h.reserved), must be 0") }
        var total = 0
        for i in 0..<request.frameCount { total += request.frame(i).count }
        guard total <= maxMessageBytes else {
            return fail(.tooLarge, "request holds \(total) bytes, max_message_bytes = \(maxMessageBytes)")
        }
        guard Int(h.body_size) == first.count - headerSize else {
            return fail(.malformed, "body_size = \(h.body_size) but frame 0 carries \(first.count - headerSize) body bytes")
        }
        guard Int(h.body_size) == bodySize(op) else {
            return fail(.malformed, "body_size = \(h.body_size); \(op) takes a \(bodySize(op))-byte body")
        }
        if op != .route && request.frameCount != 1 {
            return fail(.malformed, "\(op) takes 1 frame, got \(request.frameCount)")
        }
        let ms = h.deadline_ms == 0 ? defaultDeadlineMs : h.deadline_ms
        request.deadlineNs = request.receivedNs + UInt64(ms) * 1_000_000
        return nil
    }
}
