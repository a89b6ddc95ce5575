import CMoERouterWire
import CMoERouterdOS
import Foundation
import Logging
import MoERouting
import Synchronization

/// Shared-memory request channels (issue 18; Include/moe_router_wire.h, "Channels"): a ROUTE
/// placed in a segment the client registered, announced by a futex doorbell instead of a
/// ZeroMQ message. Channels are served by `ChannelServer` threads (ChannelServer.swift): a pool
/// of `threads` that share them (the daemon's default: one per core), or one per channel
/// (`threads` 0). A server spins briefly after each answer (an adaptive, bounded budget per
/// channel) and then sleeps in one futex_waitv over its channels' doorbells, so an idle channel costs nothing and a host that calls back at once
/// finds its server awake. Every request goes through the same request core as ZeroMQ (decode,
/// checks, accounting) from a private copy of the descriptor.
final class ChannelTable: Sendable {
    static let maxPerConnection = 4
    static let maxTotal = 64
    static let defaultSpinUs: UInt32 = 50
    static let maxSpinUs: UInt32 = 2000
    /// How long a sleeping server waits before it looks whether its channels still exist (a
    /// closed connection, an unregistered segment).
    static let idleCheckNs: Int64 = 100_000_000

    /// This daemon process, as channels see it: a client that finds another epoch in its page
    /// talks to a restarted daemon.
    let epoch = mro_random_u64()
    /// Server threads: 0 gives each channel its own; n > 0 shares n threads among all channels.
    let threads: Int
    private let channels = Mutex<[UInt64: Channel]>([:])
    /// The pool (`threads` > 0); a per-channel server is known only to its thread.
    private let pool = Mutex<[ChannelServer]>([])
    private let registry: SegmentRegistry
    private let logger: Logger

    init(registry: SegmentRegistry, threads: Int = 0, logger: Logger) {
        self.registry = registry
        self.threads = threads
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
            assign(channel, core: core)
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

    /// Hands a new channel to a server: its own (a new thread), or the pool's: an idle one, else
    /// a new one while the pool is smaller than `threads`, else the least busy. (Pool threads
    /// stay, asleep, when their channels close.)
    private func assign(_ channel: Channel, core: RequestCore) {
        if threads == 0 {
            start(ChannelServer(channels: [channel], exitWhenEmpty: true), core: core)
            return
        }
        let (server, isNew) = pool.withLock { servers -> (ChannelServer, Bool) in
            if let idle = servers.first(where: { $0.load == 0 }) {
                idle.add(channel)
                return (idle, false)
            }
            if servers.count < threads {
                let s = ChannelServer(channels: [channel], exitWhenEmpty: false)
                servers.append(s)
                return (s, true)
            }
            let s = servers.min { $0.load < $1.load }!
            s.add(channel)
            return (s, false)
        }
        if isNew { start(server, core: core) }
    }

    private func start(_ server: ChannelServer, core: RequestCore) {
        let thread = Thread { [self] in
            server.run(core: core, registry: registry) { channel in
                // The channel has left its server: it is closed in its page and no thread
                // touches its segment any more.
                channels.withLock { _ = $0.removeValue(forKey: channel.id) }
                registry.checkin(channel.segment)
            }
        }
        thread.name = "moe-channel"
        thread.start()
    }

    /// (`stop` runs under the table's lock: a channel leaves the table before its segment is
    /// returned, so a channel found here still has its page mapped.)
    func close(_ id: UInt64, _ r: InboundRequest) -> Reply {
        let found = channels.withLock { table -> Bool in
            guard let c = table[id], c.client == r.origin.client else { return false }
            c.stop()
            return true
        }
        guard found else { return r.refused(RequestFailure(.badField, "channel \(id) is not open on this connection")) }
        return Reply(answering: r, message: "channel \(id) closing")
    }

    /// Stops every channel and server (shutdown) and waits, at most `timeoutMs`, for the
    /// channels to be released.
    func closeAll(timeoutMs: Int = 2000) {
        channels.withLock { table in for c in table.values { c.stop() } }
        pool.withLock { servers in for s in servers { s.stop() } }
        let deadline = mro_now_ns() + UInt64(timeoutMs) * 1_000_000
        while count > 0 && mro_now_ns() < deadline { usleep(1000) }
    }
}

/// One channel: its segment (checked out for the channel's life) and its server's state for it.
/// Only its server thread touches the mutable state; `stop` may come from any thread.
final class Channel: @unchecked Sendable {
    let id: UInt64
    let segment: SharedSegment
    let client: ClientKey
    let peer: PeerCredentials
    /// The spin budget's bound (the client's `spin_us`, or the default).
    let maxSpinNs: UInt64
    /// The adaptive budget: doubled (up to the bound) when a request came soon after a sleep
    /// began, halved (down to `minSpinNs`) when a sleep outlasted the bound — a host that
    /// computes between calls longer than the bound would only burn the spin.
    private(set) var spinNs: UInt64
    static let minSpinNs: UInt64 = 2000
    private let stopping = Atomic<Bool>(false)
    /// The last request answered, not the last one posted: a client may ring before its server runs.
    private var last: UInt32
    private var lastAnswerNs = mro_now_ns()
    private var sleptAtNs: UInt64 = 0

    init(id: UInt64, segment: SharedSegment, client: ClientKey, peer: PeerCredentials, spinNs: UInt64) {
        self.id = id
        self.segment = segment
        self.client = client
        self.peer = peer
        self.maxSpinNs = spinNs
        self.spinNs = spinNs
        ctrl = segment.base.assumingMemoryBound(to: moe_channel_ctrl.self)
        // The control page's words, found once (a key path per request would cost reference
        // counting on every request): the segment stays mapped for the channel's life.
        func word(_ keyPath: KeyPath<moe_channel_ctrl, UInt32>) -> UnsafeMutablePointer<UInt32> {
            (segment.base + MemoryLayout<moe_channel_ctrl>.offset(of: keyPath)!).assumingMemoryBound(to: UInt32.self)
        }
        reqSeq = word(\.req_seq)
        respSeq = word(\.resp_seq)
        daemonSleeping = word(\.daemon_sleeping)
        clientSleeping = word(\.client_sleeping)
        stateWord = word(\.state)
        last = mro_load_u32(respSeq)
    }

    private let ctrl: UnsafeMutablePointer<moe_channel_ctrl>
    private let reqSeq, respSeq, daemonSleeping, clientSleeping, stateWord: UnsafeMutablePointer<UInt32>

    var isStopping: Bool { stopping.load(ordering: .relaxed) }

    /// (Wakes the server through the doorbell it sleeps on.)
    func stop() {
        stopping.store(true, ordering: .relaxed)
        _ = mro_futex_wake(reqSeq, 1)
    }

    /// When the spin after the last answer ends.
    var spinDeadline: UInt64 { lastAnswerNs &+ spinNs }

    /// Whether its client calls back within the spin's bound (the budget has not shrunk to its
    /// least, as it does for a host that computes longer between calls).
    var callsBackSoon: Bool { spinNs > Self.minSpinNs }

    /// The word a sleeping server waits on, and the value it waits while.
    var doorbell: (UnsafeMutablePointer<UInt32>, UInt32) { (reqSeq, last) }

    func willSleep() {
        mro_store_u32(daemonSleeping, 1)
        sleptAtNs = mro_now_ns()
    }

    func woke() { mro_store_u32(daemonSleeping, 0) }

    /// Closed in its page: a waiting client wakes and sees it (unless the page may be gone).
    func close() {
        guard !segment.faulted else { return }
        mro_store_u32(stateWord, UInt32(MOE_CHANNEL_CLOSED))
        _ = mro_futex_wake(respSeq, Int32.max)
    }

    /// Answers the posted request, if req_seq moved; returns when it answered (0: nothing was
    /// posted). `seenAt`: the time the server last read, if it just did (0: read it now).
    /// `layers`: the server's copy of the served layers.
    func answerIfPosted(core: RequestCore, layers: inout LayerSlot.Reader, seenAt: UInt64 = 0) -> UInt64 {
        let seq = mro_load_u32(reqSeq)
        guard seq != last else { return 0 }
        let t0 = seenAt != 0 ? seenAt : mro_now_ns()
        if sleptAtNs != 0 {
            // The request came after a sleep: a longer spin would have caught it if it came
            // within the bound.
            let gap = t0 &- lastAnswerNs
            spinNs = gap <= maxSpinNs ? min(maxSpinNs, max(spinNs * 2, Self.minSpinNs)) : max(Self.minSpinNs, spinNs / 2)
            sleptAtNs = 0
        }
        let c = ctrl
        // The one read of the client's descriptor: everything below works on this copy. (The
        // sequentially consistent load of req_seq above orders these reads after it.)
        let requestID = c.pointee.request_id
        var request = c.pointee.request
        // (No `Reply`, no `InboundRequest`: the request core's ROUTE, its checks and its
        // accounting, straight from the copy into the page — ~0.1 µs of a 1-token route.)
        var answer: RouteAnswer
        do throws(RequestFailure) {
            if let refusal = Self.precheck(&request, channelHandle: segment.handle) { throw refusal }
            let q = try core.decoder.route(request)
            var call = RouteCall(version: 2, transport: .ipc, client: client)
            // The channel holds its segment checked out: buffers in it need no checkout.
            call.held = Unmanaged.passUnretained(segment)
            call.catalog = layers.current(core.layers)
            answer = core.route(q, call)
        } catch {
            answer = RouteAnswer(result: RouteResult(tokens: request.base.tokens, layerID: request.base.layer_id, version: 2),
                                 failure: error)
        }
        core.record(answer, receivedNs: t0)
        write(answer, requestID: requestID, into: c)
        let done = mro_now_ns()
        c.pointee.compute_path_ns = done &- t0
        mro_store_u32(respSeq, seq)
        if mro_load_u32(clientSleeping) != 0 { _ = mro_futex_wake(respSeq, 1) }
        last = seq
        lastAnswerNs = done
        return done
    }

    /// Refusals the ZeroMQ path has no equivalent for: a channel request carries no frames, so
    /// an inline buffer is a client error; and no buffer may lie in the channel's own control page.
    static func precheck(_ q: inout moe_route_req_v2, channelHandle: UInt64) -> RequestFailure? {
        // Five calls, not a loop over an array of them: this runs for every request.
        func check(_ name: StaticString, _ ref: moe_buffer_ref) -> RequestFailure? {
            if ref.kind == MOE_BUF_INLINE.rawValue {
                return RequestFailure(.badField, "\(name) is inline: a channel request carries every buffer in shared memory (kind 1), or none (kind 2)")
            }
            if ref.kind == MOE_BUF_SHM.rawValue && ref.handle == channelHandle && ref.offset < UInt64(MOE_CHANNEL_CTRL_BYTES) {
                return RequestFailure(.outOfBounds, "\(name) starts at \(ref.offset), inside the channel's \(MOE_CHANNEL_CTRL_BYTES)-byte control page")
            }
            return nil
        }
        return check("input", q.base.input) ?? check("weights", q.base.weights) ?? check("ids", q.base.ids)
            ?? check("token_ids", q.token_ids) ?? check("mask", q.mask)
    }

    private func write(_ answer: RouteAnswer, requestID: UInt64, into c: UnsafeMutablePointer<moe_channel_ctrl>) {
        c.pointee.answer_request_id = requestID
        c.pointee.status = answer.status.rawValue
        c.pointee.response = answer.result.wireV2
        var text = answer.message  // (the text ZeroMQ's reply carries)
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
