import CMoERouterWire
import CMoERouterdOS
import Glibc

/// Who sent a request: the connection (ROUTER routing id on the ipc or tcp socket) and, for ipc
/// peers, the kernel's credentials of the connecting process.
public struct ClientKey: Hashable, Sendable, CustomStringConvertible {
    public let transport: Transport
    public let routingID: [UInt8]

    public enum Transport: UInt8, Sendable { case ipc = 0, tcp = 1 }

    public var description: String {
        "\(transport)/" + routingID.map { String($0, radix: 16) }.joined()
    }
}

/// The peer credentials libzmq reports for an ipc connection (SO_PEERCRED).
public struct PeerCredentials: Sendable, Equatable {
    public let uid: UInt32
    public let gid: UInt32
    public let pid: Int32

    /// Parses "ipc:UID:GID:PID" (our ZAP user id) or libzmq's Peer-Address "HOST:UID:GID:PID".
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count >= 3, let pid = Int32(parts[parts.count - 1]),
              let gid = UInt32(parts[parts.count - 2]), let uid = UInt32(parts[parts.count - 3]) else { return nil }
        self.uid = uid
        self.gid = gid
        self.pid = pid
    }

    public init(uid: UInt32, gid: UInt32, pid: Int32) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
    }
}

/// A client's POSIX shm object, mapped once. Owns its fd, its mapping and its SIGBUS guard
/// slot, and releases all three in `release()`. Only `SegmentRegistry` creates and frees it.
final class SharedSegment: @unchecked Sendable {
    let handle: UInt64
    let owner: ClientKey
    let name: String
    let size: Int
    let base: UnsafeMutableRawPointer
    let device: UInt64
    let inode: UInt64
    private let fd: Int32
    private let guardSlot: Int32
    /// Requests using the mapping now, and whether an unregister waits for them (registry lock).
    var users = 0
    var releasePending = false
    private(set) var released = false

    /// Opens, checks and maps `name`. Throws a typed failure naming what was wrong.
    init(handle: UInt64, owner: ClientKey, name: String, size: UInt64, peer: PeerCredentials,
         maxBytes: UInt64) throws(RequestFailure) {
        try Self.validate(name: name)
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
        self.name = name
        self.size = Int(size)
        self.base = p
        self.device = info.dev
        self.inode = info.ino
        self.fd = info.fd
        self.guardSlot = slot
    }

    /// A POSIX shm name: "/" then 1...254 bytes, none of them "/" or NUL.
    static func validate(name: String) throws(RequestFailure) {
        let bytes = Array(name.utf8)
        guard bytes.count >= 2, bytes.count < Int(MOE_SHM_NAME_BYTES), bytes[0] == UInt8(ascii: "/"),
              !bytes.dropFirst().contains(UInt8(ascii: "/")), name != "/.", name != "/.." else {
            throw RequestFailure(.shmName, "name \"\(name)\" is not \"/\" followed by 1...254 bytes without \"/\"")
        }
    }

    /// Whether an access since registration hit a truncated page (the guard replaced the range).
    /// A segment that faulted is dead for good.
    var faulted: Bool { mro_guard_broken(guardSlot) != 0 }

    /// Unmaps and closes. Idempotent.
    func release() {
        guard !released else { return }
        released = true
        mro_guard_remove(guardSlot)
        munmap(base, size)
        close(fd)
    }

    deinit { release() }
}

