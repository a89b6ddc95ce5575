import CZMQ
import Dispatch
import Logging
import MoERouterZMQ
import Synchronization

/// Worker threads for requests too large to run on the I/O thread. Only the I/O thread may
/// touch the client-facing ROUTER, so each worker hands its answers back over its own inproc
/// DEALER connected to that same ROUTER (routing id "\0w" + index; see `IOLoop`).
final class WorkerPool: Sendable {
    /// A decoded request and the envelope its reply goes back on. Moves from the I/O thread to
    /// one worker, which alone touches its messages from then on.
    struct Job: @unchecked Sendable {
        let request: InboundRequest
        let envelope: ArraySlice<ZMQMessage>
    }

    private let jobs = Mutex<[Job?]>([])
    private let available = DispatchSemaphore(value: 0)
    private let threads: Mutex<[ServiceThread]> = Mutex([])
    /// The number of workers.
    let count: Int

    /// Starts `count` workers answering through `core`; `front` is the I/O thread's ROUTER
    /// endpoint (bound before this).
    init(count: Int, context: ZMQContext, front: String, core: RequestCore, logger: Logger) {
        self.count = max(1, count)
        var started: [ServiceThread] = []
        for i in 0..<self.count {
            let ready = DispatchSemaphore(value: 0)
            started.append(ServiceThread(name: "moe-worker-\(i)") { [self] in
                let out: ZMQSocket
                do {
                    out = try ZMQSocket(context, type: ZMQ_DEALER)
                    try out.set(ZMQ_ROUTING_ID, IOLoop.workerID(i))
                    try out.set(ZMQ_LINGER, Int32(1000))  // answers written just before stop() still arrive
                    try out.connect(front)
                } catch {
                    logger.critical("worker \(i): \(error)")
                    ready.signal()
                    return
                }
                ready.signal()
                while let job = next() {
                    let reply = core.answer(job.request)
                    core.record(reply, from: job.request.origin)
                    let parts = [ZMQMessage.copying([UInt8(job.envelope.count)])] + job.envelope + reply.encode()
                    do { try out.sendMultipart(parts) } catch {
                        logger.error("worker \(i): cannot hand back a reply: \(error)")
                    }
                }
                out.close()
            })
            ready.wait()
        }
        threads.withLock { $0 = started }
    }

    func submit(_ job: Job) {
        jobs.withLock { $0.append(job) }
        available.signal()
    }

    private func next() -> Job? {
        available.wait()
        return jobs.withLock { $0.removeFirst() }
    }

    /// Lets queued jobs finish, then stops and joins every worker.
    func stop() {
        let all = threads.withLock { $0 }
        for _ in all { jobs.withLock { $0.append(nil) }; available.signal() }
        for t in all { t.join() }
    }
}
