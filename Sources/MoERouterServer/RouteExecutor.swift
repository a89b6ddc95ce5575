import CMoERouterWire
import CMoERouterdOS
import MoERouting

/// ROUTE: validates every buffer reference, then runs the backend straight on the inline frame
/// or the client's mapping, writing outputs into a reply frame or the client's segment.
/// Nothing else in the daemon dereferences client memory.
final class RouteExecutor: Sendable {
    let layerSlot: LayerSlot
    let backend: any RoutingBackend
    let registry: SegmentRegistry
    let stats: ServerStats
    let maxTokens: Int

    init(layerSlot: LayerSlot, backend: any RoutingBackend, registry: SegmentRegistry, stats: ServerStats, maxTokens: Int) {
        self.layerSlot = layerSlot
        self.backend = backend
        self.registry = registry
        self.stats = stats
        self.maxTokens = maxTokens
    }

    /// The token count of a ROUTE request (for the I/O thread's inline-or-worker decision).
    static func tokens(of r: IncomingRequest) -> UInt64 {
        WireBytes.load(moe_route_req.self, from: r.body).tokens
    }

    func route(_ r: IncomingRequest) -> Reply {
        let q = WireBytes.load(moe_route_req.self, from: r.body)
        var resp = moe_route_resp()
        resp.tokens = q.tokens
        resp.first_nonfinite_token = UInt64.max
        var checkedOut: [SharedSegment] = []
        defer { for s in checkedOut { registry.checkin(s) } }
        do {
            let plan = try validate(q, r)
            resp.top_k = UInt32(plan.layer.spec.topK)
            let input = try resolve(q.input, name: "input", expected: plan.inputBytes, align: plan.dtype.byteSize, r, &checkedOut)
            let weights = try resolve(q.weights, name: "weights", expected: plan.outputBytes, align: 4, r, &checkedOut)
            let ids = try resolve(q.ids, name: "ids", expected: plan.outputBytes, align: 4, r, &checkedOut)
            if !checkedOut.isEmpty { try checkOverlap([input, weights, ids]) }
            // A segment that already faulted is dead. No fstat here: a shrink (before or during
            // this request) is caught by the SIGBUS guard when a byte we use is gone.
            for s in checkedOut where s.faulted { throw truncated(s) }
            let inputPtr: UnsafeRawBufferPointer = input.segment.map {
                UnsafeRawBufferPointer(start: $0.base + input.offset, count: input.length)
            } ?? r.frame(1).bytes
            let weightsMsg = weights.segment == nil ? ZMQMessage.sized(plan.outputBytes) : nil
            let idsMsg = ids.segment == nil ? ZMQMessage.sized(plan.outputBytes) : nil
            let wPtr = weights.segment.map { $0.base + weights.offset } ?? weightsMsg!.mutableBytes.baseAddress
            let iPtr = ids.segment.map { $0.base + ids.offset } ?? idsMsg!.mutableBytes.baseAddress
            let count = plan.outputBytes / 4
            let t0 = mro_now_ns()
            let outcome = try runBackend(plan, inputPtr, wPtr, iPtr, count)
            resp.compute_ns = mro_now_ns() - t0
            for s in checkedOut where s.faulted { throw truncated(s) }
            let frames: [ZMQMessage] = switch (weightsMsg, idsMsg) {
            case let (w?, i?): [w, i]
            case let (w?, nil): [w]
            case let (nil, i?): [i]
            case (nil, nil): []
            }
            resp.nonfinite_count = UInt64(outcome.nonFiniteInputs)
            resp.fallback_cast = outcome.usedFallbackCast ? 1 : 0
            stats.routes.add(1, ordering: .relaxed)
            stats.tokens.add(q.tokens, ordering: .relaxed)
            stats.computeNs.add(resp.compute_ns, ordering: .relaxed)
            if !checkedOut.isEmpty { stats.shmRoutes.add(1, ordering: .relaxed) }
            stats.nonFiniteInputs.add(resp.nonfinite_count, ordering: .relaxed)
            if outcome.usedFallbackCast { stats.fallbackCasts.add(1, ordering: .relaxed) }
            return Reply(op: r.op, requestID: r.requestID, message: "routed",
                         body: WireBytes.bytes(of: resp), frames: frames)
        } catch let f as RequestFailure {
            return r.failure(f, body: WireBytes.bytes(of: resp))
        } catch let e as RouteError {
            if case .nonFiniteInput(let token, let count) = e {
                resp.nonfinite_count = UInt64(count)
                resp.first_nonfinite_token = UInt64(token)
                return r.failure(RequestFailure(.nonFinite, e.description), body: WireBytes.bytes(of: resp))
            }
            return r.failure(RequestFailure(.sizeMismatch, e.description), body: WireBytes.bytes(of: resp))
        } catch {
            return r.failure(RequestFailure(.internalError, "\(error)"), body: WireBytes.bytes(of: resp))
        }
    }

    private struct Plan {
        let layer: BuiltLayer
        let dtype: DType
        let tokens: Int
        let inputBytes: Int
        let outputBytes: Int
    }

    private struct ResolvedRef {
        let name: String
        let segment: SharedSegment?
        let offset: Int
        let length: Int
    }

    private func validate(_ q: moe_route_req, _ r: IncomingRequest) throws(RequestFailure) -> Plan {
        guard q.reserved0 == (0, 0, 0) else { throw RequestFailure(.badField, "route.reserved0 must be 0") }
        // One read of the slot: the request keeps these layers even if a reload swaps them now.
        let catalog = layerSlot.current
        guard let layer = catalog.layer(q.layer_id) else {
            throw RequestFailure(.unknownLayer, "layer_id = \(q.layer_id); the daemon has layers 0...\(catalog.layers.count - 1)")
        }
        guard let dtype = DType(rawValue: q.dtype) else {
            throw RequestFailure(.badDType, "dtype = \(q.dtype); known: 0 (fp32), 1 (bf16), 2 (fp16)")
        }
        guard q.tokens <= UInt64(maxTokens) else {
            throw RequestFailure(.tooLarge, "tokens = \(q.tokens) exceeds max_tokens = \(maxTokens)")
        }
        let t = Int(q.tokens), spec = layer.spec
        let inputBytes = t * spec.numExperts * dtype.byteSize
        let outputBytes = t * spec.topK * 4
        let inlineInput = q.input.kind == MOE_BUF_INLINE.rawValue
        let expectedFrames = inlineInput ? 2 : 1
        guard r.frameCount == expectedFrames else {
            throw RequestFailure(.malformed, "ROUTE with \(inlineInput ? "inline" : "shm") input takes \(expectedFrames) frame(s), got \(r.frameCount)")
        }
        return Plan(layer: layer, dtype: dtype, tokens: t, inputBytes: inputBytes, outputBytes: outputBytes)
    }

    private func resolve(_ ref: moe_buffer_ref, name: String, expected: Int, align: Int, _ r: IncomingRequest,
                         _ checkedOut: inout [SharedSegment]) throws(RequestFailure) -> ResolvedRef {
        guard ref.reserved == 0 else { throw RequestFailure(.badField, "\(name).reserved = \(ref.reserved), must be 0") }
        guard ref.length == UInt64(expected) else {
            throw RequestFailure(.sizeMismatch, "\(name).length = \(ref.length), expected \(expected) bytes for this layer, dtype and token count")
        }
        switch ref.kind {
        case MOE_BUF_INLINE.rawValue:
            guard ref.handle == 0, ref.offset == 0 else {
                throw RequestFailure(.badField, "\(name) is inline: handle and offset must be 0 (got \(ref.handle), \(ref.offset))")
            }
            if name == "input" && r.frame(1).count != expected {
                throw RequestFailure(.sizeMismatch, "input frame holds \(r.frame(1).count) bytes, expected \(expected)")
            }
            return ResolvedRef(name: name, segment: nil, offset: 0, length: expected)
        case MOE_BUF_SHM.rawValue:
            guard r.transport == .ipc else {
                throw RequestFailure(.shmRefused, "\(name): shared memory is only available to ipc peers on this host")
            }
            let seg: SharedSegment
            if let s = checkedOut.first(where: { $0.handle == ref.handle }) {
                seg = s
            } else {
                seg = try registry.checkout(client: r.client, handle: ref.handle)
                checkedOut.append(seg)
            }
            let (end, overflow) = ref.offset.addingReportingOverflow(ref.length)
            guard !overflow else {
                throw RequestFailure(.overflow, "\(name): offset \(ref.offset) + length \(ref.length) overflows 64 bits")
            }
            guard end <= UInt64(seg.size) else {
                throw RequestFailure(.outOfBounds, "\(name): bytes \(ref.offset)..<\(end) lie past the end of the \(seg.size)-byte segment \(ref.handle)")
            }
            guard ref.offset % UInt64(align) == 0 else {
                throw RequestFailure(.misaligned, "\(name).offset = \(ref.offset) is not a multiple of \(align)")
            }
            return ResolvedRef(name: name, segment: seg, offset: Int(ref.offset), length: Int(ref.length))
        default:
            throw RequestFailure(.badField, "\(name).kind = \(ref.kind); known: 0 (inline), 1 (shm)")
        }
    }

    /// Two shm buffers overlap when they share bytes of the same object, even through two
    /// registrations of it.
    private func checkOverlap(_ refs: [ResolvedRef]) throws(RequestFailure) {
        for i in refs.indices {
            for j in refs.indices where j > i {
                guard let a = refs[i].segment, let b = refs[j].segment, refs[i].length > 0, refs[j].length > 0,
                      a.device == b.device, a.inode == b.inode else { continue }
                let (x, y) = (refs[i], refs[j])
                if x.offset < y.offset + y.length && y.offset < x.offset + x.length {
                    throw RequestFailure(.overlap, "\(x.name) [\(x.offset), \(x.offset + x.length)) overlaps \(y.name) [\(y.offset), \(y.offset + y.length))")
                }
            }
        }
    }

    private func truncated(_ s: SharedSegment) -> RequestFailure {
        registry.drop(handle: s.handle)
        return RequestFailure(.shmTruncated, "segment \(s.handle) (\(s.name)) shrank below its registered \(s.size) bytes; its registration is dropped")
    }

    private func runBackend(_ p: Plan, _ input: UnsafeRawBufferPointer, _ w: UnsafeMutableRawPointer?,
                            _ i: UnsafeMutableRawPointer?, _ count: Int) throws -> RouteOutcome {
        let weights = UnsafeMutableBufferPointer<Float>(start: w?.assumingMemoryBound(to: Float.self), count: count)
        let ids = UnsafeMutableBufferPointer<Int32>(start: i?.assumingMemoryBound(to: Int32.self), count: count)
        // Inline frames may sit at any offset of libzmq's receive buffer (or inside zmq_msg_t):
        // an input not aligned for its dtype is copied first (on the stack when small).
        if let base = input.baseAddress, Int(bitPattern: base) % p.dtype.byteSize != 0 {
            return try withUnsafeTemporaryAllocation(byteCount: input.count, alignment: 64) { copy in
                copy.copyMemory(from: input)
                return try backend.route(layer: p.layer, input: UnsafeRawBufferPointer(copy), dtype: p.dtype,
                                         tokens: p.tokens, weights: weights, ids: ids)
            }
        }
        return try backend.route(layer: p.layer, input: input, dtype: p.dtype, tokens: p.tokens, weights: weights, ids: ids)
    }
}
