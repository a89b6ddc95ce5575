import CMoERouterdOS
import CZMQ
import Glibc
import Logging
import MoERouterZMQ

/// The I/O thread's loop. One ROUTER socket (`front`) carries everything: ipc clients, the tcp
/// proxy and the workers' answers all arrive on it, so the loop blocks in a single
/// `zmq_msg_recv` exactly like a bare echo server — no `zmq_poll` over several sockets, whose
/// per-socket mailbox checks cost a dozen syscalls per request.
///
/// Who sent a message: ipc peers pass our ZAP handler, so their frames carry a User-Id
/// ("ipc:UID:GID:PID"); internal peers connect over inproc, which has no ZAP and no metadata,
/// and use the fixed routing ids below. They connect before the ipc endpoint is bound, and a
/// ROUTER refuses a second peer with a routing id already in use, so no client can take theirs;
/// a message without metadata from any other id is dropped.
struct IOLoop {
    static let frontInproc = "inproc://moe-routerd-front"
    /// The routing id of the DEALER that relays the tcp ROUTER (see `TCPRelay`).
    static let tcpRelayID: [UInt8] = [0, 0x74, 0x63, 0x70]  // "\0tcp"
    /// The routing id of worker `index`'s DEALER ("\0w" + index).
    static func workerID(_ index: Int) -> [UInt8] { [0, 0x77] + Array(String(index).utf8) }
    /// How long one blocking receive waits before the loop checks for stop and housekeeping.
    static let receiveTimeoutMs: Int32 = 100
    /// The least time between two releases of free heap memory (`releaseMemoryWhenIdle`).
    static let trimIntervalNs: UInt64 = 1_000_000_000

    /// What the loop needs of the daemon besides its sockets.
    struct Daemon {
        let core: RequestCore
        let connections: any ConnectionTracking
        let clients: ActiveClients
        let stats: ServerStats
        let queueDepth: Int
    }

    let daemon: Daemon
    let front: ZMQSocket
    let monitor: ZMQSocket
    let pool: WorkerPool
    let logger: Logger
    /// The internal peers' routing ids: the workers', and the relay's when tcp is served.
    private let workerIDs: [[UInt8]]
    private let relayID: [UInt8]?
    private var inFlight = 0
    private var lastSweepNs: UInt64 = 0
    private var shedLogged: UInt = 0
    private var lastTrimNs: UInt64 = 0
    private var messagesSinceTrim = 0
    private var draining = false
    private var credentials = CredentialCache()
    private var activity = ClientActivity()

    init(daemon: Daemon, front: ZMQSocket, monitor: ZMQSocket, pool: WorkerPool, servesTCP: Bool,
         logger: Logger) throws(ZMQError) {
        workerIDs = (0..<pool.count).map(Self.workerID)
        relayID = servesTCP ? Self.tcpRelayID : nil
        self.daemon = daemon
        self.front = front
        self.monitor = monitor
        self.pool = pool
        self.logger = logger
        try front.set(ZMQ_RCVTIMEO, Self.receiveTimeoutMs)
    }

    private var core: RequestCore { daemon.core }

    /// Serves until `isStopping()` turns true (checked after every message and every
    /// `receiveTimeoutMs` when idle).
    mutating func serve(isStopping: () -> Bool) {
        while !isStopping() {
            if receiveOne() { messagesSinceTrim += 1 } else { releaseMemoryWhenIdle() }
            sweepDeadClients()
        }
    }

    /// After traffic, once a whole receive timeout passed without a message: give the heap's
    /// free pages back (a burst of large inline requests otherwise leaves glibc holding tens of
    /// MB). At most every `trimIntervalNs`, and never while messages arrive, so it costs the
    /// request path nothing.
    private mutating func releaseMemoryWhenIdle() {
        let now = mro_now_ns()
        guard messagesSinceTrim > 0, now &- lastTrimNs >= Self.trimIntervalNs else { return }
        messagesSinceTrim = 0
        lastTrimNs = now
        _ = mro_release_free_memory()
    }

    /// Answers new requests with SHUTTING_DOWN until every queued request has been answered.
    mutating func drain(timeoutMs: Int) {
        draining = true
        let start = mro_now_ns()
        let deadline = start + UInt64(timeoutMs) * 1_000_000
        // Requests already on the wire are answered SHUTTING_DOWN instead of dropped with the
        // connection: reading goes on until the sockets have been quiet for 200 ms (the socket
        // file is gone, so only connected clients can still send), bounded by the drain timeout.
        let quiet: UInt64 = 200_000_000
        var lastMessage = start
        var drained = 0
        while (inFlight > 0 || mro_now_ns() &- lastMessage < quiet) && mro_now_ns() < deadline {
            if receiveOne() { lastMessage = mro_now_ns(); drained += 1 }
        }
        logger.debug("drain: \(drained) message(s) in \((mro_now_ns() - start) / 1_000_000) ms, \(inFlight) in flight")
        if inFlight > 0 { logger.warning("shutdown: \(inFlight) request(s) still running after \(timeoutMs) ms") }
    }

    /// Forwards answers the workers produced after the drain (they finish before stop returns;
    /// their messages may still be on the way through inproc), waiting up to `timeoutMs`.
    mutating func flushResults(timeoutMs: Int) {
        let deadline = mro_now_ns() + UInt64(timeoutMs) * 1_000_000
        while inFlight > 0 && mro_now_ns() < deadline {
            if let parts = try? front.receiveMultipart() { dispatch(parts) }
        }
        if inFlight > 0 { logger.warning("shutdown: \(inFlight) answer(s) never came back from the workers") }
    }

    /// Receives and handles one message; false when the receive timed out (or failed).
    @discardableResult
    private mutating func receiveOne() -> Bool {
        let parts: [ZMQMessage]
        do { parts = try front.receiveMultipart() } catch {
            if !error.wouldBlock && !error.isTerminated { logger.error("receive: \(error)") }
            return false
        }
        dispatch(parts)
        return true
    }

    private mutating func dispatch(_ parts: [ZMQMessage]) {
        guard parts.count >= 2 else { return }
        let peer: PeerCredentials?? = withExtendedLifetime(parts) {
            parts[1].rawProperty("User-Id").map { credentials.lookup($0, parts[parts.count > 2 && parts[1].count == 0 ? 2 : 1]) }
        }
        if let peer {
            // [routing id, (empty delimiter from a REQ client), payload...]
            let split = parts.count > 2 && parts[1].count == 0 ? 2 : 1
            return handle(parts, payloadStart: split, clientIDPart: 0, transport: .ipc, peer: peer)
        }
        let sender = parts[0].bytes
        if let relayID, sender.elementsEqual(relayID) {
            // [relay id, tcp client id, (empty delimiter), payload...]: the reply goes back the same way.
            guard parts.count >= 3 else { return }
            let split = parts.count > 3 && parts[2].count == 0 ? 3 : 2
            return handle(parts, payloadStart: split, clientIDPart: 1, transport: .tcp, peer: nil)
        }
        if workerIDs.contains(where: { sender.elementsEqual($0) }) { return forwardResult(parts) }
        logger.warning("dropped a message from an unauthenticated peer")
    }

    private mutating func handle(_ parts: [ZMQMessage], payloadStart: Int, clientIDPart: Int,
                                 transport: ClientKey.Transport, peer: PeerCredentials?) {
        let incoming = ZMQRequest(transport: transport, parts: parts, payloadStart: payloadStart,
                                  clientIDPart: clientIDPart, peer: peer)
        activity.note(incoming, in: daemon.clients)
        let envelope = incoming.envelope
        let request: InboundRequest
        switch core.decode(incoming, from: incoming) {
        case .request(let r): request = r
        case .refused(let refusal): return answer(refusal, from: incoming, to: envelope)
        }
        if draining {
            return answer(request.refused(RequestFailure(.shuttingDown, "the daemon is shutting down")), from: incoming, to: envelope)
        }
        if core.isLarge(request) {
            guard inFlight < daemon.queueDepth else {
                return answer(request.refused(RequestFailure(.busy, "\(inFlight) requests queued (queue_depth = \(daemon.queueDepth)); retry later")),
                              from: incoming, to: envelope)
            }
            inFlight += 1
            daemon.stats.queued.store(UInt64(inFlight), ordering: .relaxed)
            pool.submit(WorkerPool.Job(request: request, envelope: envelope))
            return
        }
        if request.op == .registerShm { drainMonitor() }
        answer(core.answer(request), from: incoming, to: envelope)
    }

    /// Sends a reply made on this thread, counting it once.
    private func answer(_ reply: Reply, from origin: ZMQRequest, to envelope: ArraySlice<ZMQMessage>) {
        core.record(reply, from: origin)
        send(envelope, head: reply.encodeFirstFrame(), reply.frames[...])
    }

    /// Sends `envelope`, then `head` (if any), then `tail`, as one message. A vanished peer's
    /// reply is dropped by the ROUTER; a full pipe drops it too (never blocks).
    private func send(_ envelope: ArraySlice<ZMQMessage>, head: ZMQMessage? = nil, _ tail: ArraySlice<ZMQMessage>) {
        do {
            for e in envelope { try front.send(e, more: true, dontWait: true) }
            if let head { try front.send(head, more: !tail.isEmpty, dontWait: true) }
            for i in tail.indices { try front.send(tail[i], more: i < tail.endIndex - 1, dontWait: true) }
        } catch {
            logger.debug("reply dropped: \(error)")
        }
    }

    /// A worker's answer: [worker id, envelope size, envelope..., reply frames...].
    private mutating func forwardResult(_ parts: [ZMQMessage]) {
        inFlight -= 1
        daemon.stats.queued.store(UInt64(max(inFlight, 0)), ordering: .relaxed)
        guard parts.count >= 4, parts[1].count == 1 else { return }
        let n = Int(parts[1].bytes[0])
        guard n >= 1, parts.count > n + 2 else { return }
        send(parts[2..<(n + 2)], parts[(n + 2)...])
    }

    /// Disconnect events: release the registrations of the connection that closed.
    private func drainMonitor() {
        while let event = try? monitor.receiveMultipart(dontWait: true) {
            guard event.count >= 1, event[0].count >= 6 else { continue }
            // Copy out: a pointer into the message would outlive `event` in optimised builds
            // (Swift may release it after its last use), and the read would see freed memory.
            let raw = event[0].array
            let kind = raw.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt16.self) }
            let fd = raw.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 2, as: Int32.self) }
            if Int32(kind) == ZMQ_EVENT_DISCONNECTED {
                let n = daemon.connections.connectionClosed(fd: fd, transport: .ipc)
                if n > 0 { logger.info("client disconnected; released \(n) registration(s)", metadata: ["fd": "\(fd)"]) }
            }
        }
    }

    private mutating func sweepDeadClients() {
        let now = mro_now_ns()
        guard now - lastSweepNs > 250_000_000 else { return }
        lastSweepNs = now
        drainMonitor()
        let n = daemon.connections.releaseDeadProcesses()
        if n > 0 { logger.info("released \(n) registration(s) of exited processes") }
        let shed = mro_shed_connections()
        if shed != shedLogged {
            logger.warning("out of file descriptors: \(shed - shedLogged) connection(s) closed unaccepted (\(shed) in all)")
            shedLogged = shed
        }
    }
}

/// The kernel's credentials of ipc peers by their ZAP User-Id, so the common case — the same
/// few connections sending request after request — costs a string compare, not a parse.
struct CredentialCache {
    private var entries: [(user: [UInt8], credentials: PeerCredentials?)] = []

    mutating func lookup(_ user: UnsafePointer<CChar>, _ frame: ZMQMessage) -> PeerCredentials? {
        let length = strlen(user)
        let bytes = UnsafeRawBufferPointer(start: user, count: length)
        if let hit = entries.first(where: { $0.user.elementsEqual(bytes) }) { return hit.credentials }
        let credentials = Self.parse(frame)
        if entries.count == 64 { entries.removeFirst() }
        entries.append((Array(bytes), credentials))
        return credentials
    }

    /// From our ZAP user id "ipc:UID:GID:PID", else libzmq's Peer-Address.
    static func parse(_ frame: ZMQMessage) -> PeerCredentials? {
        if let user = frame.property("User-Id"), user.hasPrefix("ipc:"), let c = PeerCredentials(user) { return c }
        return frame.property("Peer-Address").flatMap(PeerCredentials.init)
    }
}

/// Tells `ActiveClients` which clients sent requests, at most once a second per client: the
/// common case — the same few connections sending request after request — costs a short byte
/// compare, not a locked dictionary update.
struct ClientActivity {
    private var recent: [(client: ClientKey, notedNs: UInt64)] = []

    mutating func note(_ request: ZMQRequest, in clients: ActiveClients) {
        let id = request.routingID.bytes, now = request.receivedNs
        if let i = recent.firstIndex(where: { $0.client.transport == request.transport && $0.client.routingID.elementsEqual(id) }) {
            guard now &- recent[i].notedNs >= 1_000_000_000 else { return }
            recent[i].notedNs = now
        } else {
            if recent.count == 32 { recent.removeFirst() }
            recent.append((request.client, now))
        }
        clients.note(request.client, at: now)
    }
}
