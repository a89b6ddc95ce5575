import CMoERouterWire
import MoERouting

/// Turns a request's frames into a typed `Request`: the framing (header, version, op, sizes,
/// frame count) and every field that needs no daemon state (reserved fields, strings, dtype,
/// buffer kinds, the token limit). Layers and segments are checked by the op's handler.
struct RequestDecoder: Sendable {
    static let headerSize = MemoryLayout<moe_req_header>.size

    let defaultDeadlineMs: UInt32
    let maxMessageBytes: Int
    let maxTokens: Int

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

    /// The decoded request, or the reply refusing it.
    func decode(_ frames: some RequestFrames, from origin: any RequestOrigin) -> Decoded {
        guard frames.frameCount > 0, frames.frame(0).count >= Self.headerSize else {
            let size = frames.frameCount > 0 ? frames.frame(0).count : 0
            return .refused(Reply(op: 0, requestID: 0, failure: RequestFailure(
                .malformed, "frame 0 holds \(size) bytes; a request starts with a \(Self.headerSize)-byte header")))
        }
        let first = frames.frame(0)
        let h = WireBytes.load(moe_req_header.self, from: first)
        let body = UnsafeRawBufferPointer(rebasing: first[Self.headerSize...])
        let op: WireOp
        do throws(RequestFailure) { op = try framing(h, frames, body: body) } catch {
            return .refused(Reply(op: h.op, requestID: h.request_id, failure: error))
        }
        let request: Request
        do throws(RequestFailure) { request = try fields(op, body, frames) } catch {
            // A ROUTE refused for its fields still answers with a ROUTE body (PROTOCOL.md).
            guard op == .route else { return .refused(Reply(op: h.op, requestID: h.request_id, failure: error)) }
            let q = WireBytes.load(moe_route_req.self, from: body)  // framing checked its size
            return .refused(Reply(op: h.op, requestID: h.request_id, failure: error,
                                  body: .route(RouteResult(tokens: q.tokens, layerID: q.layer_id))))
        }
        let inline = if case .route(let q) = request, case .inline = q.input { frames.frame(1) } else { UnsafeRawBufferPointer(start: nil, count: 0) }
        let ms = h.deadline_ms == 0 ? defaultDeadlineMs : h.deadline_ms
        return .request(InboundRequest(request: request, id: h.request_id,
                                       deadlineNs: origin.receivedNs + UInt64(ms) * 1_000_000,
                                       origin: origin, inlineInput: inline))
    }

    /// Header and frame checks; returns the op.
    private func framing(_ h: moe_req_header, _ frames: some RequestFrames, body: UnsafeRawBufferPointer) throws(RequestFailure) -> WireOp {
        guard h.magic == MOE_PROTOCOL_MAGIC else {
            throw RequestFailure(.badMagic, "magic = 0x\(String(h.magic, radix: 16)), expected 0x\(String(MOE_PROTOCOL_MAGIC, radix: 16)) (\"MOER\")")
        }
        guard h.version == MOE_PROTOCOL_VERSION else {
            throw RequestFailure(.badVersion, "version = \(h.version); this daemon speaks protocol \(MOE_PROTOCOL_VERSION)")
        }
        guard let op = WireOp(rawValue: h.op) else { throw RequestFailure(.unknownOp, "op = \(h.op) is not an operation") }
        guard h.reserved == 0 else { throw RequestFailure(.badField, "header.reserved = \(h.reserved), must be 0") }
        var total = 0
        for i in 0..<frames.frameCount { total += frames.frame(i).count }
        guard total <= maxMessageBytes else {
            throw RequestFailure(.tooLarge, "request holds \(total) bytes, max_message_bytes = \(maxMessageBytes)")
        }
        guard Int(h.body_size) == body.count else {
            throw RequestFailure(.malformed, "body_size = \(h.body_size) but frame 0 carries \(body.count) body bytes")
        }
        guard body.count == Self.bodySize(op) else {
            throw RequestFailure(.malformed, "body_size = \(h.body_size); \(op) takes a \(Self.bodySize(op))-byte body")
        }
        if op != .route && frames.frameCount != 1 {
            throw RequestFailure(.malformed, "\(op) takes 1 frame, got \(frames.frameCount)")
        }
        return op
    }

    private func fields(_ op: WireOp, _ body: UnsafeRawBufferPointer, _ frames: some RequestFrames) throws(RequestFailure) -> Request {
        switch op {
        case .hello:
            let q = WireBytes.load(moe_hello_req.self, from: body)
            guard q.reserved == 0 else { throw RequestFailure(.badField, "hello.reserved = \(q.reserved), must be 0") }
            guard let name = WireBytes.string(fromFixed: q.client_name) else {
                throw RequestFailure(.badField, "hello.client_name is not NUL-terminated")
            }
            guard q.min_version <= q.max_version else {
                throw RequestFailure(.badVersion, "hello: min_version \(q.min_version) > max_version \(q.max_version)")
            }
            return .hello(HelloRequest(versions: q.min_version...q.max_version, clientName: name))
        case .registerShm:
            let q = WireBytes.load(moe_register_req.self, from: body)
            guard let raw = WireBytes.bytes(fromFixed: q.name) else {
                throw RequestFailure(.shmName, "register.name is not NUL-terminated within \(MOE_SHM_NAME_BYTES) bytes")
            }
            return .registerShm(RegisterRequest(name: try SharedSegment.portableName(raw), size: q.size))
        case .unregisterShm:
            return .unregisterShm(handle: WireBytes.load(moe_unregister_req.self, from: body).handle)
        case .route:
            return .route(try route(WireBytes.load(moe_route_req.self, from: body), frames))
        case .listLayers: return .listLayers
        case .stats: return .stats
        case .ping: return .ping
        }
    }

    private func route(_ q: moe_route_req, _ frames: some RequestFrames) throws(RequestFailure) -> RouteRequest {
        guard q.reserved0 == (0, 0, 0) else { throw RequestFailure(.badField, "route.reserved0 must be 0") }
        guard let dtype = DType(rawValue: q.dtype) else {
            throw RequestFailure(.badDType, "dtype = \(q.dtype); known: 0 (fp32), 1 (bf16), 2 (fp16)")
        }
        guard q.tokens <= UInt64(maxTokens) else {
            throw RequestFailure(.tooLarge, "tokens = \(q.tokens) exceeds max_tokens = \(maxTokens)")
        }
        let input = try buffer(q.input, "input"), weights = try buffer(q.weights, "weights"), ids = try buffer(q.ids, "ids")
        let expectedFrames = input.segment == nil ? 2 : 1
        guard frames.frameCount == expectedFrames else {
            throw RequestFailure(.malformed, "ROUTE with \(input.segment == nil ? "inline" : "shm") input takes \(expectedFrames) frame(s), got \(frames.frameCount)")
        }
        if case .inline(let length) = input, frames.frame(1).count != length {
            throw RequestFailure(.sizeMismatch, "input frame holds \(frames.frame(1).count) bytes, but input.length = \(length)")
        }
        return RouteRequest(layerID: q.layer_id, dtype: dtype, tokens: Int(q.tokens), input: input, weights: weights, ids: ids)
    }

    private func buffer(_ ref: moe_buffer_ref, _ name: String) throws(RequestFailure) -> BufferRef {
        guard ref.reserved == 0 else { throw RequestFailure(.badField, "\(name).reserved = \(ref.reserved), must be 0") }
        switch ref.kind {
        case MOE_BUF_INLINE.rawValue:
            guard ref.handle == 0, ref.offset == 0 else {
                throw RequestFailure(.badField, "\(name) is inline: handle and offset must be 0 (got \(ref.handle), \(ref.offset))")
            }
            return .inline(length: ref.length)
        case MOE_BUF_SHM.rawValue:
            return .shm(handle: ref.handle, offset: ref.offset, length: ref.length)
        default:
            throw RequestFailure(.badField, "\(name).kind = \(ref.kind); known: 0 (inline), 1 (shm)")
        }
    }
}
