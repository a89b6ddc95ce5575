import CMoERouterWire
import MoERouterZMQ
import MoERouting

/// A reply before encoding: status, message, a typed body and the extra frames (outputs, the
/// layer list's biases). Encoded once, by the transport that sends it.
struct Reply {
    /// The request's op code as it arrived (0 when its header was unreadable).
    var op: UInt16
    var requestID: UInt64
    var status: WireStatus
    var message: String
    var body: ReplyBody
    var frames: [ZMQMessage]

    init(op: UInt16, requestID: UInt64, status: WireStatus = .ok, message: String = "ok",
         body: ReplyBody = .none, frames: [ZMQMessage] = []) {
        self.op = op
        self.requestID = requestID
        self.status = status
        self.message = message
        self.body = body
        self.frames = frames
    }

    init(op: UInt16, requestID: UInt64, failure: RequestFailure, body: ReplyBody = .none) {
        self.init(op: op, requestID: requestID, status: failure.status, message: failure.message, body: body)
    }

    /// The successful answer to `request`.
    init(answering request: InboundRequest, message: String, body: ReplyBody = .none, frames: [ZMQMessage] = []) {
        self.init(op: request.op.rawValue, requestID: request.id, message: message, body: body, frames: frames)
    }

    init(refusing request: InboundRequest, _ failure: RequestFailure, body: ReplyBody = .none) {
        self.init(op: request.op.rawValue, requestID: request.id, failure: failure, body: body)
    }

    /// Frame 0 (header + body + message) followed by the extra frames.
    func encode() -> [ZMQMessage] { [encodeFirstFrame()] + frames }

    /// Frame 0: header + body + message (at most MOE_MAX_MESSAGE_TEXT bytes, cut at a UTF-8
    /// character boundary).
    func encodeFirstFrame() -> ZMQMessage {
        var message = message
        return body.withBytes { body in
            message.withUTF8 { utf8 in
                var textCount = min(utf8.count, Int(MOE_MAX_MESSAGE_TEXT))
                if textCount < utf8.count { while textCount > 0 && utf8[textCount] & 0xC0 == 0x80 { textCount -= 1 } }
                var header = moe_resp_header()
                header.magic = MOE_PROTOCOL_MAGIC
                header.version = UInt16(MOE_PROTOCOL_VERSION)
                header.op = op
                header.request_id = requestID
                header.status = status.rawValue
                header.body_size = UInt32(body.count)
                header.message_len = UInt16(textCount)
                let headerSize = MemoryLayout<moe_resp_header>.size
                let first = ZMQMessage.sized(headerSize + body.count + textCount)
                let out = first.mutableBytes
                withUnsafeBytes(of: header) { out.copyMemory(from: $0) }
                UnsafeMutableRawBufferPointer(rebasing: out[headerSize...]).copyMemory(from: body)
                UnsafeMutableRawBufferPointer(rebasing: out[(headerSize + body.count)...])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(utf8)[..<textCount]))
                return first
            }
        }
    }
}

/// The op body of a reply, one case per wire response struct.
enum ReplyBody {
    case none
    case hello(moe_hello_resp)
    case layers(moe_list_resp, [moe_layer_info])
    case registered(moe_register_resp)
    case unregistered(moe_unregister_resp)
    case route(RouteResult)
    case stats(moe_stats_resp)

    /// The wire bytes of the body.
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        switch self {
        case .none: body(UnsafeRawBufferPointer(start: nil, count: 0))
        case .hello(let v): withUnsafeBytes(of: v, body)
        case .layers(let head, let infos): (WireBytes.bytes(of: head) + infos.withUnsafeBytes(Array.init)).withUnsafeBytes(body)
        case .registered(let v): withUnsafeBytes(of: v, body)
        case .unregistered(let v): withUnsafeBytes(of: v, body)
        case .route(let r): withUnsafeBytes(of: r.wire, body)
        case .stats(let v): withUnsafeBytes(of: v, body)
        }
    }
}

/// What a ROUTE did: the fields of its wire response plus what the daemon counts about it.
struct RouteResult {
    var tokens: UInt64
    var topK = 0
    var nonFiniteCount = 0
    var firstNonFiniteToken: Int?
    var fallbackCast = false
    var computeNs: UInt64 = 0
    /// The addressed layer's id, and its name ("" when the id is unknown), for the metrics.
    var layerID: UInt32
    var layerName = ""
    /// Whether a buffer lived in a registered segment.
    var viaSharedMemory = false

    var wire: moe_route_resp {
        var r = moe_route_resp()
        r.tokens = tokens
        r.top_k = UInt32(topK)
        r.nonfinite_count = UInt64(nonFiniteCount)
        r.first_nonfinite_token = firstNonFiniteToken.map(UInt64.init) ?? UInt64.max
        r.fallback_cast = fallbackCast ? 1 : 0
        r.compute_ns = computeNs
        return r
    }
}
