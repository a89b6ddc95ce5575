import CMoERouterWire
import MoERouterZMQ
import MoERouting

/// A reply before encoding: status, message, a typed body and the extra frames (outputs, the
/// layer list's biases). Encoded once, by the transport that sends it.
struct Reply {
    /// The request's op code as it arrived (0 when its header was unreadable).
    var op: UInt16
    var requestID: UInt64
    /// The protocol version of the answer's header and bodies: the request's.
    var version: UInt16 = 1
    var status: WireStatus
    var message: String
    var body: ReplyBody
    var frames: [ZMQMessage]

    init(op: UInt16, requestID: UInt64, version: UInt16 = 1, status: WireStatus = .ok, message: String = "ok",
         body: ReplyBody = .none, frames: [ZMQMessage] = []) {
        self.op = op
        self.requestID = requestID
        self.version = version
        self.status = status
        self.message = message
        self.body = body
        self.frames = frames
    }

    init(op: UInt16, requestID: UInt64, version: UInt16 = 1, failure: RequestFailure, body: ReplyBody = .none) {
        self.init(op: op, requestID: requestID, version: version, status: failure.status, message: failure.message, body: body)
    }

    /// The successful answer to `request`.
    init(answering request: InboundRequest, message: String, body: ReplyBody = .none, frames: [ZMQMessage] = []) {
        self.init(op: request.op.rawValue, requestID: request.id, version: request.version, message: message, body: body,
                  frames: frames)
    }

    init(refusing request: InboundRequest, _ failure: RequestFailure, body: ReplyBody = .none) {
        self.init(op: request.op.rawValue, requestID: request.id, version: request.version, failure: failure, body: body)
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
                header.version = version
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

/// The op body of a reply, one case per wire response struct (version-2 extensions where the
/// request's version has them).
enum ReplyBody {
    case none
    // (The bodies of rare replies are boxed: a reply is moved several times on its way, and an
    // unboxed 230-byte STATS body would make every ROUTE reply that large.)
    indirect case hello(moe_hello_resp, ext: moe_hello_ext?)
    case layers(moe_list_resp, [moe_layer_info], ext: [moe_layer_ext]?)
    case registered(moe_register_resp)
    case unregistered(moe_unregister_resp)
    case route(RouteResult)
    indirect case stats(moe_stats_resp, ext: moe_stats_ext?)
    case placement(moe_placement_resp)
    case load(moe_load_resp)
    case channel(moe_channel_open_resp)

    /// The wire bytes of the body.
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        switch self {
        case .none: body(UnsafeRawBufferPointer(start: nil, count: 0))
        case .hello(let v, let ext):
            (WireBytes.bytes(of: v) + (ext.map { WireBytes.bytes(of: $0) } ?? [])).withUnsafeBytes(body)
        case .layers(let head, let infos, let ext):
            if let ext {
                (WireBytes.bytes(of: head) + zip(infos, ext).flatMap { WireBytes.bytes(of: moe_layer_info_v2(info: $0, ext: $1)) })
                    .withUnsafeBytes(body)
            } else {
                (WireBytes.bytes(of: head) + infos.withUnsafeBytes(Array.init)).withUnsafeBytes(body)
            }
        case .registered(let v): withUnsafeBytes(of: v, body)
        case .unregistered(let v): withUnsafeBytes(of: v, body)
        case .route(let r):
            r.version >= 2 ? withUnsafeBytes(of: r.wireV2, body) : withUnsafeBytes(of: r.wire, body)
        case .stats(let v, let ext):
            if let ext { withUnsafeBytes(of: moe_stats_resp_v2(base: v, ext: ext), body) } else { withUnsafeBytes(of: v, body) }
        case .placement(let v): withUnsafeBytes(of: v, body)
        case .load(let v): withUnsafeBytes(of: v, body)
        case .channel(let v): withUnsafeBytes(of: v, body)
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
    /// The protocol version of the request (its answer's body: moe_route_resp or _v2).
    var version: UInt16 = 1
    var maskedTokens = 0
    var placementEpoch: UInt64 = 0
    var firstBadToken: Int?
    var hashRouted = false

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

    var wireV2: moe_route_resp_v2 {
        var r = moe_route_resp_v2()
        r.base = wire
        r.masked_tokens = UInt64(maskedTokens)
        r.placement_epoch = placementEpoch
        r.first_bad_token = firstBadToken.map(UInt64.init) ?? UInt64.max
        r.hash_routed = hashRouted ? 1 : 0
        return r
    }
}
