import CZMQ
import Dispatch
import Logging
import Synchronization

/// Worker threads for requests too large to run on the I/O thread. Each worker sends its
/// answers to the I/O thread over its own inproc PUSH socket, since only the I/O thread may
/// touch the client-facing ROUTER sockets.
final class WorkerPool: Sendable {
    static let resultsEndpoint = "inproc://moe-routerd-results"

    private let jobs = Mutex<[IncomingRequest?]>([])
    private let available = DispatchSemaphore(value: 0)
    private let threads: Mutex<[ServiceThread]> = Mutex([])

    /// Starts `count` workers answering through `handler`. The results endpoint must be bound.
    init(count: Int, context: ZMQContext, handler: RequestHandler, logger: Logger) {
        var started: [ServiceThread] = []
        for i in 0..<max(1, count) {
            let ready = DispatchSemaphore(value: 0)
            started.append(ServiceThread(name: "moe-worker-\(i)") { [self] in
                let push: ZMQSocket
                do {
                    push = try ZMQSocket(context, type: ZMQ_PUSH)
                    try push.connect(Self.resultsEndpoint)
                } catch {
                    logger.critical("worker \(i): \(error)")
                    ready.signal()
                    return
                }
                ready.signal()
                while let job = next() {
                    let reply = handler.handle(job)
                    var parts = [ZMQMessage([job.transport.rawValue, UInt8(job.envelope.count)])]
                    parts += job.envelope
                    parts += reply.encode()
                    do { try push.sendMultipart(parts) } catch {
                        logger.error("worker \(i): cannot hand back a reply: \(error)")
                    }
                }
                push.close()
            })
            ready.wait()
        }
        threads.withLock { $0 = started }
    }

    func submit(_ job: IncomingRequest) {
        jobs.withLock { $0.append(job) }
        available.signal()
    }

    private func next() -> IncomingRequest? {
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
