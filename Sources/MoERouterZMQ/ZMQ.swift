import CZMQ
import Dispatch
import Glibc
import Synchronization

/// A libzmq error: the errno-style code and libzmq's text for it.
public struct ZMQError: Error, CustomStringConvertible, Equatable {
    public let code: Int32
    public let function: String

    static func last(_ function: String) -> ZMQError { ZMQError(code: zmq_errno(), function: function) }

    public var isTerminated: Bool { code == ETERM }
    public var wouldBlock: Bool { code == EAGAIN }
    public var interrupted: Bool { code == EINTR }
    public var description: String { "\(function): \(String(cString: zmq_strerror(code)))" }
}

/// A libzmq context. Thread-safe; every socket keeps a strong reference to its context so the
/// context is terminated only after its last socket closed (see shared/SWIFT-NOTES.md).
public final class ZMQContext: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer

    public init(ioThreads: Int32 = 1) {
        raw = zmq_ctx_new()!
        zmq_ctx_set(raw, ZMQ_IO_THREADS, ioThreads)
        zmq_ctx_set(raw, ZMQ_BLOCKY, 0)
    }

    private let terminated = Atomic<Bool>(false)

    /// Makes blocked calls on every socket of this context return ETERM.
    public func shutdown() { zmq_ctx_shutdown(raw) }

    /// Terminates the context once every socket is closed: messages still queued on sockets
    /// closed with a linger are delivered (up to their linger) first. Waits at most `timeoutMs`
    /// (a socket left open would make `zmq_ctx_term` wait forever); returns false then.
    @discardableResult
    public func terminate(timeoutMs: Int) -> Bool {
        guard !terminated.exchange(true, ordering: .acquiringAndReleasing) else { return true }
        let done = DispatchSemaphore(value: 0)
        let raw = UncheckedPointer(value: raw)
        DispatchQueue.global().async {
            while zmq_ctx_term(raw.value) != 0 && zmq_errno() == EINTR {}
            done.signal()
        }
        return done.wait(timeout: .now() + .milliseconds(timeoutMs)) == .success
    }

    private struct UncheckedPointer: @unchecked Sendable { let value: UnsafeMutableRawPointer }

    deinit {
        guard !terminated.load(ordering: .acquiring) else { return }
        while zmq_ctx_term(raw) != 0 && zmq_errno() == EINTR {}
    }
}

/// One message part. The `zmq_msg_t` lives in the object's own allocation (tail-allocated, so
/// one malloc per message, not two) and never moves: libzmq keeps small payloads inside it.
public final class ZMQMessage: ManagedBuffer<Void, zmq_msg_t> {
    private static func make(_ initialise: (UnsafeMutablePointer<zmq_msg_t>) -> Void) -> ZMQMessage {
        let m = unsafeDowncast(create(minimumCapacity: 1) { _ in }, to: ZMQMessage.self)
        m.withUnsafeMutablePointerToElements(initialise)
        return m
    }

    /// An empty message (to receive into).
    public static func empty() -> ZMQMessage { make { zmq_msg_init($0) } }

    /// A message of `size` uninitialised bytes, to be filled through `mutableBytes`.
    public static func sized(_ size: Int) -> ZMQMessage { make { zmq_msg_init_size($0, size) } }

    /// A message of `size` (> 0) uninitialised bytes in a buffer this library allocates;
    /// `released` runs once libzmq is done with them — after writing them out, on its I/O
    /// thread, or when the message is dropped — so a caller can account for memory libzmq still
    /// holds for a peer that does not read.
    public static func sized(_ size: Int, released: @escaping @Sendable () -> Void) -> ZMQMessage {
        let data = malloc(max(size, 1))!
        let box = Unmanaged.passRetained(ReleaseAction(released)).toOpaque()
        return make { m in
            let rc = zmq_msg_init_data(m, data, size, { data, hint in
                free(data)
                Unmanaged<ReleaseAction>.fromOpaque(hint!).takeRetainedValue().run()
            }, box)
            if rc != 0 {  // ENOMEM: libzmq took nothing
                free(data)
                Unmanaged<ReleaseAction>.fromOpaque(box).takeRetainedValue().run()
                zmq_msg_init_size(m, size)
            }
        }
    }

    private final class ReleaseAction {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    public static func copying(_ bytes: UnsafeRawBufferPointer) -> ZMQMessage {
        let m = sized(bytes.count)
        if bytes.count > 0 { m.mutableBytes.copyMemory(from: bytes) }
        return m
    }

    public static func copying(_ array: [UInt8]) -> ZMQMessage { array.withUnsafeBytes { copying($0) } }

    deinit { withUnsafeMutablePointerToElements { _ = zmq_msg_close($0) } }

    /// The message itself, valid while this object lives.
    var msg: UnsafeMutablePointer<zmq_msg_t> { withUnsafeMutablePointerToElements { $0 } }

    public var count: Int { zmq_msg_size(msg) }
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: zmq_msg_data(msg), count: count) }
    public var mutableBytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: zmq_msg_data(msg), count: count)
    }
    public var hasMore: Bool { zmq_msg_more(msg) != 0 }

    /// A metadata property of a received message ("User-Id", "Peer-Address", ...).
    public func property(_ name: String) -> String? {
        guard let p = zmq_msg_gets(msg, name) else { return nil }
        return String(cString: p)
    }

    /// A metadata property as libzmq's C string, valid while this message lives (no copy).
    public func rawProperty(_ name: String) -> UnsafePointer<CChar>? { zmq_msg_gets(msg, name) }

    /// The file descriptor of the connection the message arrived on (libzmq's ZMQ_SRCFD).
    public var sourceFD: Int32 { zmq_msg_get(msg, 2 /* ZMQ_SRCFD */) }

    public var array: [UInt8] { Array(bytes) }
}

/// A libzmq socket. Not thread-safe: create, use and close it on one thread.
public final class ZMQSocket {
    public let context: ZMQContext
    let raw: UnsafeMutableRawPointer
    private var closed = false

    public init(_ context: ZMQContext, type: Int32) throws(ZMQError) {
        guard let s = zmq_socket(context.raw, type) else { throw .last("zmq_socket") }
        self.context = context
        raw = s
        try set(ZMQ_LINGER, Int32(0))
    }

    public func set(_ option: Int32, _ value: Int32) throws(ZMQError) {
        var v = value
        guard zmq_setsockopt(raw, option, &v, MemoryLayout<Int32>.size) == 0 else { throw .last("zmq_setsockopt(\(option))") }
    }

    public func set(_ option: Int32, _ value: Int64) throws(ZMQError) {
        var v = value
        guard zmq_setsockopt(raw, option, &v, MemoryLayout<Int64>.size) == 0 else { throw .last("zmq_setsockopt(\(option))") }
    }

    public func set(_ option: Int32, _ value: [UInt8]) throws(ZMQError) {
        let rc = value.withUnsafeBytes { zmq_setsockopt(raw, option, $0.baseAddress, $0.count) }
        guard rc == 0 else { throw .last("zmq_setsockopt(\(option))") }
    }

    public func set(_ option: Int32, _ value: String) throws(ZMQError) {
        let rc = value.withCString { zmq_setsockopt(raw, option, $0, strlen($0)) }
        guard rc == 0 else { throw .last("zmq_setsockopt(\(option))") }
    }

    public func bind(_ endpoint: String) throws(ZMQError) {
        guard zmq_bind(raw, endpoint) == 0 else { throw .last("zmq_bind(\(endpoint))") }
    }

    public func connect(_ endpoint: String) throws(ZMQError) {
        guard zmq_connect(raw, endpoint) == 0 else { throw .last("zmq_connect(\(endpoint))") }
    }

    /// Sends one part; `more` marks further parts. The message is consumed (emptied) on success.
    public func send(_ message: ZMQMessage, more: Bool = false, dontWait: Bool = false) throws(ZMQError) {
        let flags = (more ? ZMQ_SNDMORE : 0) | (dontWait ? ZMQ_DONTWAIT : 0)
        while zmq_msg_send(message.msg, raw, flags) < 0 {
            let e = ZMQError.last("zmq_msg_send")
            if !e.interrupted { throw e }
        }
    }

    public func send(bytes: [UInt8], more: Bool = false) throws(ZMQError) {
        try send(ZMQMessage.copying(bytes), more: more)
    }

    /// Receives one part into a new message.
    public func receive(dontWait: Bool = false) throws(ZMQError) -> ZMQMessage {
        let m = ZMQMessage.empty()
        while zmq_msg_recv(m.msg, raw, dontWait ? ZMQ_DONTWAIT : 0) < 0 {
            let e = ZMQError.last("zmq_msg_recv")
            if !e.interrupted { throw e }
        }
        return m
    }

    /// Receives every part of one multipart message.
    public func receiveMultipart(dontWait: Bool = false) throws(ZMQError) -> [ZMQMessage] {
        var parts: [ZMQMessage] = []
        parts.reserveCapacity(4)
        parts.append(try receive(dontWait: dontWait))
        while parts[parts.count - 1].hasMore { parts.append(try receive()) }
        return parts
    }

    public func sendMultipart(_ parts: [ZMQMessage]) throws(ZMQError) {
        for (i, p) in parts.enumerated() { try send(p, more: i < parts.count - 1) }
    }

    /// Sends every part without blocking; false (nothing sent, `parts` untouched) when the
    /// first part finds the pipe full. libzmq accepts a multipart message whole or not at all.
    public func trySendMultipart(_ parts: [ZMQMessage]) throws(ZMQError) -> Bool {
        do { try send(parts[0], more: parts.count > 1, dontWait: true) } catch {
            if error.wouldBlock { return false }
            throw error
        }
        for i in parts.indices.dropFirst() { try send(parts[i], more: i < parts.count - 1) }
        return true
    }

    /// `zmq_poll` over `sockets` with the events asked for each; the events that occurred, in
    /// the same order. `timeoutMs` -1 waits without limit.
    public static func poll(_ sockets: [(socket: ZMQSocket, events: Int16)], timeoutMs: Int) throws(ZMQError) -> [Int16] {
        var items = sockets.map { zmq_pollitem_t(socket: $0.socket.raw, fd: 0, events: $0.events, revents: 0) }
        while zmq_poll(&items, Int32(items.count), timeoutMs) < 0 {
            let e = ZMQError.last("zmq_poll")
            if !e.interrupted { throw e }
        }
        return items.map(\.revents)
    }

    /// Starts a socket monitor publishing `events` on inproc `endpoint`.
    public func monitor(_ endpoint: String, events: Int32) throws(ZMQError) {
        guard zmq_socket_monitor(raw, endpoint, events) == 0 else { throw .last("zmq_socket_monitor") }
    }

    public func close() {
        if !closed {
            closed = true
            zmq_close(raw)
        }
    }

    deinit { close() }
}
