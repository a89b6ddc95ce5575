import CMoERouterWire
import CMoERouterdOS
import Foundation
import Logging
import MoERouting
import Synchronization

/// Shared-memory request channels (issue 18; Include/moe_router_wire.h, "Channels"): a ROUTE
/// placed in a segment the client registered, announced by a futex doorbell instead of a
/// ZeroMQ message. One thread per channel, spinning briefly after each answer and then sleeping
/// in FUTEX_WAIT, so an idle channel costs nothing and a host that calls back at once finds the
/// thread awake. Every request goes through the same request core as ZeroMQ (decode, checks,
/// accounting) from a private copy of the descriptor.
final class ChannelTable: Sendable {
    static let maxPerConnection = 4
    static let maxTotal = 64
    static let defaultSpinUs: UInt32 = 50
    static let maxSpinUs: UInt32 = 2000
    /// How long a sleeping channel thread waits before it looks whether its channel still
    /// exists (a closed connection, an unregistered segment).
    static let idleCheckNs: Int64 = 100_000_000

    /// This daemon process, as channels see it: a client that finds another epoch in its page
    /// talks to a restarted daemon.
    let epoch = mro_random_u64()
    private let channels = Mutex<[UInt64: Channel]>([:])
    private let registry: SegmentRegistry
    private let logger: Logger

    init(registry: SegmentRegistry, logger: Logger) {
        self.registry = registry
        self.logger = logger
    }

    var count: Int { channels.withLock { $0.count } }

    func open(_ q: moe_channel_open_req, _ r: InboundRequest, core: RequestCore) -> Reply {
        do throws(RequestFailure) {
            guard r.origin.transport == .ipc, let peer = r.origin.peer else {
                throw RequestFailure(.shmRefused, "channels are shared memory: only ipc peers on this host may open one")
            }
            guard q.reserved == 0 else { throw RequestFailure(.badField, "open_channel.reserved = \(q.reserved), must be 0") }
            guard q.spin_us <= Self.maxSpinUs else {
                throw RequestFailure(.badField, "spin_us = \(q.spin_us); at most \(Self.maxSpinUs)")
            }
            let segment = try registry.checkout(client: r.origin.client, handle: q.handle)
            var handedOver = false
            defer { if !handedOver { registry.checkin(segment) } }
            guard segment.size >= Int(MOE_CHANNEL_CTRL_BYTES), segment.currentSize >= Int(MOE_CHANNEL_CTRL_BYTES) else {
                throw RequestFailure(.shmSize, "segment \(q.handle) holds \(segment.size) bytes; a channel needs at least \(MOE_CHANNEL_CTRL_BYTES)")
            }
            let ctrl = segment.base.assumingMemoryBound(to: moe_channel_ctrl.self)
            guard ctrl.pointee.magic == MOE_CHANNEL_MAGIC else {
                throw RequestFailure(.badField, "segment \(q.handle) does not start with a channel control page (magic 0x\(String(ctrl.pointee.magic, radix: 16)))")
            }
            let spin = q.spin_us == 0 ? Self.defaultSpinUs : q.spin_us
            let channel = try channels.withLock { table throws(RequestFailure) -> Channel in
                guard table.count < Self.maxTotal else {
                    throw RequestFailure(.limit, "the daemon serves \(Self.maxTotal) channels already")
                }
                let mine = table.values.filter { $0.client == r.origin.client }
                guard mine.count < Self.maxPerConnection else {
                    throw RequestFailure(.limit, "this connection has \(mine.count) channels (at most \(Self.maxPerConnection))")
                }
                guard !table.values.contains(where: { $0.segment === segment }) else {
                    throw RequestFailure(.badField, "segment \(q.handle) already carries a channel")
                }
                var id: UInt64
                repeat { id = mro_random_u64() } while table[id] != nil
                let c = Channel(id: id, segment: segment, client: r.origin.client, peer: peer, spinNs: UInt64(spin) * 1000)
                table[id] = c
                return c
            }
            handedOver = true
            ctrl.pointee.daemon_epoch = epoch
            let state = segment.base + MemoryLayout<moe_channel_ctrl>.offset(of: \.state)!
            mro_store_u32(state.assumingMemoryBound(to: UInt32.self), UInt32(MOE_CHANNEL_OPEN))
            let thread = Thread { [self] in
                channel.serve(core: core, registry: registry)
                channels.withLock { _ = $0.removeValue(forKey: channel.id) }
                registry.checkin(segment)
            }
            thread.name = "moe-channel"
            thread.start()
            logger.debug("channel \(channel.id) opened by \(r.origin.client) on segment \(q.handle), spin \(spin) µs")
            var out = moe_channel_open_resp()
            out.channel_id = channel.id
            out.daemon_epoch = epoch
            out.spin_us = spin
            out.max_channels = UInt32(Self.maxPerConnection)
            return Reply(answering: r, message: "channel \(channel.id)", body: .channel(out))
        } catch {
            return r.refused(error)
        }
    }

    /// (`stop` runs under the table's lock: a channel thread leaves the table before it returns
    /// its segment, so a channel found here still has its page mapped.)
    func close(_ id: UInt64, _ r: InboundRequest) -> Reply {
        let found = channels.withLock { table -> Bool in
            guard let c = table[id], c.client == r.origin.client else { return false }
            c.stop()
            return true
        }
        guard found else { return r.refused(RequestFailure(.badField, "channel \(id) is not open on this connection")) }
        return Reply(answering: r, message: "channel \(id) closing")
    }

    /// Stops every channel (shutdown) and waits, at most `timeoutMs`, for their threads.
    func closeAll(timeoutMs: Int = 2000) {
        channels.withLock { table in for c in table.values { c.stop() } }
        let deadline = mro_now_ns() + UInt64(timeoutMs) * 1_000_000
        while count > 0 && mro_now_ns() < deadline { usleep(1000) }
    }
}

/// One channel: its segment (checked out for the channel's life) and its thread's state.
final class Channel: @unchecked Sendable {
    let id: UInt64
    let segment: SharedSegment
    let client: ClientKey
    let peer: PeerCredentials
    let spinNs: UInt64
    private let stopping = Atomic<Bool>(false)

    init(id: UInt64, segment: SharedSegment, client: ClientKey, peer: PeerCredentials, spinNs: UInt64) {
        self.id = id
        self.segment = segment
        self.client = client
        self.peer = peer
        self.spinNs = spinNs
    }

    private var ctrl: UnsafeMutablePointer<moe_channel_ctrl> { segment.base.assumingMemoryBound(to: moe_channel_ctrl.self) }

    /// A 32-bit word of the control page, by its offset (the header asserts them).
    private func word(_ keyPath: KeyPath<moe_channel_ctrl, UInt32>) -> UnsafeMutablePointer<UInt32> {
        (segment.base + MemoryLayout<moe_channel_ctrl>.offset(of: keyPath)!).assumingMemoryBound(to: UInt32.self)
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        _ = mro_futex_wake(word(\.req_seq), 1)
    }

    /// The channel thread: wait for req_seq to move, answer, repeat — until stopped, or the
    /// segment is no longer registered to its connection, or it shrank.
    func serve(core: RequestCore, registry: SegmentRegistry) {
        mro_set_thread_name("moe-channel")
        let c = ctrl
        let reqSeq = word(\.req_seq), respSeq = word(\.resp_seq), state = word(\.state)
        let daemonSleeping = word(\.daemon_sleeping), clientSleeping = word(\.client_sleeping)
        let origin = ChannelOrigin(client: client, peer: peer)
        // The last request answered, not the last one posted: a client may ring before this thread runs.
        var last = mro_load_u32(respSeq)
        var lastAnswerNs = mro_now_ns()
        let headerSize = MemoryLayout<moe_req_header>.size
        var frame = [UInt8](repeating: 0, count: headerSize + MemoryLayout<moe_route_req_v2>.size)
        while !stopping.load(ordering: .relaxed) {
            var seq = mro_load_u32(reqSeq)
            if seq == last {
                // Spin, yielding the CPU every 8 rounds: a client sharing this CPU must get to run
                // (without the yield a same-CPU 1-token route cost ~58 µs, with it ~6 µs).
                let spinUntil = lastAnswerNs + spinNs
                var rounds = 0
                while seq == last && mro_now_ns() < spinUntil && !stopping.load(ordering: .relaxed) {
                    rounds += 1
                    if rounds & 7 == 0 { sched_yield() } else { mro_cpu_relax() }
                    seq = mro_load_u32(reqSeq)
                }
                if seq == last {
                    guard !segment.faulted, registry.isLive(segment) else { break }
                    mro_store_u32(daemonSleeping, 1)
                    if mro_load_u32(reqSeq) == last && !stopping.load(ordering: .relaxed) {
                        _ = mro_futex_wait(reqSeq, last, ChannelTable.idleCheckNs)
                    }
                    mro_store_u32(daemonSleeping, 0)
                    continue
                }
            }
            let t0 = mro_now_ns()
            mro_fence()
            // The one read of the client's descriptor: everything below works on this copy.
            let requestID = c.pointee.request_id
            var request = c.pointee.request
            frame.withUnsafeMutableBytes { out in
                var h = moe_req_header()
                h.magic = MOE_PROTOCOL_MAGIC
                h.version = 2
                h.op = UInt16(MOE_OP_ROUTE.rawValue)
                h.request_id = requestID
                h.body_size = UInt32(MemoryLayout<moe_route_req_v2>.size)
                withUnsafeBytes(of: h) { out.copyMemory(from: $0) }
                withUnsafeBytes(of: request) { UnsafeMutableRawBufferPointer(rebasing: out[headerSize...]).copyMemory(from: $0) }
            }
            origin.receivedNs = t0
            let reply: Reply
            if let refusal = Self.precheck(&request, channelHandle: segment.handle) {
                reply = Reply(op: UInt16(MOE_OP_ROUTE.rawValue), requestID: requestID, version: 2, failure: refusal,
                              body: .route(RouteResult(tokens: request.base.tokens, layerID: request.base.layer_id, version: 2)))
            } else {
                switch frame.withUnsafeBytes({ core.decode(ChannelFrame(bytes: $0), from: origin) }) {
                case .refused(let r): reply = r
                case .request(let inbound): reply = core.answer(inbound)
                }
            }
            core.record(reply, from: origin)
            write(reply, requestID: requestID, into: c)
            c.pointee.compute_path_ns = mro_now_ns() &- t0
            mro_store_u32(respSeq, seq)
            if mro_load_u32(clientSleeping) != 0 { _ = mro_futex_wake(respSeq, 1) }
            last = seq
            lastAnswerNs = mro_now_ns()
        }
        if !segment.faulted {
            mro_store_u32(state, UInt32(MOE_CHANNEL_CLOSED))
            _ = mro_futex_wake(respSeq, Int32.max)
        }
    }

    /// Refusals the ZeroMQ path has no equivalent for: a channel request carries no frames, so
    /// an inline buffer is a client error; and no buffer may lie in the channel's own control page.
    static func precheck(_ q: inout moe_route_req_v2, channelHandle: UInt64) -> RequestFailure? {
        let refs = [("input", q.base.input), ("weights", q.base.weights), ("ids", q.base.ids), ("token_ids", q.token_ids), ("mask", q.mask)]
        for (name, ref) in refs {
            if ref.kind == MOE_BUF_INLINE.rawValue {
                return RequestFailure(.badField, "\(name) is inline: a channel request carries every buffer in shared memory (kind 1), or none (kind 2)")
            }
            if ref.kind == MOE_BUF_SHM.rawValue && ref.handle == channelHandle && ref.offset < UInt64(MOE_CHANNEL_CTRL_BYTES) {
                return RequestFailure(.outOfBounds, "\(name) starts at \(ref.offset), inside the channel's \(MOE_CHANNEL_CTRL_BYTES)-byte control page")
            }
        }
        return nil
    }

    private func write(_ reply: Reply, requestID: UInt64, into c: UnsafeMutablePointer<moe_channel_ctrl>) {
        c.pointee.answer_request_id = requestID
        c.pointee.status = reply.status.rawValue
        var response = moe_route_resp_v2()
        if case .route(let result) = reply.body { response = result.wireV2 }
        c.pointee.response = response
        var text = reply.message
        text.withUTF8 { utf8 in
            var n = min(utf8.count, 256)
            if n < utf8.count { while n > 0 && utf8[n] & 0xC0 == 0x80 { n -= 1 } }
            withUnsafeMutableBytes(of: &c.pointee.message) { out in
                out.copyMemory(from: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(utf8)[..<n]))
            }
            c.pointee.message_len = UInt32(n)
        }
    }
}

/// Who sent a channel request: the connection that opened the channel (its registrations, its
/// credentials), with the time the request was seen.
private final class ChannelOrigin: RequestOrigin, @unchecked Sendable {
    let transport = ClientKey.Transport.ipc
    let client: ClientKey
    let peer: PeerCredentials?
    let connectionFD: Int32 = -1
    var receivedNs: UInt64 = 0

    init(client: ClientKey, peer: PeerCredentials) {
        self.client = client
        self.peer = peer
    }
}

/// The copied descriptor as a one-frame request (header + body), for the shared decoder.
private struct ChannelFrame: RequestFrames {
    let bytes: UnsafeRawBufferPointer
    var frameCount: Int { 1 }
    func frame(_ index: Int) -> UnsafeRawBufferPointer { bytes }
}
