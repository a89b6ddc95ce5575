import CMoERouterdOS
import CZMQ
import Glibc
import Logging

/// The I/O thread's loop: receives requests, answers small ones in place, queues large ROUTEs,
/// forwards worker answers, and releases the registrations of vanished clients.
struct IOLoop {
    let server: RouterServer
    let ipc: ZMQSocket
    let tcp: ZMQSocket?
    let monitors: [ZMQSocket]
    let results: ZMQSocket
    let pool: WorkerPool
    let logger: Logger
    private var inFlight = 0
    private var lastSweepNs: UInt64 = 0
    private var draining = false

    init(server: RouterServer, ipc: ZMQSocket, tcp: ZMQSocket?, monitors: [ZMQSocket], results: ZMQSocket,
         pool: WorkerPool, logger: Logger) {
        self.server = server
        self.ipc = ipc
        self.tcp = tcp
        self.monitors = monitors
        self.results = results
        self.pool = pool
        self.logger = logger
    }

    private var handler: RequestHandler { server.handler }
    private var config: ServerConfig { server.config }

    /// Serves until `isStopping()` turns true (checked whenever the wake fd fires or each second).
    mutating func serve(wakeFD: Int32, isStopping: () -> Bool) throws {
        var poller = ZMQPoller()
        let ipcItem = poller.add(ipc)
        let tcpItem = tcp.map { poller.add($0) } ?? -1
        let resultsItem = poller.add(results)
        let wakeItem = poller.add(fd: wakeFD)
        // Monitors are not polled: every poll item costs syscalls on the latency path. They are
        // drained before each REGISTER (so a reused fd is never confused) and every 250 ms.
        while !isStopping() {
            let ready = try poller.poll(timeoutMs: 250)
            if ready.contains(resultsItem) { forwardResults() }
            if ready.contains(ipcItem) { receive(from: ipc, transport: .ipc) }
            if tcpItem >= 0 && ready.contains(tcpItem) { receive(from: tcp!, transport: .tcp) }
            if ready.contains(wakeItem) {
                var buf = [UInt8](repeating: 0, count: 64)
                _ = read(wakeFD, &buf, 64)
            }
            sweepDeadClients()
        }
    }

    /// Answers new requests with SHUTTING_DOWN until every queued request has been answered.
    mutating func drain(timeoutMs: Int) {
        draining = true
        let start = mro_now_ns()
        let deadline = start + UInt64(timeoutMs) * 1_000_000
        // A short grace period answers requests already on the wire with SHUTTING_DOWN
        // instead of dropping them with the connection.
        let grace = start + 200_000_000
        var poller = ZMQPoller()
        let ipcItem = poller.add(ipc)
        let tcpItem = tcp.map { poller.add($0) } ?? -1
        let resultsItem = poller.add(results)
        while (inFlight > 0 || mro_now_ns() < grace) && mro_now_ns() < deadline {
            guard let ready = try? poller.poll(timeoutMs: 50) else { break }
            if ready.contains(resultsItem) { forwardResults() }
            if ready.contains(ipcItem) { receive(from: ipc, transport: .ipc) }
            if tcpItem >= 0 && ready.contains(tcpItem) { receive(from: tcp!, transport: .tcp) }
        }
        if inFlight > 0 { logger.warning("shutdown: \(inFlight) request(s) still running after \(timeoutMs) ms") }
    }

    /// Forwards answers the workers produced after the drain (they finish before stop returns).
    mutating func flushResults() { forwardResults() }

    private mutating func receive(from socket: ZMQSocket, transport: ClientKey.Transport) {
        for _ in 0..<256 {
            let parts: [ZMQMessage]
            do { parts = try socket.receiveMultipart(dontWait: true) } catch {
                if !error.wouldBlock { logger.error("receive: \(error)") }
                return
            }
            handle(parts, on: socket, transport: transport)
        }
    }

    private mutating func handle(_ parts: [ZMQMessage], on socket: ZMQSocket, transport: ClientKey.Transport) {
        // [routing id, (empty delimiter from a REQ client), payload...]
        let split = parts.count > 2 && parts[1].count == 0 ? 2 : 1
        let envelope = Array(parts[..<split]), payload = Array(parts[split...])
        let peer: PeerCredentials? = transport == .ipc ? payload.first.flatMap(Self.credentials) : nil
        let request = IncomingRequest(transport: transport, envelope: envelope, frames: payload, peer: peer)
        if let failure = RequestParser.parse(request, defaultDeadlineMs: config.defaultDeadlineMs,
                                             maxMessageBytes: config.maxMessageBytes) {
            return answer(failure, to: envelope, on: socket)
        }
        if draining {
            return answer(request.failure(RequestFailure(.shuttingDown, "the daemon is shutting down")), to: envelope, on: socket)
        }
        if request.op == WireOp.route.rawValue && RouteExecutor.tokens(of: request) > UInt64(config.inlineTokens) {
            guard inFlight < config.queueDepth else {
                return answer(request.failure(RequestFailure(.busy, "\(inFlight) requests queued (queue_depth = \(config.queueDepth)); retry later")),
                              to: envelope, on: socket)
            }
            inFlight += 1
            handler.stats.queued.store(UInt64(inFlight), ordering: .relaxed)
            pool.submit(request)
            return
        }
        if request.op == WireOp.registerShm.rawValue { drainMonitors() }
        let reply = handler.handle(request)
        send(envelope, reply.encode(), on: socket)
    }

    private func answer(_ reply: Reply, to envelope: [ZMQMessage], on socket: ZMQSocket) {
        handler.stats.count(reply)
        send(envelope, reply.encode(), on: socket)
    }

    private func send(_ envelope: [ZMQMessage], _ frames: [ZMQMessage], on socket: ZMQSocket) {
        // A vanished peer's reply is dropped by the ROUTER; a full pipe drops it too (never blocks).
        do {
            for e in envelope { try socket.send(e, more: true, dontWait: true) }
            for (i, f) in frames.enumerated() { try socket.send(f, more: i < frames.count - 1, dontWait: true) }
        } catch {
            logger.debug("reply dropped: \(error)")
        }
    }

    private mutating func forwardResults() {
        while let parts = try? results.receiveMultipart(dontWait: true) {
            inFlight -= 1
            handler.stats.queued.store(UInt64(max(inFlight, 0)), ordering: .relaxed)
            guard parts.count >= 3, parts[0].count == 2 else { continue }
            let tag = parts[0].bytes
            let socket = tag[0] == ClientKey.Transport.tcp.rawValue ? tcp ?? ipc : ipc
            let n = Int(tag[1])
            send(Array(parts[1...n]), Array(parts[(n + 1)...]), on: socket)
        }
    }

    /// Disconnect events: release the registrations of the connection that closed.
    private func drainMonitors() {
        for (i, m) in monitors.enumerated() {
            while let event = try? m.receiveMultipart(dontWait: true) {
                guard event.count >= 1, event[0].count >= 6 else { continue }
                // Copy out: a pointer into the message would outlive `event` in optimised builds
                // (Swift may release it after its last use), and the read would see freed memory.
                let raw = event[0].array
                let kind = raw.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt16.self) }
                let fd = raw.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 2, as: Int32.self) }
                if Int32(kind) == ZMQ_EVENT_DISCONNECTED {
                    let transport: ClientKey.Transport = i == 0 ? .ipc : .tcp
                    let n = handler.registry.releaseClients(connectionFD: fd, transport: transport)
                    if n > 0 { logger.info("client disconnected; released \(n) registration(s)", metadata: ["fd": "\(fd)"]) }
                }
            }
        }
    }

    private mutating func sweepDeadClients() {
        let now = mro_now_ns()
        guard now - lastSweepNs > 250_000_000 else { return }
        lastSweepNs = now
        drainMonitors()
        let n = handler.registry.releaseDeadProcesses()
        if n > 0 { logger.info("released \(n) registration(s) of exited processes") }
    }

    /// The kernel's credentials of an ipc peer: from our ZAP user id, else libzmq's Peer-Address.
    static func credentials(_ frame: ZMQMessage) -> PeerCredentials? {
        if let user = frame.property("User-Id"), user.hasPrefix("ipc:"), let c = PeerCredentials(user) { return c }
        return frame.property("Peer-Address").flatMap(PeerCredentials.init)
    }
}
