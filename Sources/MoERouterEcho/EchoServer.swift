import CMoERouterdOS
import CZMQ
import Glibc
import Synchronization

/// The benches' baseline: a bare libzmq ROUTER that answers every message at once, with the
/// daemon's socket types and nothing else, so that "route / echo" measures what routing adds.
/// It uses libzmq's C API directly with its message parts allocated once: the baseline must not
/// cost more than the transport itself.
///
/// - `.mirror` sends every message back as it came (moe-router-latency-bench, in a process of
///   its own). A message whose last frame starts with "HOLD" and a UInt64 of nanoseconds is
///   answered after that much busy time: the transport's cost when the server is busy as long
///   as a kernel.
/// - `.sized` answers with the envelope and frames of the given sizes (moe-router-bench, on a
///   thread): a ROUTE answer's shape without computing it.
public final class EchoServer: @unchecked Sendable {
    public enum Answer: Sendable {
        case mirror
        case sized
    }

    /// "HOLD" in a held message's first four bytes.
    public static let holdMagic: UInt32 = 0x444C_4F48

    public let endpoint: String
    private let answer: Answer
    private let context: UnsafeMutableRawPointer
    private let socket: UnsafeMutableRawPointer
    private let replySizes = Mutex<[Int]>([])
    private var thread: pthread_t?

    /// Binds `endpoint`; `serve()` (or `start()`) answers.
    public init(endpoint: String, answer: Answer) throws(EchoError) {
        self.endpoint = endpoint
        self.answer = answer
        context = zmq_ctx_new()
        socket = zmq_socket(context, ZMQ_ROUTER)
        guard zmq_bind(socket, endpoint) == 0 else {
            let reason = String(cString: zmq_strerror(zmq_errno()))
            zmq_close(socket)
            zmq_ctx_term(context)
            throw EchoError(description: "echo server: cannot bind \(endpoint): \(reason)")
        }
    }

    /// The frame sizes of a `.sized` answer (after the envelope).
    public func setReplySizes(_ sizes: [Int]) { replySizes.withLock { $0 = sizes } }

    /// Answers until `stop()` (or the process ends).
    public func serve() {
        let parts: [UnsafeMutablePointer<zmq_msg_t>] = (0..<8).map { _ in .allocate(capacity: 1) }
        defer { parts.forEach { $0.deallocate() } }
        while true {
            var n = 0, more: Int32 = 1
            while more != 0 && n < parts.count {
                zmq_msg_init(parts[n])
                if zmq_msg_recv(parts[n], socket, 0) < 0 { return }  // ETERM: stopped
                more = zmq_msg_more(parts[n])
                n += 1
            }
            switch answer {
            case .mirror:
                holdIfAsked(parts[n - 1])
                for i in 0..<n { zmq_msg_send(parts[i], socket, i < n - 1 ? ZMQ_SNDMORE : 0) }
            case .sized:
                let sizes = replySizes.withLock { $0 }
                zmq_msg_send(parts[0], socket, sizes.isEmpty ? 0 : ZMQ_SNDMORE)
                for i in 1..<n { zmq_msg_close(parts[i]) }
                var frame = zmq_msg_t()
                for (i, size) in sizes.enumerated() {
                    zmq_msg_init_size(&frame, size)
                    zmq_msg_send(&frame, socket, i < sizes.count - 1 ? ZMQ_SNDMORE : 0)
                }
            }
        }
    }

    /// Serves on a thread of its own.
    public func start() {
        var t = pthread_t()
        pthread_create(&t, nil, { arg in
            Unmanaged<EchoServer>.fromOpaque(arg!).takeRetainedValue().serve()
            return nil
        }, Unmanaged.passRetained(self).toOpaque())
        thread = t
    }

    /// Stops serving (a `start()`ed thread is joined), closes the socket and removes an ipc
    /// socket file.
    public func stop() {
        zmq_ctx_shutdown(context)
        if let thread { pthread_join(thread, nil) }
        zmq_close(socket)
        zmq_ctx_term(context)
        if endpoint.hasPrefix("ipc://") { unlink(String(endpoint.dropFirst("ipc://".count))) }
    }

    private func holdIfAsked(_ last: UnsafeMutablePointer<zmq_msg_t>) {
        guard zmq_msg_size(last) >= 12, let p = zmq_msg_data(last), p.loadUnaligned(as: UInt32.self) == Self.holdMagic else { return }
        let until = mro_now_ns() + p.loadUnaligned(fromByteOffset: 4, as: UInt64.self)
        while mro_now_ns() < until {}
    }
}

public struct EchoError: Error, CustomStringConvertible {
    public let description: String
}
