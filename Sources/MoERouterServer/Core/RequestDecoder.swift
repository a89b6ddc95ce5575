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

    /// The body size each op requires in protocol `version`.
    static func bodySize(_ op: WireOp, version: UInt16) -> Int {
        switch op {
        case .hello: MemoryLayout<moe_hello_req>.size
        case .registerShm: MemoryLayout<moe_register_req>.size
        case .unregisterShm: MemoryLayout<moe_unregister_req>.size
        case .route: version >= 2 ? MemoryLayout<moe_route_req_v2>.size : MemoryLayout<moe_route_req>.size
        case .setPlacement: MemoryLayout<moe_placement_req>.size
        case .expertLoad: MemoryLayout<moe_load_req>.size
        case .openChannel: MemoryLayout<moe_channel_open_req>.size
        case .closeChannel: MemoryLayout<moe_channel_close_req>.size
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
        // Answer in the request's version when this daemon speaks it, else in the newest.
        let version = WireVersion.served.contains(h.version) ? h.version : WireVersion.newest
        let body = UnsafeRawBufferPointer(rebasing: first[Self.headerSize...])
        let op: WireOp
        do throws(RequestFailure) { op = try framing(h, frames, body: body) } catch {
            return .refused(Reply(op: h.op, requestID: h.request_id, version: version, failure: error))
        }
        let request: Request
        do throws(RequestFailure) { request = try fields(op, version, body, frames) } catch {
            // A ROUTE refused for its fields still answers with a ROUTE body (PROTOCOL.md).
            guard op == .route else { return .refused(Reply(op: h.op, requestID: h.request_id, version: version, failure: error)) }
            let q = WireBytes.load(moe_route_req.self, from: body)  // framing checked its size
            return .refused(Reply(op: h.op, requestID: h.request_id, version: version, failure: error,
                                  body: .route(RouteResult(tokens: q.tokens, layerID: q.layer_id, version: version))))
        }
        let ms = h.deadline_ms == 0 ? defaultDeadlineMs : h.deadline_ms
        // ROUTE's inline buffers follow frame 0 in the order input, token ids, mask.
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        var inline = (none, none, none)
        if case .route(let q) = request {
            var next = 1
            func take(_ ref: BufferRef?) -> UnsafeRawBufferPointer {
                guard case .inline = ref else { return none }
                defer { next += 1 }
                return frames.frame(next)
            }
            inline = (take(q.input), take(q.tokenIds), take(q.mask))
        }
        var inbound = InboundRequest(request: request, version: version, id: h.request_id,
                                     deadlineNs: origin.receivedNs + UInt64(ms) * 1_000_000,
                                     origin: origin, inlineInput: inline.0)
        inbound.inlineTokenIds = inline.1
        inbound.inlineMask = inline.2
        return .request(inbound)
    }

    /// A ROUTE descriptor that arrived without a header or frames (a channel's, copied once out
    /// of its page): its fields pass the same checks as a version-2 ROUTE frame's body. A
    /// channel holds no inline data, so it is one frame.
    func route(_ q: moe_route_req_v2) throws(RequestFailure) -> RouteRequest {
        try route(q.base, DescriptorOnly(), extended: q)
    }

    /// Header and frame checks; returns the op.
    private func framing(_ h: moe_req_header, _ frames: some RequestFrames, body: UnsafeRawBufferPointer) throws(RequestFailure) -> WireOp {
        guard h.magic == MOE_PROTOCOL_MAGIC else {
            throw RequestFailure(.badMagic, "magic = 0x\(String(h.magic, radix: 16)), expected 0x\(String(MOE_PROTOCOL_MAGIC, radix: 16)) (\"MOER\")")
        }
        guard WireVersion.served.contains(h.version) else {
            throw RequestFailure(.badVersion, "version = \(h.version); this daemon speaks protocol versions \(WireVersion.oldest)...\(WireVersion.newest)")
        }
        guard let op = WireOp(rawValue: h.op) else { throw RequestFailure(.unknownOp, "op = \(h.op) is not an operation") }
        guard h.version >= op.sinceVersion else {
            throw RequestFailure(.badVersion, "\(op.name) needs protocol version \(op.sinceVersion); the request's header says \(h.version)")
        }
        guard h.reserved == 0 else { throw RequestFailure(.badField, "header.reserved = \(h.reserved), must be 0") }
        var total = 0
        for i in 0..<frames.frameCount { total += frames.frame(i).count }
        guard total <= maxMessageBytes else {
            throw RequestFailure(.tooLarge, "request holds \(total) bytes, max_message_bytes = \(maxMessageBytes)")
        }
        guard Int(h.body_size) == body.count else {
            throw RequestFailure(.malformed, "body_size = \(h.body_size) but frame 0 carries \(body.count) body bytes")
        }
        let size = Self.bodySize(op, version: h.version)
        guard body.count == size else {
            throw RequestFailure(.malformed, "body_size = \(h.body_size); \(op.name) in protocol \(h.version) takes a \(size)-byte body")
        }
        if op != .route && op != .setPlacement && frames.frameCount != 1 {
            throw RequestFailure(.malformed, "\(op) takes 1 frame, got \(frames.frameCount)")
        }
        return op
    }

    private func fields(_ op: WireOp, _ version: UInt16, _ body: UnsafeRawBufferPointer, _ frames: some RequestFrames) throws(RequestFailure) -> Request {
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
            if version >= 2 {
                let q = WireBytes.load(moe_route_req_v2.self, from: body)
                return .route(try route(q.base, frames, extended: q))
            }
            return .route(try route(WireBytes.load(moe_route_req.self, from: body), frames, extended: nil))
        case .setPlacement:
            return .setPlacement(try placement(WireBytes.load(moe_placement_req.self, from: body), frames))
        case .expertLoad:
            let q = WireBytes.load(moe_load_req.self, from: body)
            guard q.flags & ~UInt32(MOE_LOAD_RESET_WINDOW) == 0 else {
                throw RequestFailure(.badField, "expert_load.flags = \(q.flags); known: 1 (reset window)")
            }
            return .expertLoad(layerID: q.layer_id, resetWindow: q.flags & UInt32(MOE_LOAD_RESET_WINDOW) != 0)
        case .openChannel: return .openChannel(WireBytes.load(moe_channel_open_req.self, from: body))
        case .closeChannel: return .closeChannel(id: WireBytes.load(moe_channel_close_req.self, from: body).channel_id)
        case .listLayers: return .listLayers
        case .stats: return .stats
        case .ping: return .ping
        }
    }

    private func route(_ q: moe_route_req, _ frames: some RequestFrames, extended v2: moe_route_req_v2?) throws(RequestFailure) -> RouteRequest {
        guard q.reserved0 == (0, 0, 0) else { throw RequestFailure(.badField, "route.reserved0 must be 0") }
        guard let dtype = DType(rawValue: q.dtype) else {
            throw RequestFailure(.badDType, "dtype = \(q.dtype); known: 0 (fp32), 1 (bf16), 2 (fp16)")
        }
        guard q.tokens <= UInt64(maxTokens) else {
            throw RequestFailure(.tooLarge, "tokens = \(q.tokens) exceeds max_tokens = \(maxTokens)")
        }
        let input = try buffer(q.input, "input"), weights = try buffer(q.weights, "weights"), ids = try buffer(q.ids, "ids")
        var request = RouteRequest(layerID: q.layer_id, dtype: dtype, tokens: Int(q.tokens), input: input, weights: weights, ids: ids)
        if let v2 {
            guard v2.reserved == 0, v2.reserved2 == 0 else { throw RequestFailure(.badField, "route.reserved and route.reserved2 must be 0") }
            request.tokenIds = try optionalBuffer(v2.token_ids, "token_ids")
            request.mask = try optionalBuffer(v2.mask, "mask")
            if request.tokenIds != nil {
                guard v2.token_id_bytes == 4 || v2.token_id_bytes == 8 else {
                    throw RequestFailure(.badField, "token_id_bytes = \(v2.token_id_bytes); token ids are int32 (4) or int64 (8)")
                }
                request.tokenIdBytes = Int(v2.token_id_bytes)
            } else if v2.token_id_bytes != 0 {
                throw RequestFailure(.badField, "token_id_bytes = \(v2.token_id_bytes) without token_ids; must be 0")
            }
        }
        // Inline buffers follow frame 0 in the order input, token ids, mask. (No array of them
        // is built: this runs for every request, a channel's included.)
        func inlineLength(_ ref: BufferRef?) -> UInt64? { if case .inline(let length)? = ref { length } else { nil } }
        let lengths = (inlineLength(input), inlineLength(request.tokenIds), inlineLength(request.mask))
        let inlineCount = (lengths.0 == nil ? 0 : 1) + (lengths.1 == nil ? 0 : 1) + (lengths.2 == nil ? 0 : 1)
        guard frames.frameCount == 1 + inlineCount else {
            let present = [("input", lengths.0), ("token_ids", lengths.1), ("mask", lengths.2)].filter { $0.1 != nil }
            let names = present.isEmpty ? "no inline buffer" : "inline " + present.map(\.0).joined(separator: ", ")
            throw RequestFailure(.malformed, "ROUTE with \(names) takes \(1 + inlineCount) frame(s), got \(frames.frameCount)")
        }
        var frame = 1
        func check(_ name: StaticString, _ length: UInt64?) throws(RequestFailure) {
            guard let length else { return }
            defer { frame += 1 }
            let held = frames.frame(frame).count
            guard held == length else {
                throw RequestFailure(.sizeMismatch, "\(name) frame holds \(held) bytes, but \(name).length = \(length)")
            }
        }
        try check("input", lengths.0)
        try check("token_ids", lengths.1)
        try check("mask", lengths.2)
        return request
    }

    /// A version-2 optional buffer: nil when its kind is MOE_BUF_NONE (every other field 0).
    private func optionalBuffer(_ ref: moe_buffer_ref, _ name: String) throws(RequestFailure) -> BufferRef? {
        guard ref.kind == MOE_BUF_NONE.rawValue else { return try buffer(ref, name) }
        guard ref.reserved == 0, ref.handle == 0, ref.offset == 0, ref.length == 0 else {
            throw RequestFailure(.badField, "\(name) is absent (kind 2): reserved, handle, offset and length must be 0 (got \(ref.reserved), \(ref.handle), \(ref.offset), \(ref.length))")
        }
        return nil
    }

    private func placement(_ q: moe_placement_req, _ frames: some RequestFrames) throws(RequestFailure) -> PlacementRequest {
        if q.num_logical == 0 {
            guard q.total_replicas == 0, frames.frameCount == 1 else {
                throw RequestFailure(.malformed, "removing a placement (num_logical = 0) takes total_replicas = 0 and 1 frame (got \(q.total_replicas), \(frames.frameCount) frames)")
            }
            return PlacementRequest(layerID: q.layer_id, numPhysical: Int(q.num_physical), counts: [], physical: [])
        }
        guard q.num_logical <= UInt32(RoutingLimits.maxExperts) else {
            throw RequestFailure(.badPlacement, "num_logical = \(q.num_logical) exceeds the \(RoutingLimits.maxExperts) experts a layer can have")
        }
        guard q.total_replicas <= UInt32(ExpertPlacement.maxPhysical), q.num_physical <= UInt32(ExpertPlacement.maxPhysical) else {
            throw RequestFailure(.badPlacement, "num_physical = \(q.num_physical), total_replicas = \(q.total_replicas): at most \(ExpertPlacement.maxPhysical) each")
        }
        guard frames.frameCount == 2 else {
            throw RequestFailure(.malformed, "SET_PLACEMENT takes 2 frames (the replica counts and ids in frame 1), got \(frames.frameCount)")
        }
        let expected = (Int(q.num_logical) + Int(q.total_replicas)) * 4
        let data = frames.frame(1)
        guard data.count == expected else {
            throw RequestFailure(.sizeMismatch, "placement frame holds \(data.count) bytes; num_logical + total_replicas int32 values are \(expected) bytes")
        }
        let counts = (0..<Int(q.num_logical)).map { data.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self) }
        let base = Int(q.num_logical) * 4
        let physical = (0..<Int(q.total_replicas)).map { data.loadUnaligned(fromByteOffset: base + $0 * 4, as: Int32.self) }
        return PlacementRequest(layerID: q.layer_id, numPhysical: Int(q.num_physical), counts: counts, physical: physical)
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
            throw RequestFailure(.badField, "\(name).kind = \(ref.kind); known: 0 (inline), 1 (shm)\(name == "token_ids" || name == "mask" ? ", 2 (none)" : "")")
        }
    }
}

/// A request that is its descriptor alone: one frame, and no inline buffer follows it.
private struct DescriptorOnly: RequestFrames {
    var frameCount: Int { 1 }
    func frame(_ index: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: nil, count: 0) }
}
