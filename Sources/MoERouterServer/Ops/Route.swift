import CMoERouterWire
import CMoERouterdOS
import MoERouterZMQ
import MoERouting

/// Everything a ROUTE needs besides its fields: who sent it, over what, and what the transport
/// holds for it.
struct RouteCall {
    /// The protocol version of the request (its answer's body).
    var version: UInt16
    var transport: ClientKey.Transport
    /// The connection whose registrations the buffers name.
    var client: ClientKey
    /// A segment of `client`'s that the transport holds checked out for longer than the request
    /// (a channel's own): while it is registered, buffers in it are used without a checkout.
    var held: Unmanaged<SharedSegment>? = nil
    /// Inline buffers (empty when absent or in shared memory); valid for the call.
    var inlineInput = UnsafeRawBufferPointer(start: nil, count: 0)
    var inlineTokenIds = UnsafeRawBufferPointer(start: nil, count: 0)
    var inlineMask = UnsafeRawBufferPointer(start: nil, count: 0)
    /// The layers, where the transport has read them already (nil: read the slot).
    var catalog: LayerCatalog? = nil

    init(version: UInt16, transport: ClientKey.Transport, client: ClientKey) {
        (self.version, self.transport, self.client) = (version, transport, client)
    }

    init(_ r: InboundRequest) {
        self.init(version: r.version, transport: r.origin.transport, client: r.origin.client)
        (inlineInput, inlineTokenIds, inlineMask) = (r.inlineInput, r.inlineTokenIds, r.inlineMask)
    }
}

/// What a ROUTE came to: the response's fields, the refusal (nil: routed) and, over ZeroMQ, the
/// inline output frames.
struct RouteAnswer {
    var result: RouteResult
    var failure: RequestFailure? = nil
    var frames: [ZMQMessage] = []

    var status: WireStatus { failure?.status ?? .ok }
    /// The answer's text: "routed", or the refusal's.
    var message: String { failure?.message ?? "routed" }
}

/// ROUTE: checks every buffer reference against the layer and the client's segments, then runs
/// the backend straight on the inline input or the client's mapping, writing the outputs into
/// reply frames or the client's segment. Nothing else in the daemon dereferences client memory.
struct RouteHandler: Sendable {
    let layers: LayerSlot
    let backend: any RoutingBackend
    let registry: SegmentRegistry
    let replies: ReplyBudget

    /// ROUTE over ZeroMQ: `route` for the decoded request, as a reply.
    func answer(_ q: RouteRequest, _ r: InboundRequest) -> Reply {
        let a = route(q, RouteCall(r))
        guard let failure = a.failure else { return Reply(answering: r, message: a.message, body: .route(a.result), frames: a.frames) }
        return Reply(refusing: r, failure, body: .route(a.result))
    }

    /// Runs a ROUTE: every transport's requests come here (ZeroMQ's through `answer`, a
    /// channel's straight from its page, with no reply to build).
    func route(_ q: RouteRequest, _ r: RouteCall) -> RouteAnswer {
        var result = RouteResult(tokens: UInt64(q.tokens), layerID: q.layerID, viaSharedMemory: q.usesSharedMemory,
                                 version: r.version)
        var checkedOut = CheckedOut(held: r.held)
        defer { checkedOut.checkin(to: registry) }
        do {
            // One read of the slot (or the transport's): the request keeps these layers even if a
            // reload swaps them now.
            let catalog = r.catalog ?? layers.current
            guard let layer = catalog.layer(q.layerID) else {
                throw RequestFailure(.unknownLayer, "layer_id = \(q.layerID); the daemon has layers 0...\(catalog.layers.count - 1)")
            }
            result.layerName = layer.spec.name
            result.topK = layer.spec.topK
            let shape: RouteShape
            do { shape = try RouteShape(layer: layer, dtype: q.dtype, tokens: q.tokens) } catch {
                throw RequestFailure(.tooLarge, error.description)
            }
            if layer.spec.hashTable != nil && q.tokenIds == nil {
                throw RequestFailure(.tokenID, r.version >= 2
                    ? "layer '\(layer.spec.name)' is hash-routed (tid2eid): the request must carry token_ids"
                    : "layer '\(layer.spec.name)' is hash-routed (tid2eid): it needs the token ids that only protocol version 2 carries")
            }
            let outputBytes = shape.outputCount * 4
            // (Fixed-size storage, no arrays: this runs for every request, a channel's included.)
            let input = try resolve(q.input, .input, expected: shape.inputBytes, align: q.dtype.byteSize, r, &checkedOut)
            let weights = try resolve(q.weights, .weights, expected: outputBytes, align: 4, r, &checkedOut)
            let ids = try resolve(q.ids, .ids, expected: outputBytes, align: 4, r, &checkedOut)
            var tokenIds: Resolved?
            if let ref = q.tokenIds {
                tokenIds = try resolve(ref, .tokenIds, expected: q.tokens * q.tokenIdBytes, align: q.tokenIdBytes, r, &checkedOut)
            }
            var mask: Resolved?
            if let ref = q.mask {
                mask = try resolve(ref, .mask, expected: q.tokens, align: 1, r, &checkedOut)
            }
            // (A constant: passing a variable to the checks below copied all of it, twice.)
            let buffers = Buffers(input, weights, ids, tokenIds, mask)
            if checkedOut.count > 0 { try checkOverlap(buffers) }
            // Every byte used must lie inside the object (a shrink to a size inside a mapped page
            // faults nowhere, and outputs written there would be lost). A segment that faulted
            // is refused now; its size is read once, after the run (below), which catches a
            // shrink before or during it alike: one system call per segment and request, not two
            // (each costs ~0.3 µs here, a tenth of a 1-token channel route).
            try checkFaults(checkedOut, buffers)
            let weightsFrame = weights.inShm ? nil : try outputFrame(outputBytes, for: r)
            let idsFrame = ids.inShm ? nil : try outputFrame(outputBytes, for: r)
            let inputPtr = input.inShm ? UnsafeRawPointer(input.address) : r.inlineInput.baseAddress
            let wPtr = weights.inShm ? weights.address : weightsFrame!.mutableBytes.baseAddress
            let iPtr = ids.inShm ? ids.address : idsFrame!.mutableBytes.baseAddress
            var job = RouteJob(shape, input: inputPtr, weights: wPtr?.assumingMemoryBound(to: Float.self),
                               ids: iPtr?.assumingMemoryBound(to: Int32.self))
            if let tokenIds {
                let p = tokenIds.inShm ? UnsafeRawPointer(tokenIds.address) : r.inlineTokenIds.baseAddress
                job.extras.tokenIds = q.tokens > 0 ? p : nil
                job.extras.tokenIdBytes = Int32(q.tokenIdBytes)
            }
            if let mask {
                let p = mask.inShm ? UnsafeRawPointer(mask.address) : r.inlineMask.baseAddress
                job.extras.mask = q.tokens > 0 ? p?.assumingMemoryBound(to: UInt8.self) : nil
            }
            let t0 = mro_now_ns()
            let outcome = try run(job, on: layer)
            result.computeNs = mro_now_ns() - t0
            try checkSizes(checkedOut, buffers)
            result.nonFiniteCount = outcome.nonFiniteInputs
            result.fallbackCast = outcome.usedFallbackCast
            result.maskedTokens = outcome.maskedTokens
            result.placementEpoch = outcome.placementEpoch
            result.hashRouted = layer.spec.hashTable != nil
            let frames: [ZMQMessage] = switch (weightsFrame, idsFrame) {
            case let (w?, i?): [w, i]
            case let (w?, nil): [w]
            case let (nil, i?): [i]
            case (nil, nil): []
            }
            return RouteAnswer(result: result, frames: frames)
        } catch let f as RequestFailure {
            return RouteAnswer(result: result, failure: f)
        } catch let e as RouteError {
            switch e {
            case .nonFiniteInput(let token, let count):
                result.nonFiniteCount = count
                result.firstNonFiniteToken = token
                return RouteAnswer(result: result, failure: RequestFailure(.nonFinite, e.description))
            case .maskValue(let token, _):
                result.firstBadToken = token
                return RouteAnswer(result: result, failure: RequestFailure(.badMask, e.description))
            case .tokenIdOutOfRange(let token, _, _):
                result.firstBadToken = token
                return RouteAnswer(result: result, failure: RequestFailure(.tokenID, e.description))
            case .tokenIdsMissing:
                return RouteAnswer(result: result, failure: RequestFailure(.tokenID, e.description))
            case .inputSize, .outputSize, .tokenCount:
                return RouteAnswer(result: result, failure: RequestFailure(.sizeMismatch, e.description))
            }
        } catch {
            return RouteAnswer(result: result, failure: RequestFailure(.internalError, "\(error)"))
        }
    }

    /// An inline output frame; one large enough to matter is counted against the connection's
    /// and the daemon's budget of unread answers until libzmq frees it (BUSY past either).
    private func outputFrame(_ bytes: Int, for r: RouteCall) throws(RequestFailure) -> ZMQMessage {
        guard bytes >= ReplyBudget.countedBytes else { return ZMQMessage.sized(bytes) }
        let client = r.client
        if let refusal = replies.reserve(bytes, for: client) { throw RequestFailure(.busy, refusal) }
        return ZMQMessage.sized(bytes) { [replies] in replies.release(bytes, for: client) }
    }

    /// A ROUTE buffer's name in messages.
    private enum BufferName: CustomStringConvertible {
        case input, weights, ids, tokenIds, mask

        var description: String {
            switch self {
            case .input: "input"
            case .weights: "weights"
            case .ids: "ids"
            case .tokenIds: "token_ids"
            case .mask: "mask"
            }
        }

        /// Whether the daemon writes it.
        var isOutput: Bool { self == .weights || self == .ids }
    }

    /// A buffer reference checked against the shape and its segment: plain values (the segment
    /// by its index in the request's `CheckedOut`, which keeps it alive), so that handling them
    /// costs no reference counting.
    private struct Resolved {
        let name: BufferName
        /// The segment's index in `CheckedOut`; -1: inline.
        var slot = -1
        let offset: Int
        let length: Int
        /// Where the buffer starts in the daemon's mapping (nil: inline).
        var address: UnsafeMutableRawPointer? = nil
        /// The segment's object (two registrations of one object share bytes).
        var device: UInt64 = 0, inode: UInt64 = 0

        var inShm: Bool { slot >= 0 }
    }

    private func resolve(_ ref: BufferRef, _ name: BufferName, expected: Int, align: Int, _ r: RouteCall,
                         _ checkedOut: inout CheckedOut) throws(RequestFailure) -> Resolved {
        assert(align > 0 && align & (align - 1) == 0, "alignment \(align) is not a power of two")
        guard ref.length == UInt64(expected) else {
            throw RequestFailure(.sizeMismatch, "\(name).length = \(ref.length), expected \(expected) bytes for this layer, dtype and token count")
        }
        guard case .shm(let handle, let offset, let length) = ref else {
            return Resolved(name: name, offset: 0, length: expected)
        }
        guard r.transport == .ipc else {
            throw RequestFailure(.shmRefused, "\(name): shared memory is only available to ipc peers on this host")
        }
        var slot = checkedOut.index(handle: handle)
        if slot < 0 {
            slot = checkedOut.append(try registry.checkout(client: r.client, handle: handle))
        }
        let seg = checkedOut.with(slot) { s in (size: s.size, base: s.base, device: s.device, inode: s.inode) }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow else {
            throw RequestFailure(.overflow, "\(name): offset \(offset) + length \(length) overflows 64 bits")
        }
        guard end <= UInt64(seg.size) else {
            throw RequestFailure(.outOfBounds, "\(name): bytes \(offset)..<\(end) lie past the end of the \(seg.size)-byte segment \(handle)")
        }
        // (Every alignment is a power of two: 1, a dtype's 2 or 4, a token id's 4 or 8. A mask
        // instead of `%`: three 64-bit divisions cost ~30 ns a request.)
        guard offset & UInt64(align &- 1) == 0 else {
            throw RequestFailure(.misaligned, "\(name).offset = \(offset) is not a multiple of \(align)")
        }
        return Resolved(name: name, slot: slot, offset: Int(offset), length: Int(length), address: seg.base + Int(offset),
                        device: seg.device, inode: seg.inode)
    }

    /// Two shm buffers overlap when they share bytes of the same object, even through two
    /// registrations of it. Buffers the daemon only reads (input, token ids, mask) may share
    /// bytes with each other; an output may share bytes with nothing. `refs` starts with input,
    /// weights, ids.
    private func checkOverlap(_ refs: borrowing Buffers) throws(RequestFailure) {
        // (Items read into locals first: an `||` over `refs[...]` captured, so copied, all of `refs`.)
        for i in 0..<refs.count {
            let x = refs[i]
            for j in i + 1..<refs.count {
                let y = refs[j]
                guard x.name.isOutput || y.name.isOutput else { continue }
                guard x.inShm, y.inShm, x.length > 0, y.length > 0, x.device == y.device, x.inode == y.inode else { continue }
                if x.offset < y.offset + y.length && y.offset < x.offset + x.length {
                    throw RequestFailure(.overlap, "\(x.name) [\(x.offset), \(x.offset + x.length)) overlaps \(y.name) [\(y.offset), \(y.offset + y.length))")
                }
            }
        }
    }

    /// SHM_TRUNCATED (and the registration dropped) when a segment a buffer uses faulted.
    private func checkFaults(_ segments: CheckedOut, _ buffers: Buffers) throws(RequestFailure) {
        for i in 0..<segments.count where buffers.use(segment: i) && segments.with(i, { $0.faulted }) {
            let s = segments[i]
            registry.drop(handle: s.handle)
            throw RequestFailure(.shmTruncated, "segment \(s.handle) (\(s.name)) shrank below its registered \(s.size) bytes; its registration is dropped")
        }
    }

    /// SHM_TRUNCATED (and the registration dropped) when a segment faulted or no longer holds
    /// every byte a buffer of this request uses.
    private func checkSizes(_ segments: CheckedOut, _ buffers: Buffers) throws(RequestFailure) {
        for i in 0..<segments.count {
            var end = 0, used = false
            for b in 0..<buffers.count where buffers[b].slot == i {
                (end, used) = (max(end, buffers[b].offset + buffers[b].length), true)
            }
            guard used else { continue }  // a held segment no buffer uses is not looked at
            let (faulted, now) = segments.with(i) { s in s.faulted ? (true, 0) : (false, s.currentSize) }
            guard faulted || now < end else { continue }
            let s = segments[i]
            registry.drop(handle: s.handle)
            throw faulted
                ? RequestFailure(.shmTruncated, "segment \(s.handle) (\(s.name)) shrank below its registered \(s.size) bytes; its registration is dropped")
                : RequestFailure(.shmTruncated, "segment \(s.handle) (\(s.name)) now holds \(now) bytes; this request uses bytes up to \(end); its registration is dropped")
        }
    }

    /// The segments a request checked out (at most one per buffer), each retained once until
    /// `checkin`: no heap allocation, and no reference counting as they are passed around.
    /// A segment the transport holds (`RouteCall.held`) comes first, unless its
    /// registration ended; it is neither checked out nor in (a registry lock and a table lookup
    /// each way, ~0.1 µs of a 1-token channel route).
    private struct CheckedOut {
        private var items = InlineArray<5, Unmanaged<SharedSegment>?>(repeating: nil)
        private(set) var count = 0
        /// Whether items[0] is the transport's held segment.
        private var holds = false

        init(held: Unmanaged<SharedSegment>?) {
            guard let held, !held._withUnsafeGuaranteedRef({ $0.releasePending }) else { return }
            items[0] = held
            (count, holds) = (1, true)
        }

        subscript(i: Int) -> SharedSegment { items[i]!.takeUnretainedValue() }

        /// `body` on segment `i`, borrowed (this value keeps it alive): no reference counting.
        func with<R>(_ i: Int, _ body: (SharedSegment) -> R) -> R {
            items[i]!._withUnsafeGuaranteedRef(body)
        }

        /// Its index.
        mutating func append(_ s: SharedSegment) -> Int {
            items[count] = .passRetained(s)
            count += 1
            return count - 1
        }

        /// The index of the segment of `handle`, or -1.
        func index(handle: UInt64) -> Int {
            for i in 0..<count where items[i]!._withUnsafeGuaranteedRef({ $0.handle }) == handle { return i }
            return -1
        }

        /// Checks every segment in with `registry` and lets go of it.
        mutating func checkin(to registry: SegmentRegistry) {
            for i in (holds ? 1 : 0)..<count {
                items[i]!._withUnsafeGuaranteedRef { registry.checkin($0) }
                items[i]!.release()
                items[i] = nil
            }
            (count, holds) = (0, false)
        }
    }

    /// The resolved buffers of a request (input, weights, ids, then token ids and mask when
    /// present), without a heap allocation.
    private struct Buffers {
        // (Named fields, not an InlineArray: reading one item of that copied all five, 280
        // bytes, on every access.)
        private let input, weights, ids: Resolved
        private let extra: (Resolved?, Resolved?)
        let count: Int

        init(_ input: Resolved, _ weights: Resolved, _ ids: Resolved, _ tokenIds: Resolved?, _ mask: Resolved?) {
            (self.input, self.weights, self.ids) = (input, weights, ids)
            extra = tokenIds == nil ? (mask, nil) : (tokenIds, mask)
            count = 3 + (tokenIds == nil ? 0 : 1) + (mask == nil ? 0 : 1)
        }

        /// Whether a buffer lies in segment `slot` of the request's `CheckedOut`.
        func use(segment slot: Int) -> Bool {
            for i in 0..<count where self[i].slot == slot { return true }
            return false
        }

        subscript(i: Int) -> Resolved {
            switch i {
            case 0: input
            case 1: weights
            case 2: ids
            case 3: extra.0!
            default: extra.1!
            }
        }
    }

    private func run(_ job: RouteJob, on layer: BuiltLayer) throws(RouteError) -> RouteOutcome {
        // Inline frames may sit at any offset of libzmq's receive buffer (or inside zmq_msg_t):
        // an input or token ids not aligned for their type are copied first (on the stack when
        // small).
        if let ids = job.extras.tokenIds, Int(bitPattern: ids) % Int(job.extras.tokenIdBytes) != 0 {
            let bytes = job.tokens * Int(job.extras.tokenIdBytes)
            return try withUnsafeTemporaryAllocation(byteCount: bytes, alignment: 8) { (copy) throws(RouteError) in
                copy.copyMemory(from: UnsafeRawBufferPointer(start: ids, count: bytes))
                var aligned = job
                aligned.extras.tokenIds = UnsafeRawPointer(copy.baseAddress)
                return try run(aligned, on: layer)
            }
        }
        guard let base = job.input.baseAddress, Int(bitPattern: base) % job.dtype.byteSize != 0 else {
            return try backend.route(job, on: layer)
        }
        return try withUnsafeTemporaryAllocation(byteCount: job.input.count, alignment: 64) { (copy) throws(RouteError) in
            copy.copyMemory(from: job.input)
            var aligned = RouteJob(job.shape, input: UnsafeRawPointer(copy.baseAddress), weights: job.weights.baseAddress,
                                   ids: job.ids.baseAddress)
            aligned.extras = job.extras
            return try backend.route(aligned, on: layer)
        }
    }
}
