import CMoERouterWire
import CMoERouterdOS
import Glibc
import MoERouting
import Synchronization

/// Who sent a request: the connection (ROUTER routing id on the ipc or tcp socket) and, for ipc
/// peers, the kernel's credentials of the connecting process.
public struct ClientKey: Hashable, Sendable, CustomStringConvertible {
    public let transport: Transport
    public let routingID: [UInt8]
    /// The connection the daemon's ZAP handler numbered when the peer connected (ipc): a peer
    /// cannot choose it, so a new connection that reuses a routing id is a different client and
    /// inherits nothing. 0 for tcp peers (they hold no registrations).
    public let connection: UInt64

    public enum Transport: UInt8, Sendable { case ipc = 0, tcp = 1 }

    public init(transport: Transport, routingID: [UInt8], connection: UInt64 = 0) {
        self.transport = transport
        self.routingID = routingID
        self.connection = connection
    }

    public var description: String {
        "\(transport)/" + routingID.map { String($0, radix: 16) }.joined() + (connection == 0 ? "" : "#\(connection)")
    }
}

/// The peer credentials libzmq reports for an ipc connection (SO_PEERCRED), and the number our
/// ZAP handler gave the connection.
public struct PeerCredentials: Sendable, Equatable {
    public let uid: UInt32
    public let gid: UInt32
    public let pid: Int32
    public let connection: UInt64

    /// Parses "ipc:CONNECTION:UID:GID:PID" (our ZAP user id) or libzmq's Peer-Address
    /// "HOST:UID:GID:PID" (connection 0).
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count >= 3, let pid = Int32(parts[parts.count - 1]),
              let gid = UInt32(parts[parts.count - 2]), let uid = UInt32(parts[parts.count - 3]) else { return nil }
        self.uid = uid
        self.gid = gid
        self.pid = pid
        connection = parts.count == 5 && parts[0] == "ipc" ? UInt64(parts[1]) ?? 0 : 0
    }

    public init(uid: UInt32, gid: UInt32, pid: Int32, connection: UInt64 = 0) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.connection = connection
    }
}

/// A client's POSIX shm object, mapped once. Owns its fd, its mapping, its SIGBUS guard slot and
/// its registration with a device backend (zero copy), and releases all four in `release()`, the
/// one place a mapping ends. Only `SegmentRegistry` creates and frees it.
final class SharedSegment: @unchecked Sendable {
    let handle: UInt64
    let owner: ClientKey
    /// The registering peer's uid (its quota is charged).
    let uid: UInt32
    let name: String
    let size: Int
    let base: UnsafeMutableRawPointer
    let device: UInt64
    let inode: UInt64
    private let fd: Int32
    private let guardSlot: Int32
    /// The backend that registered the mapping for in-place routes (nil: none did).
    private let registeredWith: (any RoutingBackend)?
    /// Requests using the mapping now (registry lock).
    var users = 0
    /// Whether the registration ended (unregistered, released with its client, dropped after a
    /// truncation) and the last user's check-in releases the mapping. Set under the registry's
    /// lock; read without it by a channel, which holds its own segment checked out and uses it
    /// without a checkout while this is false.
    var releasePending: Bool {
        get { pending.load(ordering: .acquiring) }
        set { pending.store(newValue, ordering: .releasing) }
    }
    private let pending = Atomic<Bool>(false)
    private(set) var released = false

    /// Opens, checks and maps `name`. Throws a typed failure naming what was wrong.
    init(handle: UInt64, owner: ClientKey, name: String, size: UInt64, peer: PeerCredentials,
         maxBytes: UInt64, backend: (any RoutingBackend)? = nil) throws(RequestFailure) {
        _ = try Self.portableName(Array(name.utf8))
        guard size > 0 else { throw RequestFailure(.shmSize, "size = 0: a segment must hold at least one byte") }
        guard size <= maxBytes else {
            throw RequestFailure(.tooLarge, "size = \(size) exceeds max_segment_bytes = \(maxBytes)")
        }
        var info = mro_shm_info()
        let rc = mro_shm_open(name, &info)
        guard rc == 0 else {
            throw RequestFailure(.shmOpen, "shm_open(\"\(name)\"): \(String(cString: strerror(rc)))")
        }
        func fail(_ status: WireStatus, _ message: String) -> RequestFailure {
            close(info.fd)
            return RequestFailure(status, message)
        }
        guard info.is_regular != 0 else { throw fail(.shmPermissions, "\(name) is not a regular shm object") }
        guard info.uid == peer.uid else {
            throw fail(.shmOwner, "\(name) is owned by uid \(info.uid), the requesting peer is uid \(peer.uid)")
        }
        guard info.mode & 0o002 == 0 else {
            throw fail(.shmPermissions, "\(name) is world-writable (mode \(String(info.mode, radix: 8)))")
        }
        guard info.size == size else {
            throw fail(.shmSize, "\(name) holds \(info.size) bytes, the request says size = \(size)")
        }
        guard let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, info.fd, 0), p != MAP_FAILED else {
            throw fail(.shmOpen, "mmap(\(name), \(size)): \(String(cString: strerror(errno)))")
        }
        let slot = mro_guard_add(p, Int(size))
        guard slot >= 0 else {
            munmap(p, Int(size))
            throw fail(.limit, "the daemon guards at most \(mro_guard_capacity()) segments")
        }
        self.handle = handle
        self.owner = owner
        self.uid = peer.uid
        self.name = name
        self.size = Int(size)
        self.base = p
        self.device = info.dev
        self.inode = info.ino
        self.fd = info.fd
        self.guardSlot = slot
        // Registered once, here, so that ROUTEs on it copy nothing; a refusal only means they are staged.
        registeredWith = backend.flatMap { $0.hostMemoryMapped(p, bytes: Int(size)) ? $0 : nil }
    }

    /// Whether a device backend registered the mapping (ROUTEs on it run in place).
    var zeroCopy: Bool { registeredWith != nil }

    /// A portable POSIX shm name, taken as bytes: "/" then 1...254 bytes of the portable
    /// filename set (A-Z a-z 0-9 . _ -), not "." or "..". Anything else is refused naming the
    /// first offending byte — never decoded, so no two byte strings can name one object.
    static func portableName(_ bytes: [UInt8]) throws(RequestFailure) -> String {
        func refuse(_ why: String) -> RequestFailure {
            let shown = bytes.prefix(64).map { b in
                (0x20..<0x7F).contains(b) && b != UInt8(ascii: "\\") ? String(UnicodeScalar(b)) : "\\x" + String(b, radix: 16)
            }.joined()
            return RequestFailure(.shmName, "name \"\(shown)\"\(bytes.count > 64 ? "..." : ""): \(why)")
        }
        guard bytes.first == UInt8(ascii: "/") else { throw refuse("must start with \"/\"") }
        guard (2..<Int(MOE_SHM_NAME_BYTES)).contains(bytes.count) else {
            throw refuse("must be \"/\" and 1...\(Int(MOE_SHM_NAME_BYTES) - 2) bytes")
        }
        for (i, b) in bytes.enumerated().dropFirst() where !Self.portable(b) {
            throw refuse("byte 0x\(String(b, radix: 16)) at \(i) is not in the portable filename set (A-Z a-z 0-9 . _ -)")
        }
        guard bytes != Array("/.".utf8), bytes != Array("/..".utf8) else { throw refuse("\".\" and \"..\" name no object") }
        return String(decoding: bytes, as: UTF8.self)  // ASCII: exact
    }

    private static func portable(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"): true
        default: false
        }
    }

    /// Whether an access since registration hit a truncated page (the guard replaced the range).
    /// A segment that faulted is dead for good.
    var faulted: Bool { mro_guard_broken(guardSlot) != 0 }

    /// The object's size now: a client may truncate it at any time, also to a size inside a
    /// mapped page, where no access would fault. lseek(SEEK_END) reads the size alone; fstat
    /// fills a whole stat (owner, times, ...) and cost ~0.7 µs a request on this VM, a quarter of
    /// a 1-token channel route's daemon time. (The descriptor's offset is never used: the
    /// segment is read through its mapping.)
    var currentSize: Int {
        let end = lseek(fd, 0, SEEK_END)
        return end >= 0 ? Int(end) : 0
    }

    /// Unmaps and closes. Idempotent.
    func release() {
        guard !released else { return }
        released = true
        registeredWith?.hostMemoryReleased(base)
        mro_guard_remove(guardSlot)
        munmap(base, size)
        close(fd)
    }

    deinit { release() }
}

