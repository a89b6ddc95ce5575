import Glibc
import MoERouting
import Synchronization

/// Every client's shared-memory registrations. Thread-safe.
///
/// A registration belongs to the connection that made it: another connection can neither use
/// nor unregister it (it gets UNKNOWN_HANDLE, exactly as for a handle that never existed).
/// Requests check a segment out (reference count up) and in again; an unregister or a vanished
/// client while a request holds the segment only marks it, and the last check-in releases it.
final class SegmentRegistry: ConnectionTracking {
    struct Limits: Sendable {
        var maxPerClient: Int
        var maxSegmentBytes: UInt64
        /// Per peer uid, over all its connections: registrations and mapped bytes. They keep one
        /// uid from filling the daemon's table of guarded mappings (`mro_guard_capacity`) or
        /// its address space for everyone else.
        var maxPerUID: Int = 1024
        var maxBytesPerUID: UInt64 = 1 << 40
    }

    private struct State {
        var segments: [UInt64: SharedSegment] = [:]
        var byClient: [ClientKey: Set<UInt64>] = [:]
        /// Connection fd and peer process of each client holding registrations.
        var connection: [ClientKey: (fd: Int32, pid: Int32)] = [:]
        /// Registrations and mapped bytes per peer uid.
        var byUID: [UInt32: (count: Int, bytes: UInt64)] = [:]
        var releasedClients: UInt64 = 0
    }

    private let state: Mutex<State>
    let limits: Limits
    /// Told of every mapping made and released (a device backend registers them for zero copy).
    private let backend: (any RoutingBackend)?

    init(limits: Limits, backend: (any RoutingBackend)? = nil) {
        self.limits = limits
        self.backend = backend
        state = Mutex(State())
    }

    /// Maps `name` for `client`. The shm checks run outside the lock.
    func register(client: ClientKey, peer: PeerCredentials, connectionFD: Int32, name: String,
                  size: UInt64) throws(RequestFailure) -> SharedSegment {
        let handle: UInt64 = try state.withLock { s throws(RequestFailure) in
            try checkLimits(client: client, uid: peer.uid, size: size, in: s)
            // Random (getrandom), never 0, never one in use: a handle names nothing another
            // connection could guess, and a stale one from an earlier run names nothing live.
            var h: UInt64
            repeat { h = UInt64.random(in: 1...UInt64.max) } while s.segments[h] != nil
            return h
        }
        let segment = try SharedSegment(handle: handle, owner: client, name: name, size: size, peer: peer,
                                        maxBytes: limits.maxSegmentBytes, backend: backend)
        try state.withLock { s throws(RequestFailure) in
            do throws(RequestFailure) { try checkLimits(client: client, uid: peer.uid, size: size, in: s) } catch {
                segment.release()
                throw error
            }
            guard s.segments[handle] == nil else {  // two registrations drew one handle (p = 2^-64)
                segment.release()
                throw RequestFailure(.busy, "handle collision; retry")
            }
            s.segments[handle] = segment
            s.byClient[client, default: []].insert(handle)
            s.byUID[peer.uid, default: (0, 0)].count += 1
            s.byUID[peer.uid, default: (0, 0)].bytes += size
            s.connection[client] = (connectionFD, peer.pid)
        }
        return segment
    }

    /// LIMIT when `client` or its uid is at a bound (checked under the lock, twice: before the
    /// segment is opened and again before it is entered).
    private func checkLimits(client: ClientKey, uid: UInt32, size: UInt64, in s: State) throws(RequestFailure) {
        if s.byClient[client, default: []].count >= limits.maxPerClient {
            throw RequestFailure(.limit, "this client already holds \(limits.maxPerClient) registrations (max_registrations)")
        }
        let used = s.byUID[uid, default: (0, 0)]
        if used.count >= limits.maxPerUID {
            throw RequestFailure(.limit, "uid \(uid) already holds \(used.count) registrations over all its connections (max_registrations_per_uid = \(limits.maxPerUID))")
        }
        if used.bytes + size > limits.maxBytesPerUID {
            throw RequestFailure(.limit, "uid \(uid) has \(used.bytes) bytes mapped; \(size) more exceed max_mapped_bytes_per_uid = \(limits.maxBytesPerUID)")
        }
    }

    /// Unregisters `handle`; returns true when a running request defers the release.
    func unregister(client: ClientKey, handle: UInt64) throws(RequestFailure) -> Bool {
        try state.withLock { s throws(RequestFailure) in
            guard let seg = s.segments[handle], seg.owner == client, !seg.releasePending else {
                throw RequestFailure(.unknownHandle, "handle \(handle) is not registered by this client")
            }
            return Self.drop(seg, in: &s)
        }
    }

    /// Takes a reference on `handle` for one request.
    func checkout(client: ClientKey, handle: UInt64) throws(RequestFailure) -> SharedSegment {
        try state.withLock { s throws(RequestFailure) in
            guard let seg = s.segments[handle], seg.owner == client, !seg.releasePending else {
                throw RequestFailure(.unknownHandle, "handle \(handle) is not registered by this client")
            }
            seg.users += 1
            return seg
        }
    }

    /// Whether `segment` is still registered (not unregistered, released with its client, or
    /// dropped after a truncation): a channel living on it stops when it is not.
    func isLive(_ segment: SharedSegment) -> Bool {
        state.withLock { s in !segment.releasePending && s.segments[segment.handle] === segment }
    }

    /// Returns a reference; releases the segment if an unregister waited for it.
    func checkin(_ segment: SharedSegment) {
        state.withLock { s in
            segment.users -= 1
            if segment.users == 0 && segment.releasePending { segment.release() }
        }
    }

    /// Drops a segment whose client truncated it (it can never be used again).
    func drop(handle: UInt64) {
        state.withLock { s in
            if let seg = s.segments[handle] { _ = Self.drop(seg, in: &s) }
        }
    }

    /// Drops every registration of `client` (it disconnected). Returns how many.
    @discardableResult
    func releaseClient(_ client: ClientKey) -> Int {
        state.withLock { s in Self.releaseClient(client, in: &s) }
    }

    /// Drops the registrations of clients whose connection used `fd` (a disconnect event).
    @discardableResult
    func connectionClosed(fd: Int32, transport: ClientKey.Transport) -> Int {
        state.withLock { s in
            let gone = s.connection.filter { $0.value.fd == fd && $0.key.transport == transport }.map(\.key)
            return gone.reduce(0) { $0 + Self.releaseClient($1, in: &s) }
        }
    }

    /// Drops the registrations of clients whose process no longer exists (backstop for a lost
    /// disconnect event). Returns how many registrations were dropped.
    @discardableResult
    func releaseDeadProcesses() -> Int {
        state.withLock { s in
            let gone = s.connection.filter { kill($0.value.pid, 0) != 0 && errno == ESRCH }.map(\.key)
            return gone.reduce(0) { $0 + Self.releaseClient($1, in: &s) }
        }
    }

    /// Releases everything (shutdown; no request runs any more).
    func releaseAll() {
        state.withLock { s in
            for seg in s.segments.values { seg.release() }
            s.segments.removeAll()
            s.byClient.removeAll()
            s.byUID.removeAll()
            s.connection.removeAll()
        }
    }

    /// Live registrations and mapped bytes of one uid, over all its connections.
    func usage(uid: UInt32) -> (count: Int, bytes: UInt64) {
        state.withLock { $0.byUID[uid] ?? (0, 0) }
    }

    struct Snapshot {
        var registrations: Int
        var clients: Int
        var mappedBytes: Int
        var releasedClients: UInt64
    }

    var snapshot: Snapshot {
        state.withLock { s in
            Snapshot(registrations: s.segments.count, clients: s.byClient.count,
                     mappedBytes: s.segments.values.reduce(0) { $0 + $1.size }, releasedClients: s.releasedClients)
        }
    }

    private static func releaseClient(_ client: ClientKey, in s: inout State) -> Int {
        guard let handles = s.byClient[client] else { return 0 }
        for h in handles { if let seg = s.segments[h] { _ = drop(seg, in: &s) } }
        s.connection[client] = nil
        s.releasedClients += 1
        return handles.count
    }

    /// Forgets `seg`; releases it now or when its last user checks in. Returns true if deferred.
    private static func drop(_ seg: SharedSegment, in s: inout State) -> Bool {
        s.segments[seg.handle] = nil
        if var used = s.byUID[seg.uid] {
            used.count -= 1
            used.bytes -= UInt64(seg.size)
            s.byUID[seg.uid] = used.count > 0 ? used : nil
        }
        s.byClient[seg.owner]?.remove(seg.handle)
        if s.byClient[seg.owner]?.isEmpty == true {
            s.byClient[seg.owner] = nil
            s.connection[seg.owner] = nil
        }
        if seg.users > 0 {
            seg.releasePending = true
            return true
        }
        seg.release()
        return false
    }
}

/// What a transport reports about its connections, so that what they held is released.
protocol ConnectionTracking: Sendable {
    /// The connection on `fd` closed; returns how many registrations it held.
    func connectionClosed(fd: Int32, transport: ClientKey.Transport) -> Int
    /// Releases the registrations of client processes that exited; returns how many.
    func releaseDeadProcesses() -> Int
}
